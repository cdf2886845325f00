"""Fast, exact anomaly-detection metrics.

Same values as the reference's metrics:
- `roc_auc`, `average_precision` equal scikit-learn's `roc_auc_score` and
  `average_precision_score` (ties included), `f1_score_max` equals the reference's
  `f1_score_max` (max of 2PR/(P+R+1e-7) over the precision-recall curve);
  `binary_metrics` gives all three at once, `binary_metrics_and_threshold` adds the
  threshold of the F1-max (`score > threshold` is the F1-max partition: thresholds.json).
- `compute_pro` equals the reference's 200-threshold AUPRO loop.
- `pixel_metrics` gives the pixel AUROC, AP, F1-max and AUPRO of a test set in one pass.

How: only the scores of the positives are sorted (a few percent of the pixels). Every
distinct positive score, and every AUPRO threshold, is a query, and
`rank_counts.counts_at` counts exactly how many scores lie below and at each query
without sorting them. AUROC (in its Mann-Whitney
form), AP and F1 follow from the counts at the positive scores; AUPRO's false positives
from the counts at its thresholds, its per-region overlaps from the anomalous pixels only
(each mask labelled once, 8-connected, by OpenCV).

Memory: besides the inputs, 2 bytes per score (their grouped low halves) and a few arrays
the size of the positives; float32 scores are never copied as a whole (below 4 M scores,
or in float64, they are sorted: a copy).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from sklearn.metrics import auc

from engine.pro_regions import as_bool as _as_bool
from engine.pro_regions import region_overlaps, thresholds_below
from engine.rank_counts import counts_at

# Distinct positive scores per step of the metric loop (bounds its temporaries).
_CHUNK = 1 << 15
# Scores per step when extracting the scores of the positives.
_SPLIT_CHUNK = 1 << 18


# ----------------------------------------------------------------------------- inputs

def _as_float(x: np.ndarray) -> np.ndarray:
    """float32/float64 arrays as they are (the map's dtype matters, see compute_pro);
    any other dtype as float64."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _finite_range(x: np.ndarray) -> tuple[float, float]:
    """(min, max) of the scores; NaN and infinity are refused, as scikit-learn does."""
    low, high = x.min(), x.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("the scores contain NaN or infinity")
    return low, high


def _positive_scores(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """The scores where y_true holds (1-D, in order), a chunk at a time."""
    parts = [y_score[start:start + _SPLIT_CHUNK][y_true[start:start + _SPLIT_CHUNK]]
             for start in range(0, y_true.size, _SPLIT_CHUNK)]
    return np.concatenate(parts) if parts else y_score[:0]


# ----------------------------------------------------------------------------- counts

class _Ranked(NamedTuple):
    """The positives' distinct scores with the counts every metric is made of."""
    values: np.ndarray  # distinct positive scores, ascending
    counts: np.ndarray  # positives with each value
    below: np.ndarray  # scores (positive or negative) < value
    at_most: np.ndarray  # scores <= value
    n_negatives: int
    extra_at_most: np.ndarray  # scores <= each extra query (AUPRO's thresholds)


def _distinct(positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, how many of each) of sorted scores."""
    new = np.empty(positives.size, dtype=bool)
    new[:1] = True
    np.not_equal(positives[1:], positives[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    return positives[starts], np.diff(np.append(starts, positives.size))


def _rank(y_score: np.ndarray, positives: np.ndarray, positive: bool,
          extra: np.ndarray | None = None) -> _Ranked:
    """Counts of all `y_score` below and at each distinct positive score, and at most each
    `extra` value (ascending, distinct). `positives`: the positives' scores, sorted here
    in place. `positive`: every score is > 0."""
    positives.sort()
    values, counts = _distinct(positives)
    n_negatives = y_score.size - positives.size
    if extra is None:
        below, at_most = counts_at(y_score, values, positive)
        return _Ranked(values, counts, below, at_most, n_negatives, at_most[:0])
    extra = extra.astype(values.dtype)
    where = np.searchsorted(values, extra)
    new = np.flatnonzero(values[np.minimum(where, values.size - 1)] != extra)
    queries = np.insert(values, where[new], extra[new])  # both sorted: a merge
    is_value = np.ones(queries.size, dtype=bool)
    is_value[where[new] + np.arange(new.size)] = False
    below, at_most = counts_at(y_score, queries, positive)
    return _Ranked(values, counts, below[is_value], at_most[is_value], n_negatives,
                   at_most[np.searchsorted(queries, extra)])


def _binary_from_counts(r: _Ranked) -> tuple[float, float, float, float]:
    """(AUROC, AP, F1-max, the positive score where F1 is at its maximum).

    - AUROC in its Mann-Whitney form: the fraction of (positive, negative) pairs
      ordered correctly, ties counting 1/2; an exact integer count, which is what the
      trapezoidal ROC area of scikit-learn equals (it rounds at each step).
    - AP and F1 only change where the recall changes, i.e. at the thresholds equal to
      a positive score; there, with "score >= t" positive, TP = #positives >= t and
      FP = #negatives >= t. AP = sum over positive scores of precision / P (a value
      shared by c positives adds c * precision / P, scikit-learn's recall step).
      Between two positive scores the recall is constant and the precision only
      falls as the threshold is lowered, so the highest F1 of scikit-learn's whole
      curve is at one of these thresholds; precision, recall and F1 are computed with
      the same float64 operations as scikit-learn and the reference.
    The F1-max score `s` is the lowest positive score reaching the maximum: "score >= s"
    is the F1-max partition. The sums do not depend on `_CHUNK`.
    """
    n_pos, n_neg = int(r.counts.sum()), r.n_negatives
    positives_at_most = np.cumsum(r.counts)
    precisions = np.empty(r.values.size)  # at each distinct positive score
    pairs_twice = 0  # 2 * (correctly ordered pairs + ties / 2), exact
    f1_max, f1_max_score = -math.inf, math.nan
    for start in range(0, r.values.size, _CHUNK):
        part = slice(start, start + _CHUNK)
        counts = r.counts[part]
        positives_below = positives_at_most[part] - counts
        negatives_below = r.below[part] - positives_below
        negatives_at_most = r.at_most[part] - positives_at_most[part]
        pairs_twice += int(np.dot(counts, negatives_below + negatives_at_most))
        tp = n_pos - positives_below
        fp = n_neg - negatives_below
        precision = tp / (tp + fp)
        recall = tp / n_pos
        f1 = 2 * precision * recall / (precision + recall + 1e-7)
        precisions[part] = precision
        best = int(f1.argmax())  # the first maximum: chunks run upwards, so the lowest score
        if f1[best] > f1_max:
            f1_max, f1_max_score = float(f1[best]), float(r.values[start + best])
    auroc = pairs_twice / (2 * n_pos * n_neg)
    return auroc, _precision_sum(precisions, r.counts, positives_at_most) / n_pos, f1_max, f1_max_score


def _precision_sum(precisions: np.ndarray, counts: np.ndarray, ends: np.ndarray) -> float:
    """The sum of the precision at every positive score, ties repeated (AP · P), added as
    this module always has: numpy's sum over each run of `_CHUNK` positives in ascending
    order, then those sums exactly (`math.fsum`), so that the metrics of a run stay the same
    to the last bit. `ends`: positives up to and including each distinct score."""
    sums = []
    n_pos = int(ends[-1])
    for start in range(0, n_pos, _CHUNK):
        stop = min(start + _CHUNK, n_pos)
        first = int(np.searchsorted(ends, start, side="right"))  # the score of positive `start`
        last = int(np.searchsorted(ends, stop - 1, side="right"))
        begins = ends[first:last + 1] - counts[first:last + 1]
        repeats = np.minimum(ends[first:last + 1], stop) - np.maximum(begins, start)
        sums.append(float(np.repeat(precisions[first:last + 1], repeats).sum()))
    return math.fsum(sums)


def _ranked_binary(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, _Ranked]:
    """Checked 1-D inputs and their counts."""
    y_true = _as_bool(y_true, "y_true").ravel()
    y_score = _as_float(y_score).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.size} values, y_score {y_score.size}")
    n_pos = int(np.count_nonzero(y_true))
    if n_pos in (0, y_true.size):
        # scikit-learn's roc_auc_score raises here too
        raise ValueError("Only one class present in y_true: the metrics are not defined")
    low, _ = _finite_range(y_score)
    return y_score, _rank(y_score, _positive_scores(y_true, y_score), bool(low > 0))


def threshold_between(low, high, dtype) -> float:
    """A threshold `t` with `score > t` exactly the partition `score >= high` of scores
    whose largest value below `high` is `low` (None: no score below): the midpoint, or the
    value just below `high` when no score is lower. Computed and rounded in the scores'
    dtype (a float32 value for float32 maps), so that comparing in float32 or in float64
    gives the same partition; where two scores are adjacent values of that dtype, the
    lower score itself (`low > low` is false). The midpoint keeps the largest margin on
    both sides, so a score recomputed with round-off (another batch size, ONNX Runtime)
    falls on the same side."""
    dtype = np.dtype(dtype).type
    high = dtype(high)
    if low is None:
        return float(np.nextafter(high, dtype(-np.inf)))
    low = dtype(low)
    middle = dtype(low + (high - low) / dtype(2))  # no overflow
    return float(middle if low < middle < high else low)


def _threshold_below(y_score: np.ndarray, score: float) -> float:
    """`threshold_between` the F1-max score `score` and the largest score below it."""
    high = y_score.dtype.type(score)
    lowest = y_score.dtype.type(-np.inf)
    low = max((np.max(part, initial=lowest, where=part < high)
               for part in (y_score[i:i + _SPLIT_CHUNK] for i in range(0, y_score.size, _SPLIT_CHUNK))),
              default=lowest)
    return threshold_between(None if low == lowest else low, high, y_score.dtype)


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float, float]:
    """(AUROC, AP, F1-max) of scores against binary labels.

    Args:
        y_true: labels of any shape, bool or 0/1.
        y_score: scores of the same number of elements (float32 maps stay float32).
    Equal to (`sklearn.metrics.roc_auc_score`, `sklearn.metrics.average_precision_score`,
    the reference's `f1_score_max`) to float64 round-off (< 1e-12 in practice), ties
    included. Raises ValueError if only one class is present, like scikit-learn.
    """
    return _binary_from_counts(_ranked_binary(y_true, y_score)[1])[:3]


def binary_metrics_and_threshold(y_true: np.ndarray, y_score: np.ndarray
                                 ) -> tuple[float, float, float, float]:
    """(AUROC, AP, F1-max, threshold): the first three identical to `binary_metrics`'s;
    `y_score > threshold` is a partition whose F1, with the reference's
    `2 P R / (P + R + 1e-7)`, is the F1-max (the lowest such threshold when several
    partitions reach it; see `threshold_between` for where between two scores)."""
    y_score, ranked = _ranked_binary(y_true, y_score)
    auroc, ap, f1_max, score = _binary_from_counts(ranked)
    return auroc, ap, f1_max, _threshold_below(y_score, score)


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve, as `sklearn.metrics.roc_auc_score` (binary)."""
    return binary_metrics(y_true, y_score)[0]


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision, as `sklearn.metrics.average_precision_score` (binary)."""
    return binary_metrics(y_true, y_score)[1]


def f1_score_max(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Best F1 over all thresholds, as the reference:
    `precs, recs, _ = precision_recall_curve(y_true, y_score)`;
    `(2 * precs * recs / (precs + recs + 1e-7))[:-1].max()`."""
    return binary_metrics(y_true, y_score)[2]


# ----------------------------------------------------------------------------- AUPRO

def pro_thresholds(amaps: np.ndarray, num_th: int = 200) -> np.ndarray:
    """The reference's thresholds `np.arange(min, max, (max - min) / num_th)`.

    The reference ran on numpy < 1.24 (it uses `np.bool`), where, with float32 maps,
    `(max - min) / num_th` is float64 (a numpy float32 scalar divided by a Python int
    gave float64 before NEP 50) and so is the array; it can hold num_th or
    num_th + 1 values. Written out here so that numpy 2 gives the same array.
    Returns an empty array for a constant map (the reference fails there).
    """
    return thresholds_from_range(amaps.min(), amaps.max(), num_th)


# kept here under its earlier name (tests and callers use metrics._thresholds_below)
_thresholds_below = thresholds_below


def thresholds_from_range(min_th, max_th, num_th: int) -> np.ndarray:
    """`pro_thresholds` from the maps' min and max (numpy scalars of the maps' dtype)."""
    if not max_th > min_th:
        return np.empty(0)
    delta = np.float64(max_th - min_th) / num_th  # the difference in the map's dtype
    return np.arange(min_th, max_th, delta)


THRESHOLD_RULES = ("numpy1", "numpy2")  # how AUPRO's thresholds are computed and compared


def rule_thresholds(low, high, num_th: int, dtype: np.dtype, rule: str = "numpy1") -> np.ndarray:
    """AUPRO's thresholds, as values of the maps' dtype that `amap > th` compares with.

    The reference's lines `delta = (max - min) / num_th; np.arange(min, max, delta)` and
    `amap > th` compute differently with numpy's casting rules:
    - "numpy1" (the numpy Dinomaly ran on): the step in float64, and each comparison with a
      float32 map made in float32 (the threshold rounded to the nearest float32);
    - "numpy2" (the numpy the Dinomaly2 preview code pins): the step in float32, a float64
      grid, and each comparison made in float64 — for a float32 map the same partition as
      comparing with the threshold rounded down to a float32.
    """
    if rule == "numpy1":
        return thresholds_from_range(low, high, num_th).astype(dtype)
    if rule != "numpy2":
        raise ValueError(f"threshold rule {rule!r}: one of {', '.join(THRESHOLD_RULES)}")
    if not high > low:
        return np.empty(0, dtype=dtype)
    kind = np.dtype(dtype).type
    # the preview's own lines on the map's scalars: numpy >= 2 keeps the step in float32 and
    # counts the grid's length in it, and returns the grid in float64
    grid = np.arange(kind(low), kind(high), (kind(high) - kind(low)) / num_th).astype(np.float64)
    rounded = grid.astype(dtype)
    return np.where(rounded > grid, np.nextafter(rounded, kind(-np.inf)), rounded).astype(dtype)


def _checked_maps(masks: np.ndarray, amaps: np.ndarray, num_th: int, finite: bool = False,
                  rule: str = "numpy1") -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """(masks, maps, the thresholds in the maps' dtype (`rule_thresholds`), (the maps' min,
    max)); NaN in the maps is refused, and infinity too when `finite`."""
    if not isinstance(num_th, int):
        raise TypeError("num_th must be an int")
    amaps = _as_float(amaps)
    masks = np.asarray(masks)
    if amaps.ndim != 3 or masks.shape != amaps.shape:
        raise ValueError(f"masks {masks.shape} and amaps {amaps.shape} must be the same N x H x W")
    low, high = amaps.min(), amaps.max()
    if np.isnan(low):
        raise ValueError("amaps contain NaN")
    if finite and not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("amaps contain infinity")
    return masks, amaps, rule_thresholds(low, high, num_th, amaps.dtype, rule), (low, high)


def aupro_from_counts(fraction_sum: np.ndarray, n_regions: int, fp: np.ndarray, n_outside: int) -> float:
    """The reference's last step: PRO = mean region overlap, FPR = fp / pixels outside;
    the points with FPR < 0.3, their FPR divided by the largest kept, trapezoid area."""
    if n_regions == 0 or n_outside == 0 or fraction_sum.size < 2:
        return math.nan
    pro = fraction_sum / n_regions
    fpr = fp / n_outside
    keep = fpr < 0.3
    if keep.sum() < 2:
        return math.nan
    fpr = fpr[keep]
    return float(auc(fpr / fpr.max(), pro[keep]))


def _false_positives(n_pixels: int, at_most: np.ndarray, positives: np.ndarray,
                     thresholds: np.ndarray) -> np.ndarray:
    """Pixels outside the masks with `score > th`, per threshold: the pixels above
    (`at_most`: pixels <= th) minus the anomalous ones above (`positives` sorted)."""
    positives_above = positives.size - np.searchsorted(positives, thresholds, side="right")
    return (n_pixels - at_most) - positives_above


def compute_pro(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200,
                threshold_rule: str = "numpy1") -> float:
    """Area under the per-region-overlap curve up to FPR 0.3, as the reference.

    Args:
        masks: N x H x W, bool or 0/1 (int or float).
        amaps: N x H x W anomaly maps (float32 as evaluated; other non-float64 dtypes
            are converted to float64).
        num_th: number of threshold steps.
    The reference, for each threshold th of `pro_thresholds` (its 200 or 201 values):
    pixels with `amap > th` are positive; PRO = mean over every 8-connected region of
    every mask of its positive fraction; FPR = positive pixels outside the masks /
    pixels outside the masks. Points with FPR < 0.3 are kept, their FPR divided by the
    largest kept FPR, and the area taken by `sklearn.metrics.auc`. As in the reference's
    numpy, `amap > th` is compared in the map's dtype (th rounded to float32 for float32
    maps).

    Returns nan where the reference fails: no anomalous pixel in the masks (it asserts
    both values occur), no pixel outside them, a constant map, fewer than two points
    with FPR < 0.3. Raises ValueError on NaN in the maps or on non-0/1 masks.
    """
    masks, amaps, thresholds, (low, _) = _checked_maps(masks, amaps, num_th, rule=threshold_rule)
    positives, fraction_sum, n_regions = region_overlaps(masks, amaps, thresholds)
    if thresholds.size < 2 or n_regions == 0 or positives.size == amaps.size:
        return math.nan
    positives.sort()
    queries = np.unique(thresholds)
    at_most = counts_at(amaps.ravel(), queries, bool(low > 0))[1]
    at_most = at_most[np.searchsorted(queries, thresholds)]
    fp = _false_positives(amaps.size, at_most, positives, thresholds)
    return aupro_from_counts(fraction_sum, n_regions, fp, amaps.size - positives.size)


def pixel_metrics_and_threshold(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200,
                                threshold_rule: str = "numpy1"
                                ) -> tuple[float, float, float, float, float | None]:
    """(P-AUROC, P-AP, P-F1-max, AUPRO, F1-max threshold) of a test set's maps, in one pass
    over them: the values of `binary_metrics_and_threshold(masks.ravel(), amaps.ravel())`
    and of `compute_pro(masks, amaps, num_th)`, with nan (and no threshold) where a metric is
    not defined (the masks hold one class only; see `compute_pro` for AUPRO) instead of an
    error. Raises ValueError on NaN or infinity in the maps and on non-0/1 masks."""
    masks, amaps, thresholds, (low, _) = _checked_maps(masks, amaps, num_th, finite=True,
                                                       rule=threshold_rule)
    positives, fraction_sum, n_regions = region_overlaps(masks, amaps, thresholds)
    if positives.size in (0, amaps.size):
        return math.nan, math.nan, math.nan, math.nan, None
    extra = np.unique(thresholds) if thresholds.size else None
    ranked = _rank(amaps.ravel(), positives, bool(low > 0), extra)
    auroc, ap, f1, score = _binary_from_counts(ranked)
    threshold = _threshold_below(amaps.ravel(), score)
    if extra is None:
        return auroc, ap, f1, math.nan, threshold
    at_most = ranked.extra_at_most[np.searchsorted(extra, thresholds)]
    fp = _false_positives(amaps.size, at_most, positives, thresholds)
    aupro = aupro_from_counts(fraction_sum, n_regions, fp, amaps.size - positives.size)
    return auroc, ap, f1, aupro, threshold


def pixel_metrics(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200,
                  threshold_rule: str = "numpy1") -> tuple[float, float, float, float]:
    """(P-AUROC, P-AP, P-F1-max, AUPRO) of a test set's maps, in one pass over them (see
    `pixel_metrics_and_threshold`)."""
    return pixel_metrics_and_threshold(masks, amaps, num_th, threshold_rule)[:4]
