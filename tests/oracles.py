"""The reference's metric procedures written out plainly, as oracles for the fast metrics
(tests/test_metrics.py, tests/test_evaluation.py) and baselines for
benchmarks/bench_metrics.py."""
from statistics import mean

import numpy as np
from skimage import measure
from sklearn.metrics import auc, precision_recall_curve


def reference_pro(masks, amaps, num_th=200):
    """The reference's compute_pro, written plainly (no pandas). Its numpy (< 1.24)
    computed `(max - min) / num_th` in float64 and `amaps > th` in the map's dtype;
    spelled out so that numpy 2 does the same."""
    min_th, max_th = amaps.min(), amaps.max()
    delta = np.float64(max_th - min_th) / num_th
    rows = []
    for th in np.arange(min_th, max_th, delta):
        binary = amaps > amaps.dtype.type(th)
        pros = [binary[i][region.coords[:, 0], region.coords[:, 1]].sum() / region.area
                for i, mask in enumerate(masks) for region in measure.regionprops(measure.label(mask))]
        inverse = 1 - masks.astype(np.int64)
        fpr = np.logical_and(inverse, binary).sum() / inverse.sum()
        rows.append((mean(pros), fpr))
    pro, fpr = np.array(rows).T
    keep = fpr < 0.3
    return auc(fpr[keep] / fpr[keep].max(), pro[keep])


def reference_f1_max(y_true, y_score):
    precs, recs, _ = precision_recall_curve(y_true, y_score)
    return (2 * precs * recs / (precs + recs + 1e-7))[:-1].max()


def brute_force_f1_max(y_true, y_score):
    """F1 = 2PR/(P+R+1e-7) at every distinct score as threshold (score >= t)."""
    best = -1.0
    for t in np.unique(y_score):
        predicted = y_score >= t
        tp = np.sum(predicted & y_true)
        precision, recall = tp / predicted.sum(), tp / y_true.sum()
        best = max(best, 2 * precision * recall / (precision + recall + 1e-7))
    return best
