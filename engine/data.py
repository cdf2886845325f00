"""The run's data: training set and test sets of a `Config`, the shuffled training loader,
and the classes found under a dataset root (`--classes auto`)."""
from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

import dataset
from engine import distributed
from engine.config import Config


def discover_classes(kind: str, root: str) -> list[str]:
    """Class folders of a dataset root: MVTec layout via `dataset.discover_classes`;
    Real-IAD: one class per split file in `realiad_jsons/realiad_jsons/`."""
    if kind != "realiad":
        return dataset.discover_classes(root)
    json_dir = Path(root) / "realiad_jsons" / "realiad_jsons"
    if not json_dir.is_dir():
        raise dataset.DatasetError(f"no Real-IAD split folder {json_dir}")
    return sorted(p.stem for p in json_dir.glob("*.json"))


def build_datasets(cfg: Config, classes: Sequence[str], cache_images: bool = False
                   ) -> tuple[Dataset, dict[str, Dataset]]:
    """The training set (union of `classes`, in order; `cache_images`: its images decoded
    and resized now, kept in RAM, one copy per machine under torchrun) and one test set per
    class. Under torchrun with `cache_images`, every rank must call it (collective)."""
    cache: bool | dataset.SharedCache = cache_images
    if cache_images and distributed.world_size() > 1:
        cache = shared_image_cache()
    data_transform, gt_transform = dataset.get_data_transforms(cfg.image_size, cfg.crop_size)
    if cfg.dataset == "realiad":
        train_set = ConcatDataset([
            dataset.RealIADDataset(cfg.data_path, c, data_transform, gt_transform, phase="train",
                                   cache_images=cache)
            for c in classes])
        test_sets = {c: dataset.RealIADDataset(cfg.data_path, c, data_transform, gt_transform,
                                               phase="test") for c in classes}
    else:  # MVTec AD and prepared VisA share the layout
        train_set = dataset.mvtec_train_set(cfg.data_path, list(classes), data_transform,
                                            cache_images=cache)
        test_sets = {c: dataset.MVTecDataset(os.path.join(cfg.data_path, c), data_transform,
                                             gt_transform, phase="test") for c in classes}
    return train_set, test_sets


def shared_image_cache() -> dataset.SharedCache:
    """--cache_images under torchrun: the images decoded once per machine, by its local rank
    0, into memory the other ranks map (`dataset.SharedCache`). Collective."""
    tag = distributed.main_rank_first(lambda: uuid.uuid4().hex[:12])  # rank 0's, everywhere
    return dataset.SharedCache(tag, fills=distributed.local_rank() == 0,
                               agree=distributed.all_ok)


def make_train_loader(cfg: Config, train_set: Dataset) -> DataLoader:
    """Shuffled global batches of `cfg.batch_size`, last partial batch dropped (spec §4), of
    which this process loads its share. One process: the batches and random draws of the
    reference's `DataLoader(shuffle=True, drop_last=True)`. Loader processes live across
    epochs (no restart of `num_workers` processes at each epoch; the sampler replays the
    random draw a fresh iterator would make, so the batches and generators are the same) and
    batches are pinned for CUDA (asynchronous copies to the GPU)."""
    persistent = cfg.num_workers > 0
    sampler = distributed.GlobalBatchSampler(len(train_set), cfg.batch_size, distributed.rank(),
                                             distributed.world_size(), persistent_loader=persistent)
    return DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers,
                      persistent_workers=persistent,
                      pin_memory=torch.device(cfg.device).type == "cuda")
