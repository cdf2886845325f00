"""The anomaly maps of a test set: every image through a method's pipeline (images → maps
and scores), with its ground truth, in arrays allocated once (`collect_maps`); under torchrun
each process computes its share and rank 0 gathers them (`test_set_maps`).

A test set of objects made of several images (`engine.objects`: multi-view objects, several
modalities) is kept image by image, object after object, with each image's object and place
in it, and every object's score and label: the views of an object are always in one batch,
so the split keeps them together.

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
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine import distributed
from engine.objects import ObjectSpec, run_views

GATHER_IMAGES = 64  # images per process and message: 8 processes × 64 × 256² ≈ 140 MB


@dataclass
class EvalMaps:
    """Everything the metrics of N test images are computed from (and, for a test set of M
    objects, which image belongs to which object, and the objects' scores and labels)."""
    maps: np.ndarray  # N x H x W float32, blurred anomaly maps
    masks: np.ndarray  # N x H x W bool, ground truth
    scores: np.ndarray  # N float32, image anomaly scores
    labels: np.ndarray  # N bool, image is anomalous
    paths: list[str]  # N image paths
    objects: np.ndarray | None = None  # N int64: the object of each image, 0..M-1 in order
    views: np.ndarray | None = None  # N int64: the image's place in its object
    object_scores: np.ndarray | None = None  # M float32
    object_labels: np.ndarray | None = None  # M bool


def _empty(n: int, height: int, width: int, n_objects: int | None = None) -> EvalMaps:
    out = EvalMaps(np.empty((n, height, width), np.float32), np.empty((n, height, width), bool),
                   np.empty(n, np.float32), np.empty(n, bool), [""] * n)
    if n_objects is not None:
        out.objects, out.views = np.empty(n, np.int64), np.empty(n, np.int64)
        out.object_scores, out.object_labels = np.empty(n_objects, np.float32), np.empty(n_objects, bool)
    return out


class _Batch(NamedTuple):
    """One batch through the pipeline: every image's map, score, ground truth, label, path
    (and the objects' scores and labels for a test set of objects)."""
    maps: torch.Tensor  # N×1×R×R
    scores: torch.Tensor  # N
    gt: torch.Tensor  # N×C×H×W
    labels: torch.Tensor  # N
    paths: list[str]
    object_scores: torch.Tensor | None = None  # B
    object_labels: torch.Tensor | None = None  # B


def _run_batch(pipeline: nn.Module, batch, device: torch.device | str,
               objects: ObjectSpec | None) -> _Batch:
    if objects is None:
        img, gt, label, img_path = batch
        anomaly_map, score = pipeline(img.to(device))  # B, 1, H, W and B
        return _Batch(anomaly_map, score, gt, label.flatten(), list(img_path))
    obj = objects.unpack(batch)
    B, V = obj.labels.shape
    anomaly_map, score = run_views(pipeline, obj.images.to(device), objects.forward)  # B·V, …
    object_scores = objects.score(anomaly_map.reshape(B, V, *anomaly_map.shape[1:]), score.reshape(B, V))
    object_labels = obj.labels.ne(0).any(dim=1) if obj.object_labels is None else obj.object_labels.ne(0)
    return _Batch(anomaly_map, score, obj.masks.flatten(0, 1), obj.labels.reshape(-1),
                  [p for views in obj.paths for p in views], object_scores, object_labels)


def collect_maps(pipeline: nn.Module, dataloader: DataLoader, device: torch.device | str,
                 resize_mask: int | tuple[int, int] | None = None, gt_threshold: float = 0.0,
                 allow_empty: bool = False, objects: ObjectSpec | None = None) -> EvalMaps:
    """Runs `pipeline` (images `B×3×H×W` → maps `B×1×R×R`, scores `B`) over a test set of
    `(img, gt, label, img_path)` batches and keeps the maps, binary masks, image scores,
    labels and paths.

    The masks: nearest resize to `resize_mask`, then `gt > gt_threshold` (0, the reference's
    `gt.bool()`; 0.5 is the common practice), anomalous where any channel of gt is. Leaves
    the pipeline (and its model) in eval mode, as the reference does. A loader without
    batches is an error, or with `allow_empty` (a process's empty share of a split
    evaluation) gives 0 images, after the same random draws.

    `objects`: the items are objects of V images each (`engine.objects`; every object of the
    test set has the same V): their images are kept object after object, with the objects'
    scores (`objects.score`, on `device`) and labels.
    """
    pipeline.eval().to(device)
    n_total = len(dataloader.dataset)
    out: EvalMaps | None = None
    seen = seen_objects = 0
    with torch.no_grad():
        for batch in dataloader:
            b = _run_batch(pipeline, batch, device, objects)
            gt = b.gt if resize_mask is None else F.interpolate(b.gt, size=resize_mask, mode="nearest")
            mask = (gt > gt_threshold).any(dim=1)  # N, H, W
            n = len(b.paths)
            if out is None:  # sizes are known from the first batch
                per_object = 1 if objects is None else n // len(b.object_scores)
                out = _empty(n_total * per_object, *b.maps.shape[-2:],
                             None if objects is None else n_total)
            if seen + n > len(out.scores):
                raise ValueError("the objects of a test set must all have the same number of images")
            part = slice(seen, seen + n)
            out.maps[part] = b.maps[:, 0].cpu().numpy()
            out.masks[part] = mask.cpu().numpy()
            out.scores[part] = b.scores.cpu().numpy()
            out.labels[part] = b.labels.cpu().numpy() != 0
            out.paths[part] = b.paths
            seen += n
            if objects is not None:
                seen_objects = _add_objects(out, b, part, seen_objects)
    if out is None:
        if not allow_empty:
            raise ValueError("the dataloader yielded no batch")
        return _empty(0, 0, 0, None if objects is None else 0)
    # a sampler may visit fewer items than the dataset holds: keep what was seen
    return _first(out, seen, seen_objects)


def _add_objects(out: EvalMaps, b: _Batch, part: slice, first: int) -> int:
    """The batch's objects into `out` (images `part`); returns the objects seen after it."""
    B = len(b.object_scores)
    V = len(b.paths) // B
    out.objects[part] = np.repeat(np.arange(first, first + B), V)
    out.views[part] = np.tile(np.arange(V), B)
    out.object_scores[first:first + B] = b.object_scores.cpu().numpy()
    out.object_labels[first:first + B] = b.object_labels.cpu().numpy()
    return first + B


def _first(out: EvalMaps, n: int, n_objects: int) -> EvalMaps:
    """The first `n` images (and `n_objects` objects) of `out`."""
    if out.objects is None:
        return EvalMaps(out.maps[:n], out.masks[:n], out.scores[:n], out.labels[:n], out.paths[:n])
    return EvalMaps(out.maps[:n], out.masks[:n], out.scores[:n], out.labels[:n], out.paths[:n],
                    out.objects[:n], out.views[:n], out.object_scores[:n_objects],
                    out.object_labels[:n_objects])


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
                  gt_threshold: float, objects: ObjectSpec | None = None) -> EvalMaps | None:
    """The maps, masks and scores of the whole `test_set` on rank 0 (None on the other
    ranks), through a pipeline built now by `make_pipeline` (its construction may draw
    random numbers: it comes where the reference's evaluation builds its blur); one
    process: `collect_maps` over a fresh DataLoader, the reference's procedure.
    `objects`: a test set of objects (`collect_maps`), `batch_size` of them per batch."""
    processes, rank = distributed.world_size(), distributed.rank()
    part = (test_set if processes == 1 else
            Subset(test_set, share(len(test_set), rank, processes, batch_size)))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    mine = collect_maps(make_pipeline(), loader, device, resize_mask, gt_threshold,
                        allow_empty=processes > 1, objects=objects)
    if processes == 1:
        return mine
    return gather_maps(mine, len(test_set), batch_size)


