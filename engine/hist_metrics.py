"""ADEval's histogram pixel metrics, reproduced: the Dinomaly2 multi-view evaluation's
P-AUROC, P-AUPR, P-F1max and P-AUPRO.

The preview code computes the multi-view pixel metrics with the ADEval package it bundles
(`EvalAccumulatorCuda(smin, smax, smin, smax)`, 1,000 strips; `smin`, `smax` the min and
max of all the class's blurred pixel scores). ADEval 1.1 calls `numpy.trapz`, which numpy
2.4 removed, so it cannot run on today's stack; `HistogramAccumulator` computes the same
values from the same histograms:

- per image, every pixel of an 8-connected mask region (OpenCV) weighs `float32(1/area)`,
  every other pixel 1; the map is resized to the mask (bilinear, no corner alignment:
  the identity at equal sizes);
- 1,002 bins per histogram: bin 0 counts scores `< smin`, bins 1..1000 are
  `torch.histc(scores, 1000, smin, smax)` (bin `int((x - smin) * 1000 / (smax - smin))`
  computed in the scores' dtype, `smax` itself in the last), bin 1001 counts scores
  `>= smax` (so the maximum is counted twice);
- plain counts of the positive and negative pixels, and the positives' counts times their
  weights, added weight after weight in ascending order, image after image, in float64
  (the products are exact; the sums are rounded in ADEval's order);
- `summary()`: for k = 0..1000, FN_k = the positives' counts in bins 0..k, TP_k = all
  minus FN_k (the same for the negatives): trapezoid AUROC of TPR over FPR, trapezoid
  AUPR of precision over recall (precision 1 where TP + FP = 0), F1max = the largest
  2PR / (P + R + 1e-10) over the 1,001 points (the same precision), AUPRO = the trapezoid
  area of the weighted TPR over FPR up to FPR 0.3, the segment that crosses 0.3 split by
  ADEval's `_trapezoid_intep`, divided by 0.3.

The cumulative sums run in order (numpy). ADEval running on CUDA adds its weighted
cumulative sums in a parallel scan, which can round the last bits of AUPRO differently.
Memory: four histograms; the inputs are read a batch at a time.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

LIMIT = 0.3  # AUPRO's FPR limit


def _as_tensor(x, device: torch.device | None = None) -> torch.Tensor:
    x = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    return x if device is None else x.to(device)


def _as_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """B x H x W from B x H x W, B x 1 x H x W or H x W."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"{name} must be B x H x W or B x 1 x H x W, got {tuple(x.shape)}")
    return x


def region_weights(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the region of every mask pixel in row-major order, 0-based; each region's weight
    `float32(1 / area)`) of one H x W mask, as ADEval's `_pro_weight` (OpenCV, 8-connected)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    band = mask[rows[0]:rows[-1] + 1]
    cols = np.flatnonzero(band.any(axis=0))
    box = np.ascontiguousarray(band[:, cols[0]:cols[-1] + 1]).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8, ltype=cv2.CV_16U)
    weights = (1.0 / stats[1:, cv2.CC_STAT_AREA]).astype(np.float32)  # float64, stored float32
    return labels[box != 0].astype(np.int64) - 1, weights


def trapezoid_interpolation(interp: float, area: float, y1: float, y2: float) -> float:
    """ADEval's `_trapezoid_intep`: the part of a trapezoid of `area` (heights y1 <= y2)
    left of the fraction `interp` of its width: a rectangle part scaled linearly and a
    triangle part scaled quadratically."""
    rect_ratio = y1 / (y1 + 0.5 * (y2 - y1))
    return area * rect_ratio * interp + area * (1 - rect_ratio) * interp * interp


