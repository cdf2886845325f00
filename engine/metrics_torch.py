"""The exact metrics of `engine.metrics`, computed with torch on the tensors' device.

Same names, same semantics, same values (to float64 round-off) as `engine.metrics`, for
torch tensors that already live on the evaluation's device (a GPU), so that a GPU
evaluation does not copy its maps to the host and sort them there:
`binary_metrics`, `binary_metrics_and_threshold`, `roc_auc`, `average_precision`,
`f1_score_max`, `compute_pro`, `pixel_metrics` (`pro_thresholds` returns the same numpy
thresholds as `metrics.pro_thresholds`).

How: the positives' scores are sorted on the device; every score is placed among the
distinct positive scores (and AUPRO's thresholds) by `torch.searchsorted`, a chunk at a
time, and `torch.bincount` of those places gives the exact counts below and at each
query. The masks' regions are labelled on the CPU (OpenCV, once per call: the masks are
copied to the host); every per-threshold count is made on the device. Memory: a chunk of
int64 places and arrays the size of the positives; no copy of the maps.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine import metrics as _np_metrics
from engine.pro_regions import region_ids

# Scores placed among the queries per step (two int64 arrays of this length).
CHUNK = 1 << 22
# Regions whose threshold histograms are built at once (x (thresholds + 1) int64 each).
REGION_BLOCK = 1 << 14


def _as_bool(y: torch.Tensor, name: str) -> torch.Tensor:
    if y.dtype == torch.bool:
        return y
    if bool(((y != 0) & (y != 1)).any()):
        raise ValueError(f"{name} must be boolean or hold only 0 and 1")
    return y != 0


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """float32/float64 tensors as they are (comparisons in the map's dtype); else float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float64)


def _finite_range(x: torch.Tensor) -> tuple[float, float]:
    low, high = torch.aminmax(x)
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("the scores contain NaN or infinity")
    return low, high


def counts_at(scores: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(`#scores < q`, `#scores <= q`) for each query q (1-D, ascending, distinct, of the
    scores' dtype and device), exactly, as int64 tensors."""
    scores = scores.reshape(-1)
    n = queries.numel()
    at_most = torch.zeros(n + 1, dtype=torch.int64, device=scores.device)
    below = torch.zeros(n + 1, dtype=torch.int64, device=scores.device)
    for start in range(0, scores.numel(), CHUNK):
        part = scores[start:start + CHUNK]
        # a score with g queries below it is <= queries[g], ...; with g queries <= it, < queries[g]
        at_most += torch.bincount(torch.searchsorted(queries, part), minlength=n + 1)
        below += torch.bincount(torch.searchsorted(queries, part, right=True), minlength=n + 1)
    return below.cumsum(0)[:n], at_most.cumsum(0)[:n]


def _rank(scores: torch.Tensor, positives: torch.Tensor, extra: torch.Tensor | None = None):
    """(distinct positive values, their counts, all scores < / <= each, scores <= each
    `extra` value (ascending, distinct))."""
    values, counts = torch.unique_consecutive(torch.sort(positives).values, return_counts=True)
    queries = values if extra is None else torch.unique(torch.cat([values, extra]))
    below, at_most = counts_at(scores, queries)
    if extra is None:
        return values, counts, below, at_most, at_most[:0]
    where = torch.searchsorted(queries, values)
    return values, counts, below[where], at_most[where], at_most[torch.searchsorted(queries, extra)]


def _binary_from_counts(values, counts, below, at_most, n_negatives: int) -> tuple[float, float, float, float]:
    """(AUROC, AP, F1-max, the lowest positive score reaching the F1-max): the formulas of
    `metrics._binary_from_counts`, vectorized (float64)."""
    n_pos = int(counts.sum())
    positives_at_most = counts.cumsum(0)
    positives_below = positives_at_most - counts
    negatives_below = below - positives_below
    negatives_at_most = at_most - positives_at_most
    pairs_twice = int((counts * (negatives_below + negatives_at_most)).sum())
    tp = (n_pos - positives_below).to(torch.float64)
    fp = (n_negatives - negatives_below).to(torch.float64)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    f1 = 2 * precision * recall / (precision + recall + 1e-7)
    best = int(torch.argmax(f1))  # the first maximum: the lowest score
    ap = float((counts.to(torch.float64) * precision).sum()) / n_pos
    return pairs_twice / (2 * n_pos * n_negatives), ap, float(f1[best]), float(values[best])


def _ranked_binary(y_true: torch.Tensor, y_score: torch.Tensor):
    y_true = _as_bool(y_true, "y_true").reshape(-1)
    y_score = _as_float(y_score).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.numel()} values, y_score {y_score.numel()}")
    n_pos = int(y_true.sum())
    if n_pos in (0, y_true.numel()):
        raise ValueError("Only one class present in y_true: the metrics are not defined")
    _finite_range(y_score)
    values, counts, below, at_most, _ = _rank(y_score, y_score[y_true])
    return y_score, _binary_from_counts(values, counts, below, at_most, y_score.numel() - n_pos)


def binary_metrics(y_true: torch.Tensor, y_score: torch.Tensor) -> tuple[float, float, float]:
    """(AUROC, AP, F1-max) as `metrics.binary_metrics`, on the tensors' device."""
    return _ranked_binary(y_true, y_score)[1][:3]


def binary_metrics_and_threshold(y_true: torch.Tensor, y_score: torch.Tensor
                                 ) -> tuple[float, float, float, float]:
    """(AUROC, AP, F1-max, threshold) as `metrics.binary_metrics_and_threshold`."""
    y_score, (auroc, ap, f1_max, score) = _ranked_binary(y_true, y_score)
    return auroc, ap, f1_max, _threshold_below(y_score, score)


def _threshold_below(y_score: torch.Tensor, score: float) -> float:
    """`metrics.threshold_between` the F1-max score and the largest score below it."""
    high = torch.tensor(score, dtype=y_score.dtype, device=y_score.device)
    low = max(float(torch.where(part < high, part, -math.inf).max())
              for part in y_score.split(CHUNK))
    dtype = np.float32 if y_score.dtype == torch.float32 else np.float64
    return _np_metrics.threshold_between(None if low == -math.inf else low, score, dtype)


def roc_auc(y_true: torch.Tensor, y_score: torch.Tensor) -> float:
    return binary_metrics(y_true, y_score)[0]


def average_precision(y_true: torch.Tensor, y_score: torch.Tensor) -> float:
    return binary_metrics(y_true, y_score)[1]


def f1_score_max(y_true: torch.Tensor, y_score: torch.Tensor) -> float:
    return binary_metrics(y_true, y_score)[2]


def pro_thresholds(amaps: torch.Tensor, num_th: int = 200) -> np.ndarray:
    """`metrics.pro_thresholds` of the maps (a numpy float64 array)."""
    low, high = torch.aminmax(amaps)
    dtype = np.float32 if amaps.dtype == torch.float32 else np.float64
    return _np_metrics.thresholds_from_range(dtype(low.item()), dtype(high.item()), num_th)


def _overlap_sums(ids: torch.Tensor, n_regions: int, scores: torch.Tensor,
                  thresholds: torch.Tensor) -> torch.Tensor:
    """Sum over the regions of the fraction of each region's pixels with `score > th`, per
    threshold (float64), a block of regions at a time."""
    n_th = thresholds.numel()
    above = torch.searchsorted(thresholds, scores)  # thresholds strictly below each score
    total = torch.zeros(n_th, dtype=torch.float64, device=scores.device)
    for first in range(0, n_regions, REGION_BLOCK):
        size = min(REGION_BLOCK, n_regions - first)
        inside = (ids >= first) & (ids < first + size)
        cell = (ids[inside] - first) * (n_th + 1) + above[inside]
        hist = torch.bincount(cell, minlength=size * (n_th + 1)).view(size, n_th + 1)
        at_least = hist.flip(1).cumsum(1).flip(1).to(torch.float64)  # pixels above >= j thresholds
        total += (at_least[:, 1:] / at_least[:, :1]).sum(0)
    return total


def _pixel_pass(masks: torch.Tensor, amaps: torch.Tensor, num_th: int, binary: bool,
                rule: str = "numpy1"):
    """(binary metrics (AUROC, AP, F1-max, the F1-max score) or None, AUPRO) of N x H x W
    masks and maps; AUPRO's thresholds by `rule` (`metrics.rule_thresholds`)."""
    if not isinstance(num_th, int):
        raise TypeError("num_th must be an int")
    amaps = _as_float(amaps)
    if amaps.dim() != 3 or tuple(masks.shape) != tuple(amaps.shape):
        raise ValueError(f"masks {tuple(masks.shape)} and amaps {tuple(amaps.shape)} must be the same N x H x W")
    low, high = torch.aminmax(amaps)
    if math.isnan(float(low)):
        raise ValueError("amaps contain NaN")
    if binary and not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise ValueError("amaps contain infinity")
    masks = _as_bool(masks.to(amaps.device), "masks")
    dtype = np.float32 if amaps.dtype == torch.float32 else np.float64
    thresholds = _np_metrics.rule_thresholds(dtype(low.item()), dtype(high.item()), num_th, dtype, rule)
    positives = amaps[masks]
    n_pos, n_pixels = positives.numel(), amaps.numel()
    if n_pos in (0, n_pixels) or (thresholds.size < 2 and not binary):
        return (math.nan,) * 4 if binary else None, math.nan
    th = torch.from_numpy(thresholds).to(amaps.device)
    extra = torch.unique(th) if thresholds.size >= 2 else None
    if binary:
        values, counts, below, at_most, th_at_most = _rank(amaps.reshape(-1), positives, extra)
        result = _binary_from_counts(values, counts, below, at_most, n_pixels - n_pos)
    else:
        result, th_at_most = None, counts_at(amaps.reshape(-1), extra)[1]
    if extra is None:
        return result, math.nan
    ids, n_regions = region_ids(masks.cpu().numpy())
    fraction_sum = _overlap_sums(torch.from_numpy(ids).to(amaps.device, torch.int64), n_regions, positives, th)
    positives_at_most = torch.searchsorted(torch.sort(positives).values, th, right=True)
    fp = (n_pixels - th_at_most[torch.searchsorted(extra, th)]) - (n_pos - positives_at_most)
    return result, _np_metrics.aupro_from_counts(fraction_sum.cpu().numpy(), n_regions,
                                                 fp.cpu().numpy(), n_pixels - n_pos)


def compute_pro(masks: torch.Tensor, amaps: torch.Tensor, num_th: int = 200) -> float:
    """AUPRO as `metrics.compute_pro` (nan where it is not defined), on the maps' device."""
    return _pixel_pass(masks, amaps, num_th, binary=False)[1]


def pixel_metrics(masks: torch.Tensor, amaps: torch.Tensor, num_th: int = 200,
                  threshold_rule: str = "numpy1") -> tuple[float, float, float, float]:
    """(P-AUROC, P-AP, P-F1-max, AUPRO) as `metrics.pixel_metrics`, on the maps' device."""
    binary, aupro = _pixel_pass(masks, amaps, num_th, binary=True, rule=threshold_rule)
    return (*binary[:3], aupro)


def pixel_metrics_and_threshold(masks: torch.Tensor, amaps: torch.Tensor, num_th: int = 200,
                                threshold_rule: str = "numpy1"
                                ) -> tuple[float, float, float, float, float | None]:
    """(P-AUROC, P-AP, P-F1-max, AUPRO, F1-max threshold) as
    `metrics.pixel_metrics_and_threshold`, on the maps' device."""
    (auroc, ap, f1, score), aupro = _pixel_pass(masks, amaps, num_th, binary=True,
                                                rule=threshold_rule)
    if math.isnan(auroc):
        return auroc, ap, f1, aupro, None
    return auroc, ap, f1, aupro, _threshold_below(_as_float(amaps).reshape(-1), score)


def host_maps_metrics(masks: np.ndarray, amaps: np.ndarray, device: str, num_th: int = 200,
                      threshold_rule: str = "numpy1") -> tuple[float, float, float, float, float | None]:
    """`pixel_metrics_and_threshold` of host arrays (an evaluation's maps), computed on
    `device`: the maps and masks are copied there once."""
    return pixel_metrics_and_threshold(torch.from_numpy(np.ascontiguousarray(masks)).to(device),
                                       torch.from_numpy(np.ascontiguousarray(amaps)).to(device),
                                       num_th, threshold_rule)
