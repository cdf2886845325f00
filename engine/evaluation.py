"""A run's evaluation, one path: every class's test set through the method's pipeline
(`maps.test_set_maps`: one process, or split over torchrun), then, from those maps, the
class's metrics and OK/NG thresholds (`class_metrics`, the one place they are computed),
its worst mistakes for the report and, with heatmaps, every image's picture.

    evaluation = evaluate(make_pipeline, test_sets, settings, device, maps_dir)
    evaluation.metrics()       # {class: [I-AUROC, I-AP, I-F1, P-AUROC, P-AP, P-F1, P-AUPRO]}

The metrics are the reference's: image-level over the class's images, pixel-level over all
its pixels, AUPRO over its maps (`engine.metrics`: exact, fast); a metric that is not
defined for the test set is nan where the reference fails (the image metrics without a
normal or without an anomalous image, the pixel metrics without an anomalous or without a
normal mask pixel).

A method whose test items are objects of several images, or whose pixel metrics are
another kind, says so in its `EvalSpec` (`engine.eval_spec`, from `Recipe.eval_spec`): the
maps are then collected object by object and the class's values come from
`object_metrics.spec_class_metrics`; the objects' scores, threshold and worst objects join
the class's result.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from engine import heatmaps
from engine.eval_spec import (IMAGE_AND_PIXEL_METRICS, MULTIVIEW_METRICS, OBJECT_METRICS,  # noqa: F401
                              EvalSpec, modality_metric_names)
from engine.maps import EvalMaps, test_set_maps
from engine.object_metrics import spec_class_metrics
from engine.objects import object_name, shared_file_views, shared_name_views
from engine.thresholds import PooledThresholds, Thresholds, f1_max_or_none, map_scale

CASES_PER_KIND = 4  # worst false negatives and false positives kept per class
OBJECT_CASES_PER_KIND = 2  # worst objects of each kind (each drawn with all its images)


def class_metrics(maps: EvalMaps, spec: EvalSpec | None = None) -> tuple[list[float], Thresholds]:
    """`[auroc_sp, ap_sp, f1_sp, auroc_px, ap_px, f1_px, aupro_px]` and the class's
    thresholds: the image metrics from one sort of the image scores, the pixel metrics and
    AUPRO from one pass over the maps (the F1-max thresholds are those of the reported I-F1
    and P-F1). Another `spec`: the values it names (`object_metrics.spec_class_metrics`)."""
    if spec is not None and not spec.default:
        return spec_class_metrics(maps, spec)
    auroc_sp, ap_sp, f1_sp, image, image_f1 = f1_max_or_none(maps.labels, maps.scores)
    spec = EvalSpec() if spec is None else spec
    auroc_px, ap_px, f1_px, aupro_px, pixel = spec.exact_pixel_metrics(maps.masks, maps.maps)
    pixel_f1 = None if pixel is None else f1_px
    n_anomalous = int(maps.labels.sum())
    thresholds = Thresholds(image, image_f1, pixel, pixel_f1, map_scale(maps.maps),
                            len(maps.labels) - n_anomalous, n_anomalous)
    return [auroc_sp, ap_sp, f1_sp, auroc_px, ap_px, f1_px, aupro_px], thresholds


def metrics_of(maps: EvalMaps, spec: EvalSpec | None = None) -> list[float]:
    """The values of `class_metrics`."""
    return class_metrics(maps, spec)[0]


@dataclass
class Case:
    """One test image the F1-max threshold gets wrong: its map `R×R` and mask `R×R`."""
    kind: str  # 'fn' (anomalous, scored <= threshold) or 'fp' (normal, scored > threshold)
    rank: int  # 1 = the worst of its kind
    path: str
    score: float
    amap: np.ndarray | None  # None once drawn (`report_material.draw_class_cases`)
    mask: np.ndarray | None
    view: int | None = None  # its view, where its name is shared (`objects.shared_name_views`)
    part: int | None = None  # its part of a file of several views (`objects.shared_file_views`)


def _worst(labels: np.ndarray, scores: np.ndarray, threshold: float | None,
           per_kind: int) -> dict[str, np.ndarray]:
    """Indices of the worst false negatives (lowest first) and false positives (highest first)."""
    if threshold is None:
        return {}
    missed = np.flatnonzero(labels & (scores <= threshold))
    false_alarms = np.flatnonzero(~labels & (scores > threshold))
    return {"fn": missed[np.argsort(scores[missed], kind="stable")][:per_kind],
            "fp": false_alarms[np.argsort(-scores[false_alarms], kind="stable")][:per_kind]}


class _Cases:
    """Cases of `maps`, named and shown as the heatmaps are (views of a shared name, parts of
    a shared file)."""

    def __init__(self, maps: EvalMaps) -> None:
        self.maps = maps
        self.views = shared_name_views(maps.paths, maps.views)
        self.parts = shared_file_views(maps.paths, maps.views)

    def __call__(self, kind: str, rank: int, i: int) -> Case:
        m = self.maps
        return Case(kind, rank, m.paths[i], float(m.scores[i]), m.maps[i].copy(), m.masks[i].copy(),
                    self.views[i], self.parts[i])


def worst_cases(maps: EvalMaps, threshold: float | None, per_kind: int = CASES_PER_KIND) -> list[Case]:
    """The anomalous images with the lowest scores `<= threshold` and the normal ones with
    the highest scores `> threshold`, at most `per_kind` each."""
    chosen = _worst(maps.labels, maps.scores, threshold, per_kind)
    case = _Cases(maps) if chosen else None
    return [case(kind, rank, int(i)) for kind, indices in chosen.items() for rank, i in enumerate(indices, 1)]


@dataclass
class ObjectCase:
    """One object the F1-max object threshold gets wrong, with every image of it."""
    kind: str
    rank: int
    name: str
    score: float
    views: list[Case]


@dataclass
class ObjectResult:
    """A class's objects: their scores, labels and names, the threshold and the worst ones."""
    scores: np.ndarray  # M
    labels: np.ndarray  # M bool
    names: list[str]
    threshold: float | None
    cases: list[ObjectCase]


