"""Plain oracles: the reference's metric procedures written out (for the fast metrics in
tests/test_metrics.py, tests/test_evaluation.py and the baselines of
benchmarks/bench_metrics.py) and Dinomaly's forward written out (tests/test_models.py,
tests/test_dinov3.py)."""
from statistics import mean

import numpy as np
import torch
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


def preview_pro(masks, amaps, num_th=200):
    """The Dinomaly2 preview's compute_pro as it runs under the numpy it pins (numpy 2): the
    reference's lines as written, `(max - min) / num_th` and `amaps > th` left to numpy 2's
    casting (a float32 step, a float64 grid, float64 comparisons)."""
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / num_th
    rows = []
    for th in np.arange(min_th, max_th, delta):
        binary = amaps > th
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


def plain_forward(model, img: torch.Tensor, grid: tuple[int, int], rope: tuple | None = None,
                  patch_tokens_only: bool = False) -> tuple[list, list]:
    """Dinomaly's forward written plainly, without gradient: the encoder's tokens through
    blocks 0..9 (DINOv3: with `rope`), no final norm; `patch_tokens_only` (DINOv3): cls and
    the 4 storage tokens dropped before the bottleneck, else (DINOv2) cls and 4 registers
    dropped only for the maps. Returns `(en, de)` of `plain_groups`."""
    enc = model.encoder
    with torch.no_grad():
        t = enc.prepare_tokens(img)
        outs = []
        for blk in enc.blocks[:10]:
            t = blk(t) if rope is None else blk(t, rope)
            outs.append(t[:, 5:] if patch_tokens_only else t)
        return plain_groups(model, outs, prefix=0 if patch_tokens_only else 5, grid=grid)


def plain_groups(model, outs: list, prefix: int, grid: tuple[int, int]) -> tuple[list, list]:
    """Dinomaly's forward after the encoder, written plainly. `outs`: the outputs of encoder
    blocks 0..9 (`B × N × C`), of which 2..9 are kept; their mean goes through the
    bottleneck and the 8 decoder blocks (reversed: index 0 = the last); each side's two
    groups of four are averaged, their first `prefix` tokens dropped, `B × N × C ->
    B × C × h × w`. Returns `(en, de)`, two lists of two maps."""
    kept = outs[2:10]
    h = model.bottleneck[0](torch.stack(kept).mean(0))
    dec = []
    for blk in model.decoder:
        h = blk(h)
        dec.append(h)
    dec = dec[::-1]

    def maps(ts: list) -> torch.Tensor:
        m = torch.stack(ts).mean(0)[:, prefix:]
        return m.transpose(1, 2).reshape(m.shape[0], m.shape[2], *grid)

    return [maps(kept[:4]), maps(kept[4:])], [maps(dec[:4]), maps(dec[4:])]


def histogram_metrics_oracle(maps, masks, smin, smax, strips=1000):
    """ADEval's pixel metrics (the Dinomaly2 multi-view evaluation) written plainly from
    their description, a threshold at a time: {'p_auroc', 'p_aupr', 'p_f1max', 'p_aupro'}.

    A score x (float32) falls in strip int(float32(x - smin) * strips / float32(smax - smin))
    (the last strip for smax) when smin <= x <= smax. Histogram entries of a pixel: one in
    bin 0 if x < smin, one in bin 1 + strip if in range, one more in bin strips + 1 if
    x >= smax. At threshold k = 0..strips, FN = the positives' entries in bins <= k, TP =
    all their entries - FN (the same for negatives). Weights: 1 / area (float32) of the
    8-connected mask region of an anomalous pixel."""
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks) != 0
    lo, hi = np.float32(smin), np.float32(smax)
    weights = np.ones(maps.shape, np.float32)
    for i, mask in enumerate(masks):
        labels = measure.label(mask, connectivity=2)
        for region in measure.regionprops(labels):
            weights[i][labels == region.label] = np.float32(1.0 / region.area)
    x, positive, w = maps.ravel(), masks.ravel(), weights.ravel().astype(np.float64)
    inside = (x >= lo) & (x <= hi)
    strip = np.zeros(x.size, np.int64)
    strip[inside] = np.minimum(((x[inside] - lo) * np.float32(strips) / (hi - lo)).astype(np.int64), strips - 1)
    entries = (x < lo).astype(np.float64) + inside + (x >= hi)
    rows = []
    for k in range(strips + 1):
        below_k = (x < lo) + (inside & (strip + 1 <= k))
        fn, tn = below_k[positive].sum(), below_k[~positive].sum()
        tp, fp = entries[positive].sum() - fn, entries[~positive].sum() - tn
        fn_w = (w * below_k)[positive].sum()
        tp_w = (w * entries)[positive].sum() - fn_w
        rows.append((tp / (tp + fn), fp / (fp + tn), tp / (tp + fp) if tp + fp > 0 else 1.0, tp_w / (tp_w + fn_w)))
    tpr, fpr, precision, pro = np.array(rows).T
    f1 = 2 * precision * tpr / (precision + tpr + 1e-10)
    return {"p_auroc": np.trapezoid(tpr[::-1], fpr[::-1]), "p_aupr": np.trapezoid(precision[::-1], tpr[::-1]),
            "p_f1max": f1.max(), "p_aupro": _pro_up_to(fpr[::-1], pro[::-1], 0.3)}


def _pro_up_to(fpr, pro, limit):
    """Trapezoid area of pro over ascending fpr up to fpr <= limit, plus the part of the
    trapezoid that crosses the limit left of it (its rectangle part y1 * width scaled by t,
    its triangle part scaled by t**2, t the fraction of the width left of the limit), over
    the limit."""
    kept = fpr <= limit
    area = np.trapezoid(pro[kept], fpr[kept])
    j = np.flatnonzero(kept)[-1]  # the last point at or below the limit, then the first above
    (x1, y1), (x2, y2) = (fpr[j], pro[j]), (fpr[j + 1], pro[j + 1])
    t = (limit - x1) / (x2 - x1)
    crossing = (x2 - x1) * (y1 + y2) / 2
    rectangle = crossing * y1 / (y1 + (y2 - y1) / 2)
    return (area + rectangle * t + (crossing - rectangle) * t * t) / limit
