"""Test items that are objects made of several images: the views of a multi-view object, or
the images of one sample in several modalities (RGB + infrared). What the evaluation needs
to know about them, whatever the method:

- how a batch of objects reads (`unpack`: `unpack_views` for `(img B×V×C×H×W, gt B×V×1×H×W,
  label B×V, paths)` batches, `unpack_modalities` for `((img_1, …, img_K), (label_1, …),
  (mask_1, …, mask_K), (path_1, …, path_K))` ones) -> an `ObjectBatch`;
- how its images go through the method's pipeline (`forward`: all `B·V` images in one pass,
  one pass per view index, or the `B×V×C×H×W` batch itself for a model that sees the whole
  object) -> maps and scores of every image, object by object (`run_views`);
- how an object's score comes from its images (`ObjectScore`: the mean of the top share of
  all its maps' pixels, the highest image score, or the sum of the image scores).

An object's label is given by the items (`ObjectBatch.object_labels`) or, by default, is
anomalous when any of its images is.

    spec = ObjectSpec(ObjectScore("top_ratio", 0.01))
    batch = spec.unpack(loader_batch)
    maps, scores = run_views(pipeline, batch.images, spec.forward)     # B·V×1×R×R, B·V
    object_scores = spec.score(maps.view(B, V, 1, R, R), scores.view(B, V))   # B
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import NamedTuple

import torch
from torch import nn

OBJECT_RULES = {
    "top_ratio": "mean of the top {percent} % of all its images' map pixels together",
    "max_view": "the highest score of its images",
    "sum": "the sum of its images' scores",
}
FORWARDS = ("views", "per_view", "objects")


@dataclass(frozen=True)
class ObjectScore:
    """An object's score from its images' maps `B×V×1×h×w` and scores `B×V` -> `B`:
    `top_ratio`: the mean of the `int(V·h·w·ratio)` largest pixels of all its maps (the
    maximum for ratio 0); `max_view`: the maximum image score; `sum`: the sum of the image
    scores. Computed where the maps are (the evaluation's device), in their dtype."""
    rule: str = "top_ratio"
    ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in OBJECT_RULES:
            raise ValueError(f"object score rule {self.rule!r}: one of {', '.join(OBJECT_RULES)}")
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"object score ratio {self.ratio}: must be in [0, 1]")

    def __call__(self, maps: torch.Tensor, view_scores: torch.Tensor) -> torch.Tensor:
        if self.rule == "max_view":
            return view_scores.max(dim=1).values
        if self.rule == "sum":
            return view_scores.sum(dim=1)
        flat = maps.reshape(maps.shape[0], -1)
        if self.ratio == 0:
            return flat.max(dim=1).values
        return torch.topk(flat, int(flat.shape[1] * self.ratio), dim=1).values.mean(dim=1)

    def note(self) -> str:
        return "Object score: " + OBJECT_RULES[self.rule].format(percent=f"{100 * self.ratio:g}")

    def as_json(self) -> dict[str, object]:
        return {"rule": self.rule, "ratio": self.ratio}

    @classmethod
    def from_json(cls, data: object) -> ObjectScore:
        """ValueError when `data` is not what `as_json` writes."""
        if not isinstance(data, dict) or not isinstance(data.get("rule"), str):
            raise ValueError(f"not an object score: {data!r}")
        return cls(data["rule"], float(data.get("ratio", 0.0)))


class ObjectBatch(NamedTuple):
    """B objects of V images each."""
    images: torch.Tensor  # B×V×C×H×W
    masks: torch.Tensor  # B×V×C'×H×W ground truth
    labels: torch.Tensor  # B×V, each image's label
    paths: list[list[str]]  # B lists of V files (the same file for views stored side by side)
    object_labels: torch.Tensor | None = None  # B; None: anomalous where any image is


def _per_object(paths: Sequence, n_objects: int, n_views: int) -> list[list[str]]:
    """Collated paths as B lists of V: from V sequences of B (one file per image), or B
    strings (one file holding all the object's views)."""
    if len(paths) == n_objects and all(isinstance(p, str) for p in paths):
        return [[p] * n_views for p in paths]
    if len(paths) != n_views:
        raise ValueError(f"{len(paths)} path lists for objects of {n_views} images")
    return [[str(paths[v][b]) for v in range(n_views)] for b in range(n_objects)]