def _piece(maps: EvalMaps, part: slice, first_round: bool) -> dict[str, object]:
    """Images `part` of `maps`, for one message (masks packed 8 to a byte); the objects'
    scores and labels travel in the first round."""
    masks = maps.masks[part]
    piece = {"maps": maps.maps[part], "packed": np.packbits(masks, axis=-1), "width": masks.shape[-1],
             "scores": maps.scores[part], "labels": maps.labels[part], "paths": maps.paths[part]}
    if maps.objects is not None:
        piece.update(objects=maps.objects[part], views=maps.views[part])
        if first_round:
            piece.update(object_scores=maps.object_scores, object_labels=maps.object_labels)
    return piece


def _sizes(mine: EvalMaps, shares: list[range]) -> list[tuple[int, int]]:
    """(images, objects) of every rank: its share's length; for objects, as each rank
    counted them (collective)."""
    if mine.objects is None:
        return [(len(s), 0) for s in shares]
    sizes: list = [None] * distributed.world_size()
    dist.all_gather_object(sizes, (len(mine.scores), len(mine.object_scores)))
    return sizes


def gather_maps(mine: EvalMaps, n: int, batch_size: int) -> EvalMaps | None:
    """Every rank's `mine` (its `share` of the n items), in rank order, on rank 0 (None on
    the others); a test set of objects with its objects renumbered in that order.
    Collective: every rank calls it."""
    processes, rank = distributed.world_size(), distributed.rank()
    sizes = _sizes(mine, [share(n, r, processes, batch_size) for r in range(processes)])
    starts = np.cumsum([0] + [v for v, _ in sizes])
    object_starts = np.cumsum([0] + [o for _, o in sizes])
    rounds = math.ceil(max(v for v, _ in sizes) / GATHER_IMAGES)
    out: EvalMaps | None = None
    for i in range(rounds):
        part = slice(i * GATHER_IMAGES, (i + 1) * GATHER_IMAGES)
        received: list | None = [None] * processes if rank == 0 else None
        dist.gather_object(_piece(mine, part, i == 0), received, dst=0)
        if rank > 0:
            continue
        for r, piece in enumerate(received):
            if not len(piece["scores"]):  # an empty share, or one that ended earlier
                continue
            if out is None:  # sizes from the first piece of images
                out = _empty(int(starts[-1]), *piece["maps"].shape[-2:],
                             None if mine.objects is None else int(object_starts[-1]))
            _place(out, piece, int(starts[r]) + i * GATHER_IMAGES, int(object_starts[r]))
    return out


def _place(out: EvalMaps, piece: dict[str, object], first: int, first_object: int) -> None:
    """One piece into `out` at image `first` (its objects numbered from `first_object`)."""
    where = slice(first, first + len(piece["scores"]))
    out.maps[where] = piece["maps"]
    out.masks[where] = np.unpackbits(piece["packed"], axis=-1, count=piece["width"]).astype(bool)
    out.scores[where] = piece["scores"]
    out.labels[where] = piece["labels"]
    out.paths[where] = piece["paths"]
    if out.objects is None:
        return
    out.objects[where] = piece["objects"] + first_object
    out.views[where] = piece["views"]
    if "object_scores" in piece:
        objects = slice(first_object, first_object + len(piece["object_scores"]))
        out.object_scores[objects] = piece["object_scores"]
        out.object_labels[objects] = piece["object_labels"]
