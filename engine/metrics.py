"""Fast, exact anomaly-detection metrics (spec §5, issue 4).

Same values as the reference's metrics:
- `roc_auc`, `average_precision` equal scikit-learn's `roc_auc_score` and
  `average_precision_score` (ties included), `f1_score_max` equals the reference's
  `f1_score_max` (max of 2PR/(P+R+1e-7) over the precision-recall curve);
  `binary_metrics` gives all three from one sort of the scores.
  `binary_metrics_and_threshold` adds the threshold of the F1-max from the same sort
  (`score > threshold` is the F1-max partition: thresholds.json).
- `compute_pro` equals the reference's 200-threshold AUPRO loop.

Both run in bounded extra memory (issue 4: below 1.5x the size of the float32 maps):
the scores are never argsorted as a whole, and the per-pixel work is done in chunks.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from sklearn.metrics import auc

# Positive scores handled per step of the rank pass: bounds its temporaries (about
# ten arrays of this length) to a few MB, whatever the number of pixels.
_CHUNK = 1 << 15
# Scores per step when splitting them into positives and negatives.
_SPLIT_CHUNK = 1 << 18
# Pixels per step of the AUPRO pass (whole images at a time): about 30 bytes of
# temporaries per pixel, so a few MB.
_PRO_CHUNK_PIXELS = 1 << 18
# 8-connectivity within each image, none across images of a stack: labels a whole
# N x H x W stack in one call with the partition of skimage.measure.label(mask) per
# image (its default connectivity for 2-D is 8, the reference's).
_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8[1] = True


# ----------------------------------------------------------------------------- inputs

def _as_bool(y: np.ndarray, name: str) -> np.ndarray:
    """Bool view/copy of a 0/1 (or bool) array; anything else is an error."""
    y = np.asarray(y)
    if y.dtype == np.bool_:
        return y
    if np.any((y != 0) & (y != 1)):
        raise ValueError(f"{name} must be boolean or hold only 0 and 1")
    return y != 0


def _as_float(x: np.ndarray) -> np.ndarray:
    """float32/float64 arrays as they are (the map's dtype matters, see compute_pro);
    any other dtype as float64."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


# ----------------------------------------------------------------------------- AUROC, AP, F1

def _sorted_by_class(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the positives and of the negatives, each sorted ascending.

    The two copies together are the size of the scores, and are filled a chunk at a
    time so that nothing else of that size is allocated. An argsort of all scores
    would need 8 bytes per score.
    """
    y_true = _as_bool(y_true, "y_true").ravel()
    y_score = _as_float(y_score).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.size} values, y_score {y_score.size}")
    n_pos = int(np.count_nonzero(y_true))
    if n_pos in (0, y_true.size):
        # scikit-learn's roc_auc_score raises here too
        raise ValueError("Only one class present in y_true: the metrics are not defined")
    pos = np.empty(n_pos, dtype=y_score.dtype)
    neg = np.empty(y_true.size - n_pos, dtype=y_score.dtype)
    n_pos_seen = n_neg_seen = 0
    for start in range(0, y_true.size, _SPLIT_CHUNK):  # chunks: no full-size temporaries
        labels = y_true[start:start + _SPLIT_CHUNK]
        scores = y_score[start:start + _SPLIT_CHUNK]
        part = scores[labels]
        pos[n_pos_seen:n_pos_seen + part.size] = part
        n_pos_seen += part.size
        part = scores[~labels]
        neg[n_neg_seen:n_neg_seen + part.size] = part
        n_neg_seen += part.size
    pos.sort()
    neg.sort()
    # sorting puts NaN last; scikit-learn rejects NaN and infinity as well
    if not (np.isfinite(pos[[0, -1]]).all() and np.isfinite(neg[[0, -1]]).all()):
        raise ValueError("y_score contains NaN or infinity")
    return pos, neg


def _metrics_from_sorted(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float, float, float]:
    """(AUROC, AP, F1-max, the positive score where F1 is at its maximum) from the sorted
    positive and negative scores.

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
    Every positive score of a tie yields the same precision/F1, so the loop runs over
    positive scores rather than over their distinct values. The F1-max score `s` is the
    lowest positive score reaching the maximum: "score >= s" is the F1-max partition.
    """
    n_pos, n_neg = pos.size, neg.size
    pairs_twice = 0  # 2 * (correctly ordered pairs + ties / 2), exact
    precision_sums = []
    f1_max = -math.inf
    f1_max_score = math.nan
    for start in range(0, n_pos, _CHUNK):
        scores = pos[start:start + _CHUNK]
        neg_below = np.searchsorted(neg, scores, side="left")
        neg_not_above = np.searchsorted(neg, scores, side="right")
        pairs_twice += int(neg_below.sum()) + int(neg_not_above.sum())
        tp = n_pos - np.searchsorted(pos, scores, side="left")
        fp = n_neg - neg_below
        precision = tp / (tp + fp)
        recall = tp / n_pos
        f1 = 2 * precision * recall / (precision + recall + 1e-7)
        precision_sums.append(float(precision.sum()))
        best = int(f1.argmax())  # the first maximum: chunks run upwards, so the lowest score
        if f1[best] > f1_max:
            f1_max, f1_max_score = float(f1[best]), float(scores[best])
    auroc = pairs_twice / (2 * n_pos * n_neg)
    ap = math.fsum(precision_sums) / n_pos
    return auroc, ap, f1_max, f1_max_score


def _threshold_below(pos: np.ndarray, neg: np.ndarray, score: float) -> float:
    """A threshold `t` with `score > t` exactly the partition `score >= s` of the sorted
    scores: the midpoint between `s` and the highest score below it, or the value just below
    `s` when no score is lower. Computed and rounded in the scores' dtype (a float32 value
    for float32 maps), so that comparing in float32 or in float64 gives the same partition;
    where two scores are adjacent values of that dtype, the lower score itself (`low > low`
    is false). The midpoint keeps the largest margin on both sides, so a score recomputed
    with round-off (another batch size, ONNX Runtime) falls on the same side."""
    dtype = pos.dtype.type
    high = dtype(score)
    below = [a[i - 1] for a in (pos, neg) if (i := int(np.searchsorted(a, high, side="left")))]
    if not below:
        return float(np.nextafter(high, dtype(-np.inf)))
    low = dtype(max(below))
    middle = dtype(low + (high - low) / dtype(2))  # no overflow
    return float(middle if low < middle < high else low)


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float, float]:
    """(AUROC, AP, F1-max) of scores against binary labels, from one sort.

    Args:
        y_true: labels of any shape, bool or 0/1.
        y_score: scores of the same number of elements (float32 maps stay float32).
    Equal to (`sklearn.metrics.roc_auc_score`, `sklearn.metrics.average_precision_score`,
    the reference's `f1_score_max`) to float64 round-off (< 1e-12 in practice), ties
    included. Raises ValueError if only one class is present, like scikit-learn.
    """
    return _metrics_from_sorted(*_sorted_by_class(y_true, y_score))[:3]


def binary_metrics_and_threshold(y_true: np.ndarray, y_score: np.ndarray
                                 ) -> tuple[float, float, float, float]:
    """(AUROC, AP, F1-max, threshold) from the same one sort as `binary_metrics` (the first
    three values are identical to its): `y_score > threshold` is a partition whose F1, with
    the reference's `2PR / (P + R + 1e-7)`, is the F1-max (the lowest such threshold when
    several partitions reach it; see `_threshold_below` for where between two scores)."""
    pos, neg = _sorted_by_class(y_true, y_score)
    auroc, ap, f1_max, score = _metrics_from_sorted(pos, neg)
    return auroc, ap, f1_max, _threshold_below(pos, neg, score)


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
    min_th, max_th = amaps.min(), amaps.max()
    if not max_th > min_th:
        return np.empty(0)
    delta = np.float64(max_th - min_th) / num_th  # the difference in the map's dtype
    return np.arange(min_th, max_th, delta)


def _thresholds_below(thresholds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per score, how many thresholds lie strictly below it, i.e. at how many
    thresholds `score > th` holds (= `np.searchsorted(thresholds, scores, 'left')`).

    Args:
        thresholds: 1-D, non-decreasing, in the scores' dtype, at least 2 values.
        scores: 1-D.
    The thresholds are nearly evenly spaced, so the count is first guessed by
    arithmetic and then checked exactly against the thresholds on both sides; the
    few wrong guesses (scores within round-off of a threshold) get a binary search.
    About 4x faster than searchsorted on every score.
    """
    n_th = thresholds.size
    step = (thresholds[-1] - thresholds[0]) / (n_th - 1)
    if not step > 0:  # all thresholds rounded to one value: nothing to guess from
        return np.searchsorted(thresholds, scores, side="left")
    guess = (scores - thresholds[0]) * (1 / step)
    count = np.minimum(guess, n_th - 1, out=guess).astype(np.intp)
    count += 1
    # padded so that count - 1 and count index the thresholds on both sides
    padded = np.concatenate([[-np.inf], thresholds, [np.inf]]).astype(thresholds.dtype)
    wrong = (padded[count] >= scores) | (padded[count + 1] < scores)
    fix = np.flatnonzero(wrong)
    count[fix] = np.searchsorted(thresholds, scores[fix], side="left")
    return count


def _pro_counts(masks: np.ndarray, amaps: np.ndarray, thresholds: np.ndarray
                ) -> tuple[np.ndarray, int, np.ndarray, int]:
    """Positive counts per threshold for one stack of images.

    Returns (sum over the stack's regions of each region's positive fraction, one per
    threshold; number of regions; positive pixels outside the masks per threshold;
    number of pixels outside the masks).
    """
    n_th = thresholds.size
    labels, n_regions = ndimage.label(masks, structure=_PLANE_8)  # 0 = outside the masks
    n_above = _thresholds_below(thresholds, amaps.ravel())
    # one histogram of (region, number of thresholds the pixel is above) for all regions
    cell = labels.ravel().astype(np.intp)
    del labels
    cell *= n_th + 1
    cell += n_above
    hist = np.bincount(cell, minlength=(n_regions + 1) * (n_th + 1)).reshape(n_regions + 1, n_th + 1)
    at_least = hist[:, ::-1].cumsum(axis=1)[:, ::-1]  # [r, j]: pixels of r above >= j thresholds
    area = at_least[:, 0]
    positive = at_least[:, 1:]  # [r, k]: pixels of r with score > thresholds[k]
    region_fraction_sum = (positive[1:] / area[1:, None]).sum(axis=0)
    return region_fraction_sum, n_regions, positive[0], int(area[0])


def compute_pro(masks: np.ndarray, amaps: np.ndarray, num_th: int = 200) -> float:
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

    Here each mask is labelled once and every pixel is counted for all thresholds at
    once (how many thresholds it exceeds, then per-region histograms and reverse
    cumulative sums), a stack of images at a time.

    Returns nan where the reference fails: no anomalous pixel in the masks (it asserts
    both values occur), no pixel outside them, a constant map, fewer than two points
    with FPR < 0.3. Raises ValueError on NaN in the maps or on non-0/1 masks.
    """
    if not isinstance(num_th, int):
        raise TypeError("num_th must be an int")
    amaps = _as_float(amaps)
    masks = np.asarray(masks)
    if amaps.ndim != 3 or masks.shape != amaps.shape:
        raise ValueError(f"masks {masks.shape} and amaps {amaps.shape} must be the same N x H x W")
    if np.isnan(amaps.min()):
        raise ValueError("amaps contain NaN")
    thresholds = pro_thresholds(amaps, num_th)
    if thresholds.size < 2:
        return math.nan
    # numpy < 1.24 compared the float32 map with the float64 threshold in float32
    thresholds = thresholds.astype(amaps.dtype)

    n_th = thresholds.size
    fraction_sum = np.zeros(n_th)
    n_regions = 0
    fp = np.zeros(n_th, dtype=np.int64)
    n_outside = 0
    per_step = max(1, _PRO_CHUNK_PIXELS // (amaps.shape[1] * amaps.shape[2]))
    for start in range(0, amaps.shape[0], per_step):
        stop = start + per_step
        counts = _pro_counts(_as_bool(masks[start:stop], "masks"), amaps[start:stop], thresholds)
        fraction_sum += counts[0]
        n_regions += counts[1]
        fp += counts[2]
        n_outside += counts[3]
    if n_regions == 0 or n_outside == 0:
        return math.nan

    pro = fraction_sum / n_regions
    fpr = fp / n_outside
    keep = fpr < 0.3
    if keep.sum() < 2:
        return math.nan
    fpr = fpr[keep]
    return float(auc(fpr / fpr.max(), pro[keep]))