def unpack_views(batch: Sequence) -> ObjectBatch:
    """`(img B×V×C×H×W, gt B×V×C'×H×W, label B×V, paths)` (`dataset.RealIADDatasetv2`,
    `dataset.MANTATinyDataset` test items, collated)."""
    img, gt, label, paths = batch
    if img.dim() != 5:
        raise ValueError(f"a batch of objects is B × V × C × H × W, got {tuple(img.shape)}")
    B, V = img.shape[:2]
    return ObjectBatch(img, gt, label.reshape(B, V), _per_object(paths, B, V))


def unpack_modalities(batch: Sequence) -> ObjectBatch:
    """`((img_1, …, img_K), (label_1, …, label_L), (mask_1, …, mask_K), (path_1, …, path_K))`,
    K modalities of B samples each (`dataset.MulSenTestDataset`): image k is modality k,
    labelled `label_k`; the object is anomalous where any of the L ≥ K labels is (the point
    cloud's label counts without an image)."""
    images, labels, masks, paths = batch
    K = len(images)
    labels = torch.stack([torch.as_tensor(lab).reshape(-1) for lab in labels], dim=1)  # B×L
    B = labels.shape[0]
    return ObjectBatch(torch.stack(list(images), dim=1), torch.stack(list(masks[:K]), dim=1),
                       labels[:, :K], _per_object(list(paths[:K]), B, K), labels.amax(dim=1))


@dataclass(frozen=True)
class ObjectSpec:
    """How a test set's objects are read, run and scored (module docstring)."""
    score: ObjectScore
    unpack: Callable[[Sequence], ObjectBatch] = unpack_views
    forward: str = "views"

    def __post_init__(self) -> None:
        if self.forward not in FORWARDS:
            raise ValueError(f"forward {self.forward!r}: one of {', '.join(FORWARDS)}")


def run_views(pipeline: nn.Module, images: torch.Tensor, forward: str = "views"
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps `B·V×1×R×R` and scores `B·V` of objects `images` `B×V×C×H×W`, object by
    object: `views` runs the `B·V` images in one pass; `per_view` one pass of B images per
    view index; `objects` passes the 5-D batch (the pipeline returns `B·V` maps and scores)."""
    B, V = images.shape[:2]
    if forward == "views":
        return pipeline(images.flatten(0, 1))
    if forward == "objects":
        return pipeline(images)
    outs = [pipeline(images[:, v].contiguous()) for v in range(V)]  # as one modality's batch
    maps = torch.stack([m for m, _ in outs], dim=1)  # B, V, 1, R, R
    scores = torch.stack([s for _, s in outs], dim=1)  # B, V
    return maps.flatten(0, 1), scores.flatten(0, 1)


def object_name(paths: Sequence[str]) -> str:
    """An object's name in reports and predictions: its first image's file."""
    return str(paths[0])


def shared_file_views(paths: Sequence[str], views: Sequence[int] | None) -> list[int | None]:
    """Per image, its view index where its file also holds other images of the set (an
    object's views side by side in one file: each is shown by its part), else None."""
    if views is None:
        return [None] * len(paths)
    counts = Counter(paths)
    return [int(v) if counts[p] > 1 else None for p, v in zip(paths, views)]


def shared_name_views(paths: Sequence[str], views: Sequence[int] | None) -> list[int | None]:
    """Per image, its view index where another image of the set has the same folder name and
    stem (views of one file; modalities in parallel trees, `RGB/test/crack/2.png` and
    `Infrared/test/crack/2.png`): its heatmap is named with the view, else None."""
    if views is None:
        return [None] * len(paths)
    keys = [(PurePath(p).parent.name, PurePath(p).stem) for p in paths]
    counts = Counter(keys)
    return [int(v) if counts[k] > 1 else None for k, v in zip(keys, views)]