class HistogramAccumulator:
    """ADEval's pixel accumulator (`EvalAccumulatorCuda(smin, smax, smin, smax)`,
    AUPRO on, `nstrips` strips): `add_anomap_batch(maps, masks)` a batch at a time, then
    `summary()`. Maps and masks are torch tensors on any device (the counting runs there;
    the masks' regions are labelled on the CPU) or numpy arrays."""

    def __init__(self, smin: float, smax: float, nstrips: int = 1000):
        if not (isinstance(nstrips, int) and nstrips >= 5):
            raise ValueError("nstrips must be an int >= 5")
        if not float(smin) < float(smax):
            raise ValueError(f"smin ({smin}) must be below smax ({smax})")
        self.smin, self.smax, self.nstrips = float(smin), float(smax), nstrips
        self.positives = np.zeros(nstrips + 2)  # plain counts, float64 as ADEval's
        self.negatives = np.zeros(nstrips + 2)
        self.weighted_positives = np.zeros(nstrips + 2)

    def _bins(self, scores: torch.Tensor) -> torch.Tensor:
        """The histogram bin of every score: 0 below smin, 1 + its torch.histc strip in
        [smin, smax], nstrips + 2 (none) above smax or NaN. (A score >= smax is also
        counted in bin nstrips + 1: see `_top`.)"""
        low = torch.tensor(self.smin, dtype=scores.dtype, device=scores.device)
        high = torch.tensor(self.smax, dtype=scores.dtype, device=scores.device)
        strip = ((scores - low) * self.nstrips / (high - low)).nan_to_num_(-1.0)
        strip = strip.clamp_(-1.0, self.nstrips - 1).to(torch.int64).add_(1)  # histc: smax in the last
        below = torch.where(scores < low, 0, self.nstrips + 2)
        return torch.where((scores >= low) & (scores <= high), strip, below)

    def add_anomap_batch(self, maps, masks) -> None:
        """Adds B maps and their masks (B x H x W or B x 1 x H x W; masks bool or 0/1, any
        nonzero value anomalous; maps resized to the masks' size if they differ)."""
        maps = _as_images(_as_tensor(maps), "maps")
        masks = _as_images(_as_tensor(masks, maps.device), "masks") != 0
        if maps.shape[0] != masks.shape[0]:
            raise ValueError(f"{maps.shape[0]} maps but {masks.shape[0]} masks")
        if maps.shape[-2:] != masks.shape[-2:]:
            maps = F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0]
        size = self.nstrips + 3  # the histogram's bins and the bin of scores above smax
        index = self._bins(maps)
        top = maps >= torch.tensor(self.smax, dtype=maps.dtype, device=maps.device)  # >= smax: counted again
        both = torch.bincount((index + masks * size).reshape(-1), minlength=2 * size)
        both = both.view(2, size)[:, :-1].cpu().numpy().astype(np.float64)
        top_positives = int((top & masks).sum())
        both[:, -1] += [int(top.sum()) - top_positives, top_positives]
        self.negatives += both[0]
        self.positives += both[1]
        self._add_weighted(index[masks], top[masks], masks.cpu().numpy())

    def add_anomap(self, anomap, gtmap) -> None:
        """Adds one H x W map and its mask."""
        self.add_anomap_batch(_as_images(_as_tensor(anomap), "anomap"), _as_images(_as_tensor(gtmap), "gtmap"))

    def _add_weighted(self, index: torch.Tensor, top: torch.Tensor, masks: np.ndarray) -> None:
        """The positives' counts times their weights, added image after image and, within
        an image, weight after weight in ascending order (ADEval's order of float64 sums).
        `index`, `top`: the bins of the anomalous pixels, in the order of `masks.nonzero()`."""
        groups, weights = [], []
        for mask in masks:
            regions, region_weight = region_weights(mask)
            distinct, rank = np.unique(region_weight, return_inverse=True)  # ascending
            groups.append(len(weights) + rank[regions])
            weights.extend(distinct.tolist())
        if not weights:
            return
        size = self.nstrips + 3
        group = torch.from_numpy(np.concatenate(groups)).to(index.device)
        hist = torch.bincount(group * size + index, minlength=len(weights) * size)
        hist = hist.view(len(weights), size)[:, :-1].cpu().numpy().astype(np.float64)
        hist[:, -1] += torch.bincount(group[top], minlength=len(weights)).cpu().numpy()
        for weight, counts in zip(weights, hist):
            self.weighted_positives += counts * weight  # exact products: counts < 2**29

    def summary(self) -> dict[str, float]:
        """{'p_auroc', 'p_aupr', 'p_f1max', 'p_aupro'} as ADEval's summary (and the
        preview's F1max)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            fpr, tpr, precision = _curve(self.positives, self.negatives)
            weighted_fpr, pro, _ = _curve(self.weighted_positives, self.negatives)
            f1 = 2 * precision * tpr / (precision + tpr + 1e-10)
            return {"p_auroc": float(np.trapezoid(tpr[::-1], fpr[::-1])),
                    "p_aupr": float(np.trapezoid(precision[::-1], tpr[::-1])),
                    "p_f1max": float(np.max(f1)),
                    "p_aupro": _aupro(weighted_fpr, pro)}


def _curve(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, precision) at k = 0..nstrips from the histograms, with ADEval's
    operations: FN = running sum of bins 0..k, TP = total - FN."""
    positives_cum, negatives_cum = np.cumsum(positives), np.cumsum(negatives)
    fn, tn = positives_cum[:-1], negatives_cum[:-1]
    tp, fp = float(positives_cum[-1]) - fn, float(negatives_cum[-1]) - tn
    precision = tp / (tp + fp)
    precision[~(tp + fp > 0)] = 1.0  # nothing predicted positive: no false positive
    return fp / (fp + tn), tp / (tp + fn), precision


def _aupro(fpr: np.ndarray, pro: np.ndarray) -> float:
    """ADEval's AUPRO: trapezoid area up to FPR 0.3 plus the part of the crossing segment,
    divided by 0.3; nan where ADEval fails (no point on one side of 0.3)."""
    below = fpr <= LIMIT
    if below.all() or not below.any():
        return math.nan
    lo_pro, lo_fpr = pro[below][::-1], fpr[below][::-1]
    hi_pro, hi_fpr = pro[~below][::-1], fpr[~below][::-1]
    lo = float(np.trapezoid(lo_pro, lo_fpr))
    hi = float(np.trapezoid(hi_pro, hi_fpr))
    total = float(np.trapezoid(pro[::-1], fpr[::-1]))
    interp = (LIMIT - lo_fpr[-1]) / (hi_fpr[0] - lo_fpr[-1])
    return float((lo + trapezoid_interpolation(interp, total - (lo + hi), lo_pro[-1], hi_pro[0])) / LIMIT)
