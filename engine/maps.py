"""The anomaly maps of a test set: every image through a method's pipeline (images → maps
and scores), with its ground truth, in arrays allocated once (`collect_maps`); under torchrun
each process computes its share and rank 0 gathers them (`test_set_maps`).

The split: each process takes a contiguous run of the batches one process would form
(`share`), so every image goes through the model in the same batch, bit for bit; rank 0
gathers them in order, in messages of `GATHER_IMAGES` images per process (masks as packed
bits), which bounds its extra memory for large test sets (Real-IAD) to a few hundred MB.
Every process makes the same random draws as a single-process evaluation (one pipeline
construction and one DataLoader iterator per class), so the CPU generators of all ranks
stay in step.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine import distributed

GATHER_IMAGES = 64  # images per process and message: 8 processes × 64 × 256² ≈ 140 MB


@dataclass
class EvalMaps:
    """Everything the metrics of N test images are computed from."""
    maps: np.ndarray  # N x H x W float32, blurred anomaly maps
    masks: np.ndarray  # N x H x W bool, ground truth
    scores: np.ndarray  # N float32, image anomaly scores
    labels: np.ndarray  # N bool, image is anomalous
    paths: list[str]  # N image paths


def _empty(n: int, height: int, width: int) -> EvalMaps:
    return EvalMaps(np.empty((n, height, width), np.float32), np.empty((n, height, width), bool),
                    np.empty(n, np.float32), np.empty(n, bool), [""] * n)


def collect_maps(pipeline: nn.Module, dataloader: DataLoader, device: torch.device | str,
                 resize_mask: int | tuple[int, int] | None = None, gt_threshold: float = 0.0,
                 allow_empty: bool = False) -> EvalMaps:
    """Runs `pipeline` (images `B×3×H×W` → maps `B×1×R×R`, scores `B`) over a test set of
    `(img, gt, label, img_path)` batches and keeps the maps, binary masks, image scores,
    labels and paths.

    The masks: nearest resize to `resize_mask`, then `gt > gt_threshold` (0, the reference's
    `gt.bool()`; 0.5 is the common practice), anomalous where any channel of gt is. Leaves
    the pipeline (and its model) in eval mode, as the reference does. A loader without
    batches is an error, or with `allow_empty` (a process's empty share of a split
    evaluation) gives 0 images, after the same random draws.
    """
    pipeline.eval().to(device)
    n_total = len(dataloader.dataset)
    out: EvalMaps | None = None
    seen = 0
    with torch.no_grad():
        for img, gt, label, img_path in dataloader:
            anomaly_map, score = pipeline(img.to(device))  # B, 1, H, W and B
            if resize_mask is not None:
                gt = F.interpolate(gt, size=resize_mask, mode="nearest")
            mask = (gt > gt_threshold).any(dim=1)  # B, H, W
            if out is None:  # sizes are known from the first batch
                out = _empty(n_total, *anomaly_map.shape[-2:])
            batch = slice(seen, seen + img.shape[0])
            out.maps[batch] = anomaly_map[:, 0].cpu().numpy()
            out.masks[batch] = mask.cpu().numpy()
            out.scores[batch] = score.cpu().numpy()
            out.labels[batch] = label.flatten().cpu().numpy() != 0
            out.paths[batch] = list(img_path)
            seen += img.shape[0]
    if out is None:
        if not allow_empty:
            raise ValueError("the dataloader yielded no batch")
        return _empty(0, 0, 0)
    # a sampler may visit fewer items than the dataset holds: keep what was seen
    return EvalMaps(out.maps[:seen], out.masks[:seen], out.scores[:seen], out.labels[:seen],
                    out.paths[:seen])


def share(n: int, rank: int, processes: int, batch_size: int) -> range:
    """Rank `rank`'s test-set indices: whole batches of `batch_size` as one process forms
    them (`n` images in order, the last batch partial), the batches dealt out contiguously,
    their numbers differing by at most one (the first ranks take the extra ones); in rank
    order, the shares are `range(n)`. A model's output for an image can change in the last
    bit with the batch it is computed in: the same batches give the same maps."""
    base, extra = divmod(math.ceil(n / batch_size), processes)
    first = rank * base + min(rank, extra)
    last = first + base + (rank < extra)
    return range(min(n, first * batch_size), min(n, last * batch_size))


def test_set_maps(make_pipeline: Callable[[], nn.Module], test_set: Dataset, batch_size: int,
                  num_workers: int, device: torch.device, resize_mask: int | None,
                  gt_threshold: float) -> EvalMaps | None:
    """The maps, masks and scores of the whole `test_set` on rank 0 (None on the other
    ranks), through a pipeline built now by `make_pipeline` (its construction may draw
    random numbers: it comes where the reference's evaluation builds its blur); one
    process: `collect_maps` over a fresh DataLoader, the reference's procedure."""
    processes, rank = distributed.world_size(), distributed.rank()
    part = (test_set if processes == 1 else
            Subset(test_set, share(len(test_set), rank, processes, batch_size)))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    mine = collect_maps(make_pipeline(), loader, device, resize_mask, gt_threshold,
                        allow_empty=processes > 1)
    if processes == 1:
        return mine
    return gather_maps(mine, len(test_set), batch_size)


def _piece(maps: EvalMaps, part: slice) -> tuple:
    """Images `part` of `maps`, for one message (masks packed 8 to a byte)."""
    masks = maps.masks[part]
    return (maps.maps[part], np.packbits(masks, axis=-1), masks.shape[-1],
            maps.scores[part], maps.labels[part], maps.paths[part])


def gather_maps(mine: EvalMaps, n: int, batch_size: int) -> EvalMaps | None:
    """Every rank's `mine` (its `share` of n images), in rank order, on rank 0 (None on the
    others). Collective: every rank calls it."""
    processes, rank = distributed.world_size(), distributed.rank()
    shares = [share(n, r, processes, batch_size) for r in range(processes)]
    rounds = math.ceil(max(len(s) for s in shares) / GATHER_IMAGES)
    out: EvalMaps | None = None
    for i in range(rounds):
        part = slice(i * GATHER_IMAGES, (i + 1) * GATHER_IMAGES)
        received: list | None = [None] * processes if rank == 0 else None
        dist.gather_object(_piece(mine, part), received, dst=0)
        if rank > 0:
            continue
        if out is None:  # sizes from rank 0's first piece (its share holds the first batch)
            out = _empty(n, *received[0][0].shape[-2:])
        for r, (maps, packed, width, scores, labels, paths) in enumerate(received):
            first = shares[r].start + i * GATHER_IMAGES
            where = slice(first, first + len(scores))
            out.maps[where] = maps
            out.masks[where] = np.unpackbits(packed, axis=-1, count=width).astype(bool)
            out.scores[where] = scores
            out.labels[where] = labels
            out.paths[where] = paths
    return out
