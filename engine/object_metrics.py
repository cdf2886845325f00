"""A class's metrics and thresholds for the forms of `EvalSpec` beyond Dinomaly's: test sets
of objects (multi-view: the seven over every view, then the objects'), objects of
modalities (the objects', then each modality's pixel metrics), and the histogram pixel
metrics. Nan (and no threshold) where a metric is not defined, as in
`evaluation.class_metrics`.

    values, thresholds = spec_class_metrics(maps, spec)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.eval_spec import EvalSpec
from engine.hist_metrics import HistogramAccumulator, _curve
from engine.maps import EvalMaps
from engine.thresholds import Thresholds, f1_max_or_none, map_scale, object_thresholds

HISTOGRAM_BATCH = 64  # maps per step of the histogram pass (bounds its temporaries)
NO_PIXEL = (math.nan, math.nan, math.nan, math.nan, None, None)

PixelValues = tuple[float, float, float, float, float | None, float | None]


def histogram_pixel_metrics(masks: np.ndarray, maps: np.ndarray,
                            nstrips: int = 1000) -> PixelValues:
    """(P-AUROC, P-AUPR, P-F1max, P-AUPRO) as the Dinomaly2 preview's multi-view evaluation
    computes them (ADEval's accumulator between the maps' min and max, `nstrips` strips),
    with the threshold at the lower edge of the F1-max strip (`score > threshold`: that strip
    and the ones above) and its histogram F1 (the reported P-F1max). Nan where ADEval fails
    (constant maps) or a value is not defined."""
    smin, smax = float(maps.min()), float(maps.max())
    if not (math.isfinite(smin) and math.isfinite(smax)):
        raise ValueError("the maps contain NaN or infinity")
    if not smin < smax:
        return NO_PIXEL
    acc = HistogramAccumulator(smin, smax, nstrips)
    for start in range(0, len(maps), HISTOGRAM_BATCH):
        part = slice(start, start + HISTOGRAM_BATCH)
        acc.add_anomap_batch(torch.from_numpy(maps[part]), torch.from_numpy(masks[part]))
    values = acc.summary()
    out = [values[k] for k in ("p_auroc", "p_aupr", "p_f1max", "p_aupro")]
    with np.errstate(divide="ignore", invalid="ignore"):
        _, recall, precision = _curve(acc.positives, acc.negatives)
        f1 = 2 * precision * recall / (precision + recall + 1e-10)
    if not np.isfinite(f1).any():
        return (*out, None, None)
    best = int(np.nanargmax(f1))  # predicted anomalous: the strips from `best` up
    edge = np.float32(smin + best * (smax - smin) / nstrips)
    return (*out, float(np.nextafter(edge, np.float32(-np.inf))), float(f1[best]))


def pixel_values(masks: np.ndarray, maps: np.ndarray, spec: EvalSpec) -> PixelValues:
    """(P-AUROC, P-AP, P-F1, P-AUPRO, pixel threshold, its F1) of the maps, as
    `spec.pixel_metrics` says (exact ones: `EvalSpec.exact_pixel_metrics`)."""
    if spec.pixel_metrics == "none":
        return 0.0, 0.0, 0.0, 0.0, None, None
    if spec.pixel_metrics == "histogram":
        return histogram_pixel_metrics(masks, maps)
    auroc, ap, f1, aupro, threshold = spec.exact_pixel_metrics(masks, maps)
    return auroc, ap, f1, aupro, threshold, None if threshold is None else f1


def _objects(maps: EvalMaps) -> tuple[list[float], object]:
    if maps.object_scores is None:
        raise ValueError("the evaluation expects a test set of objects: collect its maps with `objects`")
    values, thresholds = object_thresholds(maps.object_labels, maps.object_scores)
    return list(values), thresholds


def spec_class_metrics(maps: EvalMaps, spec: EvalSpec) -> tuple[list[float], Thresholds]:
    """The values named by `spec.metrics` and the class's thresholds (module docstring)."""
    if spec.modalities:
        return modality_class_metrics(maps, spec)
    auroc_sp, ap_sp, f1_sp, image, image_f1 = f1_max_or_none(maps.labels, maps.scores)
    *pixel, pixel_threshold, pixel_f1 = pixel_values(maps.masks, maps.maps, spec)
    values = [auroc_sp, ap_sp, f1_sp, *pixel]
    objects = None
    if spec.objects is not None:
        object_values, objects = _objects(maps)
        values += object_values
    n_anomalous = int(maps.labels.sum())
    return values, Thresholds(image, image_f1, pixel_threshold, pixel_f1, map_scale(maps.maps),
                              len(maps.labels) - n_anomalous, n_anomalous, objects)


def modality_class_metrics(maps: EvalMaps, spec: EvalSpec) -> tuple[list[float], Thresholds]:
    """Objects of modalities: `[O-AUROC, O-AP, O-F1]` over the objects (their scores and
    labels), then per modality k, over the k-th image of every object, its pixel AUROC,
    AP, F1 and AUPRO; thresholds: the objects', and one pixel threshold per modality
    (`pixel_<name>`, `pixel_<name>_f1`); no image threshold (the object is decided on)."""
    values, objects = _objects(maps)
    extra = []
    for k, name in enumerate(spec.modalities):
        pick = maps.views == k
        *pixel, threshold, f1 = pixel_values(maps.masks[pick], maps.maps[pick], spec)
        values += pixel
        extra += [(f"pixel_{name}", threshold), (f"pixel_{name}_f1", f1)]
    n_anomalous = int(maps.labels.sum())
    return values, Thresholds(None, None, None, None, map_scale(maps.maps),
                              len(maps.labels) - n_anomalous, n_anomalous, objects, tuple(extra))
