"""Plain oracles: the reference's metric procedures written out (for the fast metrics in
tests/test_metrics.py, tests/test_evaluation.py and the baselines of
benchmarks/bench_metrics.py) and Dinomaly's forward written out (tests/test_models.py,
tests/test_dinov3.py)."""
from statistics import mean

import numpy as np
import torch
from skimage import measure
from sklearn.metrics import auc, precision_recall_curve


def _plain_pro(masks, amaps, thresholds, binarise):
    """The reference's AUPRO loop over `thresholds`, `binarise(amaps, th)` the positives."""
    rows = []
    for th in thresholds:
        binary = binarise(amaps, th)
        pros = [binary[i][region.coords[:, 0], region.coords[:, 1]].sum() / region.area
                for i, mask in enumerate(masks) for region in measure.regionprops(measure.label(mask))]
        inverse = 1 - masks.astype(np.int64)
        fpr = np.logical_and(inverse, binary).sum() / inverse.sum()
        rows.append((mean(pros), fpr))
    pro, fpr = np.array(rows).T
    keep = fpr < 0.3
    return auc(fpr[keep] / fpr[keep].max(), pro[keep])


def reference_pro(masks, amaps, num_th=200):
    """The reference's compute_pro, written plainly (no pandas). Its numpy (< 1.24)
    computed `(max - min) / num_th` in float64 and `amaps > th` in the map's dtype;
    spelled out so that numpy 2 does the same."""
    min_th, max_th = amaps.min(), amaps.max()
    delta = np.float64(max_th - min_th) / num_th
    return _plain_pro(masks, amaps, np.arange(min_th, max_th, delta),
                      lambda maps, th: maps > maps.dtype.type(th))


def preview_pro(masks, amaps, num_th=200):
    """The Dinomaly2 preview's compute_pro as it runs under the numpy it pins (numpy 2): the
    reference's lines as written, `(max - min) / num_th` and `amaps > th` left to numpy 2's
    casting (a float32 step, a float64 grid, float64 comparisons)."""
    min_th, max_th = amaps.min(), amaps.max()
    return _plain_pro(masks, amaps, np.arange(min_th, max_th, (max_th - min_th) / num_th),
                      lambda maps, th: maps > th)


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


def reference_training_loop(model, optimizer, lr_scheduler, train_dataloader, test_data_list,
                            total_iters: int, every: int, batch_size: int,
                            model_input=lambda batch: batch[0], evaluate=None,
                            evaluate_last: bool = True):
    """The training loop of the reference's scripts (Dinomaly's dinomaly_mvtec_uni.py, the
    Dinomaly2 preview's dinomaly_2D.py and its other scripts: the same loop), abridged only in
    the printing: epochs over the re-iterated loader, hard-mining p ramped over 1000
    iterations, clip 0.1, an evaluation of every class every `every` iterations (`evaluate
    (model, loader)`: by default `evaluation_batch`). `model_input(batch)`: what the model is
    called on (the MulSen script: `cat([rgb, ir])`). `evaluate_last=False` skips the
    evaluation after the last step (it changes no weight). Returns the model's state_dict."""
    import utils
    from torch import nn
    from torch.utils.data import DataLoader
    if evaluate is None:
        def evaluate(model, loader):
            return utils.evaluation_batch(model, loader, "cpu", max_ratio=0.01, resize_mask=256)
    trainable = nn.ModuleList([model.bottleneck, model.decoder])
    it = 0
    for epoch in range(int(np.ceil(total_iters / len(train_dataloader)))):
        model.train()
        for batch in train_dataloader:
            en, de = model(model_input(batch))
            p = min(0.9 * it / 1000, 0.9)
            loss = utils.global_cosine_hm_percent(en, de, p=p, factor=0.1)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(trainable.parameters(), max_norm=0.1)
            optimizer.step()
            lr_scheduler.step()
            if (it + 1) % every == 0 and (evaluate_last or it + 1 < total_iters):
                for test_data in test_data_list:
                    test_dataloader = DataLoader(test_data, batch_size=batch_size, shuffle=False,
                                                 num_workers=0)
                    evaluate(model, test_dataloader)
                model.train()
            it += 1
            if it == total_iters:
                break
    return model.state_dict()


