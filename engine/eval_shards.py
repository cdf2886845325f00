"""The evaluation split over the processes of a torchrun run, so that N GPUs do not wait
for one: each process computes the anomaly maps of its share of a class's test set
(`share`: a contiguous run of the batches one process would form, so every image goes
through the model in the same batch, bit for bit), rank 0 gathers them in order and
computes the metrics from exactly the arrays one process would have (`class_maps`).

Every process makes the same random draws as a single-process evaluation (one DataLoader
iterator and one Gaussian-blur Conv2d per class, see `evaluation.collect_maps`), so the
CPU generators of all ranks stay in step. The maps travel in messages of `GATHER_IMAGES`
images per process (masks as packed bits), which bounds rank 0's extra memory for large
test sets (Real-IAD) to a few hundred MB.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine import distributed, evaluation
from engine.config import Config
from engine.evaluation import EvalMaps

GATHER_IMAGES = 64  # images per process and message: 8 processes × 64 × 256² ≈ 140 MB


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


def class_maps(model: nn.Module, test_set: Dataset, cfg: Config,
               device: torch.device) -> EvalMaps | None:
    """The maps, masks and scores of the whole `test_set` on rank 0 (None on the other
    ranks); one process: `evaluation.collect_maps` over a fresh DataLoader, the reference's
    procedure."""
    processes, rank = distributed.world_size(), distributed.rank()
    part = (test_set if processes == 1 else
            Subset(test_set, share(len(test_set), rank, processes, cfg.batch_size)))
    loader = DataLoader(part, batch_size=cfg.batch_size, shuffle=False,
                        num_workers=cfg.num_workers)
    mine = evaluation.collect_maps(model, loader, device, max_ratio=cfg.max_ratio,
                                   resize_mask=cfg.eval_resolution,
                                   gt_threshold=cfg.gt_threshold, allow_empty=processes > 1)
    if processes == 1:
        return mine
    return gather_maps(mine, len(test_set), cfg.batch_size)


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
            height, width = received[0][0].shape[-2:]
            out = EvalMaps(np.empty((n, height, width), np.float32),
                           np.empty((n, height, width), bool), np.empty(n, np.float32),
                           np.empty(n, bool), [""] * n)
        for r, (maps, packed, width, scores, labels, paths) in enumerate(received):
            first = shares[r].start + i * GATHER_IMAGES
            where = slice(first, first + len(scores))
            out.maps[where] = maps
            out.masks[where] = np.unpackbits(packed, axis=-1, count=width).astype(bool)
            out.scores[where] = scores
            out.labels[where] = labels
            out.paths[where] = paths
    return out