def object_result(maps: EvalMaps, threshold: float | None,
                  per_kind: int = OBJECT_CASES_PER_KIND) -> ObjectResult:
    """The objects of `maps` and the worst of them at `threshold`."""
    _, first = np.unique(maps.objects, return_index=True)
    names = [object_name([maps.paths[i]]) for i in first]
    cases = []
    chosen = _worst(maps.object_labels, maps.object_scores, threshold, per_kind)
    case = _Cases(maps) if chosen else None
    for kind, indices in chosen.items():
        for rank, j in enumerate(indices, 1):
            views = [case(kind, rank, int(i)) for i in np.flatnonzero(maps.objects == j)]
            cases.append(ObjectCase(kind, rank, names[j], float(maps.object_scores[j]), views))
    return ObjectResult(maps.object_scores.copy(), maps.object_labels.copy(), names, threshold, cases)


@dataclass
class ClassResult:
    """One class's evaluation: its metrics, thresholds, every image's score, label and path,
    and its worst cases. `heatmaps_dir`: the run folder whose maps/ --save_maps filled at
    this evaluation (None: the report draws the cases' heatmaps itself)."""
    name: str
    metrics: list[float]
    thresholds: Thresholds
    scores: np.ndarray  # N
    labels: np.ndarray  # N bool
    paths: list[str]
    cases: list[Case]
    heatmaps_dir: Path | None = None
    objects: ObjectResult | None = None
    drawn: dict[str, list] | None = None  # the cases' pictures, once drawn (report_material)


@dataclass
class Evaluation:
    """The classes of one evaluation of a model, and, for a model of several classes, the
    thresholds pooled over them (`pooled`, None for a one-class model)."""
    classes: dict[str, ClassResult] = field(default_factory=dict)
    pooled: PooledThresholds | None = None
    spec: EvalSpec = field(default_factory=EvalSpec)

    def add(self, name: str, maps: EvalMaps, heatmaps_dir: Path | None = None) -> ClassResult:
        """The class's metrics, thresholds and worst cases, from its maps."""
        values, thresholds = class_metrics(maps, self.spec)
        result = ClassResult(name, [float(v) for v in values], thresholds, maps.scores.copy(),
                             maps.labels.copy(), list(maps.paths),
                             worst_cases(maps, thresholds.image), heatmaps_dir)
        if thresholds.objects is not None:
            result.objects = object_result(maps, thresholds.objects.threshold)
        self.classes[name] = result
        if self.pooled is not None:
            self.pooled.add(maps, images=self.spec.image_level, pixels=self.spec.image_level)
        return result

    def merge(self, other: Evaluation) -> None:
        """Take over another evaluation's classes (`--eval_only` evaluates one at a time)."""
        self.classes.update(other.classes)
        if self.pooled is not None and other.pooled is not None:
            self.pooled.merge(other.pooled)

    def metrics(self) -> dict[str, list[float]]:
        return {name: result.metrics for name, result in self.classes.items()}


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation needs of the run's settings."""
    batch_size: int
    num_workers: int
    resolution: int  # maps and masks are compared at this side
    gt_threshold: float
    image_size: int  # the input geometry, for the heatmaps' pictures
    crop_size: int
    pooled: bool  # one model for several classes: pool their thresholds
    spec: EvalSpec = field(default_factory=EvalSpec)  # the method's (`Recipe.eval_spec`)


def evaluate(make_pipeline: Callable[[], nn.Module], test_sets: dict[str, Dataset],
             settings: EvalSettings, device: torch.device, maps_dir: Path | None = None,
             on_class: Callable[[ClassResult], None] | None = None) -> Evaluation:
    """Every class of `test_sets`, one fresh DataLoader and pipeline per class as the
    reference does (their random draws included). Under torchrun every rank calls it and
    computes the maps of its share; rank 0 gathers them and computes the results (the other
    ranks return an evaluation without classes). `maps_dir`: also draw every test image's
    heatmap and the class's score histogram into `maps_dir/maps/<class>/`. `on_class`:
    called with each class's result as soon as it is computed (the report draws its worst
    cases then, so that no class's maps wait for the others)."""
    spec = settings.spec
    evaluation = Evaluation(pooled=PooledThresholds() if settings.pooled else None, spec=spec)
    for name, test_set in test_sets.items():
        maps = test_set_maps(make_pipeline, test_set, settings.batch_size, settings.num_workers,
                             device, settings.resolution, settings.gt_threshold, spec.objects)
        if maps is None:  # ranks other than 0: their part is done
            continue
        result = evaluation.add(name, maps, maps_dir)
        if maps_dir is not None:
            heatmaps.save_class_heatmaps(maps_dir, name, maps.paths, maps.maps, maps.masks,
                                         maps.scores, maps.labels, settings.image_size,
                                         settings.crop_size, views=maps.views,
                                         objects=result.objects)
        if on_class is not None:
            on_class(result)
    return evaluation
