"""The run's data: the training set and the test sets of some classes of a registered
dataset (`dataset.dataset_spec`: its layout builds them), and the shuffled training loader."""
from __future__ import annotations

import uuid
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

import dataset
from engine import distributed
from engine.config import RunConfig
from recipes import recipe_of


def build_datasets(cfg: RunConfig, classes: Sequence[str], cache_images: bool = False
                   ) -> tuple[Dataset, dict[str, Dataset]]:
    """The training set of `cfg.dataset` at `cfg.data_path` as the method builds it (the
    union of `classes`, in order, one part per class; `cache_images`: its images decoded and
    resized now, kept in RAM, one copy per machine under torchrun) and one test set per
    class, through the dataset's layout. Under torchrun
    with `cache_images`, every rank must call it (collective)."""
    cache: bool | dataset.SharedCache = cache_images
    if cache_images and distributed.world_size() > 1:
        cache = shared_image_cache()
    layout = dataset.dataset_spec(cfg.dataset).layout
    data_transform, gt_transform = dataset.get_data_transforms(cfg.image_size, cfg.crop_size)
    train_set = recipe_of(cfg).train_set(cfg, classes, cache)  # the method's (its augmentations)
    test_sets = {c: layout.test_set(cfg.data_path, c, data_transform, gt_transform)
                 for c in classes}
    return train_set, test_sets


def shared_image_cache() -> dataset.SharedCache:
    """--cache_images under torchrun: the images decoded once per machine, by its local rank
    0, into memory the other ranks map (`dataset.SharedCache`). Collective."""
    tag = distributed.main_rank_first(lambda: uuid.uuid4().hex[:12])  # rank 0's, everywhere
    return dataset.SharedCache(tag, fills=distributed.local_rank() == 0,
                               agree=distributed.all_ok)


def make_train_loader(cfg: RunConfig, train_set: Dataset) -> DataLoader:
    """Shuffled global batches of `cfg.batch_size`, last partial batch dropped, of which this
    process loads its share. One process: the batches and random draws of the reference's
    `DataLoader(shuffle=True, drop_last=True)`. Loader processes live across epochs (no
    restart of `num_workers` processes at each epoch; the sampler replays the random draw a
    fresh iterator would make, so the batches and generators are the same) and batches are
    pinned for CUDA (asynchronous copies to the GPU). A training set with `tagged_samples`
    gets `(index, worker seed, batch, place)` items (`dataset.WorkerStreams`)."""
    persistent = cfg.num_workers > 0
    # a training set whose augmentation replays the reference loader's workers
    # (dataset.WorkerStreams) gets its samples tagged: the sampler draws the worker seeds
    tagged = bool(getattr(train_set, "tagged_samples", False))
    sampler = distributed.GlobalBatchSampler(len(train_set), cfg.batch_size, distributed.rank(),
                                             distributed.world_size(), persistent_loader=persistent,
                                             tag=tagged)
    return DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers,
                      persistent_workers=persistent,
                      pin_memory=torch.device(cfg.device).type == "cuda",
                      generator=torch.Generator() if tagged else None)