# ----------------------------------------------------------------------------- Dinomaly2

def layer_norm_plain(d: torch.Tensor) -> torch.Tensor:
    """Over channels, biased variance, eps 1e-8, no affine (Dinomaly2's recentering)."""
    mu = d.mean(-1, keepdim=True)
    var = ((d - mu) ** 2).mean(-1, keepdim=True)
    return (d - mu) / torch.sqrt(var + 1e-8)


def plain_encoder_blocks(encoder, x: torch.Tensor, last: int = 9) -> list[torch.Tensor]:
    """The outputs of encoder blocks 0..`last`, in eval mode, without gradient."""
    with torch.no_grad():
        t = encoder.prepare_tokens(x)
        outs = []
        for blk in encoder.blocks[:last + 1]:
            t = blk(t)
            outs.append(t)
    return outs


def plain_dinomaly2_decoder(model, h: torch.Tensor) -> list[torch.Tensor]:
    """Dinomaly2's bottleneck in eval mode, Linear(C, 256), Linear(256, 4C), GELU,
    Linear(4C, C), then every decoder block; the decoder outputs reversed."""
    first, rest = model.bottleneck
    h = rest[3](torch.nn.functional.gelu(rest[0](first[0](h))))
    dec = []
    for blk in model.decoder:
        h = h + blk.attn(blk.norm1(h))
        h = h + blk.mlp(blk.norm2(h))
        dec.append(h)
    return dec[::-1]


def tokens_to_map(m: torch.Tensor) -> torch.Tensor:
    """B, N, C -> B, C, side, side."""
    side = int(m.shape[1] ** 0.5)
    return m.transpose(1, 2).reshape(m.shape[0], m.shape[2], side, side)


def plain_group_maps(kept, dec, groups, encoder_side, decoder_side):
    """Per group the means of the kept encoder layers and of the (reversed) decoder outputs,
    `encoder_side` / `decoder_side` applied to them, as maps: (encoder maps, decoder maps)."""
    mean = lambda layers, g: torch.stack([layers[i] for i in g]).mean(0)  # noqa: E731
    return ([tokens_to_map(encoder_side(mean(kept, g))) for g in groups],
            [tokens_to_map(decoder_side(mean(dec, g))) for g in groups])


def assert_maps_close(got, expected) -> None:
    assert [g.shape for g in got] == [e.shape for e in expected]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def assert_runtime_equals_torch(runner, torch_pipeline, batches, side: int, tol: float = 1e-4) -> None:
    """An exported pipeline run by `runner` (numpy out) gives torch's maps `B×1×side×side` and
    scores for every batch, within `tol`."""
    for batch in batches:
        maps, scores = runner(batch)
        with torch.no_grad():
            ref_maps, ref_scores = torch_pipeline(batch)
        assert maps.shape == (len(batch), 1, side, side) and scores.shape == (len(batch),)
        assert np.abs(maps - ref_maps.numpy()).max() < tol
        assert np.abs(scores - ref_scores.numpy()).max() < tol


def assert_forward_equals(model, x, expected, shape) -> None:
    """`model(x)`: every map of `shape`, equal to the `expected` (encoder maps, decoder maps)."""
    en, de = model(x)
    assert [e.shape for e in en + de] == [shape] * (len(en) + len(de))
    assert_maps_close(en + de, sum(expected, []))


def assert_trained_like(ours_path, reference: dict, encoder: str) -> None:
    """The model.pth at `ours_path` equals the `reference` state_dict to the bit, and the
    reference moved away from a fresh Dinomaly2 build (no comparison of two initial states)."""
    import models
    import utils
    ours = torch.load(ours_path, weights_only=True)
    assert ours.keys() == reference.keys()
    changed = [k for k in ours if not torch.equal(ours[k], reference[k])]
    assert not changed, changed[:5]
    utils.setup_seed(1)
    fresh = models.build_dinomaly2(encoder, "random").state_dict()
    assert not torch.equal(fresh["decoder.0.attn.qkv.weight"], reference["decoder.0.attn.qkv.weight"])
