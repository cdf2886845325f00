"""metrics.py against plain oracles written here, scikit-learn, brute force, and values
computed by the reference's own code in its own environment."""
import hashlib
import json
import math
from pathlib import Path
from statistics import mean

import numpy as np
import pytest
from skimage import measure
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from engine import metrics, pro_regions, rank_counts
from engine.metrics import (average_precision, binary_metrics, compute_pro, f1_score_max, pixel_metrics,
                            pro_thresholds, roc_auc)
from synth import ellipse_masks
from oracles import brute_force_f1_max, preview_pro, reference_f1_max, reference_pro


# ----------------------------------------------------------------------------- synthetic data

def synthetic_case(seed: int, n: int = 6, h: int = 32, w: int = 40, levels: int = 0):
    """Masks (N x H x W bool) with elliptic regions, image 0 without anomaly, a region
    touching the border in the last image; maps = noise + a per-image bump on the
    regions, quantised to `levels` values per unit when levels > 0 (ties). All in
    float64 from Generator.random, so numpy 1.x and 2.x build the same arrays."""
    rng = np.random.default_rng(seed)
    masks = ellipse_masks(rng, n, h, w)
    masks[n - 1, :3, :] = True
    amaps = rng.random((n, h, w)) * 0.6 + masks * 0.5 * rng.random((n, 1, 1))
    if levels:
        amaps = np.round(amaps * levels) / levels
    return masks, amaps.astype(np.float32)


def on_threshold_case(seed: int, n: int = 4, h: int = 24, w: int = 24):
    """Maps whose values sit exactly on the float32-rounded thresholds of
    np.arange(0, 1, 1/200): `amap > th` in float32 (the reference's numpy) and in
    float64 (numpy 2 running the reference's code) disagree on many pixels."""
    masks, _ = synthetic_case(seed, n=n, h=h, w=w)
    rng = np.random.default_rng(seed + 100)
    grid = np.arange(np.float32(0), np.float32(1), np.float64(np.float32(1) - np.float32(0)) / 200)
    amaps = grid[(rng.random((n, h, w)) * 200).astype(np.int64)].astype(np.float32)
    amaps[masks] = np.minimum(amaps[masks] + np.float32(0.25), np.float32(0.995))
    amaps[0, 0, 0], amaps[0, 0, 1] = 0, 1
    return masks, amaps


# Values returned by the reference's own utils.compute_pro / f1_score_max (verbatim,
# pandas DataFrame.append and np.bool included) and scikit-learn's roc_auc_score /
# average_precision_score, run under numpy 1.23.5, pandas 1.5.3, scikit-learn 1.2.2,
# scikit-image 0.20.0 on the cases above. Key: "seed,levels,int masks";
# levels -1 = on_threshold_case.
REFERENCE_RUN = json.loads((Path(__file__).parent / "data" / "metrics_reference_run.json").read_text())


@pytest.mark.parametrize("key", REFERENCE_RUN)
def test_equals_the_reference_run(key):
    expected = REFERENCE_RUN[key]
    seed, levels, int_masks = map(int, key.split(","))
    masks, amaps = synthetic_case(seed, levels=levels) if levels >= 0 else on_threshold_case(seed)
    digest = hashlib.sha1(masks.tobytes() + amaps.tobytes()).hexdigest()
    assert digest == expected["sha1"], "numpy built different synthetic data than the reference run"
    assert len(pro_thresholds(amaps)) == expected["n_thresholds"]
    aupro = compute_pro(masks.astype(np.uint8) if int_masks else masks, amaps)
    assert aupro == pytest.approx(expected["aupro"], abs=1e-12)
    auroc, ap, f1 = binary_metrics(masks.ravel(), amaps.ravel())
    assert auroc == pytest.approx(expected["auroc"], abs=1e-12)
    assert ap == pytest.approx(expected["ap"], abs=1e-12)
    assert f1 == pytest.approx(expected["f1"], abs=1e-12)


def test_on_threshold_maps_follow_the_float32_comparison():
    """Pins the reference numpy's float32 comparison: numpy 2 running the reference's
    code (float64 comparison, float32 delta) gives a visibly different value here."""
    masks, amaps = on_threshold_case(0)
    min_th, max_th = amaps.min(), amaps.max()
    numpy2_reading = []
    for th in np.arange(min_th, max_th, (max_th - min_th) / 200):
        binary = amaps > th
        pros = [binary[i][r.coords[:, 0], r.coords[:, 1]].sum() / r.area
                for i, m in enumerate(masks) for r in measure.regionprops(measure.label(m))]
        numpy2_reading.append((mean(pros), (binary & ~masks).sum() / (~masks).sum()))
    pro, fpr = np.array(numpy2_reading).T
    keep = fpr < 0.3
    other = auc(fpr[keep] / fpr[keep].max(), pro[keep])
    assert abs(compute_pro(masks, amaps) - other) > 1e-4
    assert compute_pro(masks, amaps) == pytest.approx(reference_pro(masks, amaps), abs=1e-12)


# ----------------------------------------------------------------------------- compute_pro

@pytest.mark.parametrize("seed,levels,dtype", [
    (10, 0, bool), (11, 0, np.int64), (12, 3, bool), (13, 12, np.float32), (14, 1000, np.uint8)])
def test_compute_pro_equals_the_plain_procedure(seed, levels, dtype):
    masks, amaps = synthetic_case(seed, n=5, h=20, w=24, levels=levels)
    amaps[2] = amaps[2].mean()  # one constant map among the others
    expected = reference_pro(masks, amaps)
    assert compute_pro(masks.astype(dtype), amaps) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("case", ["synthetic", "on_threshold"])
def test_compute_pro_numpy2_rule_equals_the_preview_procedure(case):
    """The Dinomaly2 preview's AUPRO, run under numpy 2 (float32 step, float64 comparisons),
    to float64 round-off; and the two rules do differ on maps at the thresholds."""
    masks, amaps = synthetic_case(7, levels=0) if case == "synthetic" else on_threshold_case(3)
    expected = preview_pro(masks, amaps)
    assert compute_pro(masks, amaps, threshold_rule="numpy2") == pytest.approx(expected, abs=1e-12)
    assert pixel_metrics(masks, amaps, threshold_rule="numpy2")[3] == pytest.approx(expected, abs=1e-12)
    if case == "on_threshold":
        assert compute_pro(masks, amaps) == pytest.approx(reference_pro(masks, amaps), abs=1e-12)
        assert abs(compute_pro(masks, amaps) - expected) > 1e-9
    with pytest.raises(ValueError, match="numpy1, numpy2"):
        compute_pro(masks, amaps, threshold_rule="numpy3")


def test_compute_pro_with_201_thresholds():
    seed = next(s for s in range(100) if len(pro_thresholds(synthetic_case(s, n=3, h=16, w=16)[1])) == 201)
    masks, amaps = synthetic_case(seed, n=3, h=16, w=16)
    thresholds = np.arange(amaps.min(), amaps.max(), np.float64(amaps.max() - amaps.min()) / 200)
    assert len(thresholds) == 201
    assert np.array_equal(pro_thresholds(amaps), thresholds)
    assert compute_pro(masks, amaps) == pytest.approx(reference_pro(masks, amaps), abs=1e-9)


def test_compute_pro_single_region_touching_the_border_and_diagonal_contact():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 12, 12), dtype=bool)
    masks[1, 0:4, 8:12] = True  # one region in the corner
    masks[1, 4, 7] = True  # touches it only diagonally: same region with 8-connectivity
    assert measure.label(masks[1]).max() == 1
    amaps = (rng.random((3, 12, 12)) + masks * rng.random((3, 12, 12))).astype(np.float32)
    assert compute_pro(masks, amaps) == pytest.approx(reference_pro(masks, amaps), abs=1e-9)


def test_compute_pro_in_several_chunks(monkeypatch):
    """Stacks of images processed in steps give the same sums as one step."""
    masks, amaps = synthetic_case(21, n=7, h=16, w=20, levels=9)
    whole = compute_pro(masks, amaps)
    monkeypatch.setattr(pro_regions, "STEP_PIXELS", 2 * 16 * 20)
    assert compute_pro(masks, amaps) == pytest.approx(whole, abs=1e-12)
    assert whole == pytest.approx(reference_pro(masks, amaps), abs=1e-9)


def test_compute_pro_perfect_and_inverted():
    masks, _ = synthetic_case(7, n=4, h=16, w=16)
    rng = np.random.default_rng(7)
    perfect = (rng.random(masks.shape) * 0.1 + masks).astype(np.float32)
    assert compute_pro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert compute_pro(masks, -perfect) < 0.05


def test_compute_pro_undefined_cases_give_nan():
    masks, amaps = synthetic_case(8, n=3, h=16, w=16)
    assert math.isnan(compute_pro(np.zeros_like(masks), amaps))  # no anomalous pixel
    assert math.isnan(compute_pro(np.ones_like(masks), amaps))  # no normal pixel
    assert math.isnan(compute_pro(masks, np.full(amaps.shape, 0.5, np.float32)))  # constant maps
    with pytest.raises(ValueError):
        compute_pro(masks.astype(np.float32) * 0.5, amaps)  # not a 0/1 mask
    amaps[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        compute_pro(masks, amaps)


def test_thresholds_below_equals_searchsorted_at_the_edges():
    """Scores exactly on, just above and just below every threshold, and thresholds
    that float32 rounding makes equal."""
    for low, high in [(0.0, 1.0), (0.1234, 0.98765), (1.0, 1.0 + 3e-7), (-0.5, 2.0)]:
        amaps = np.array([low, high], dtype=np.float32)
        thresholds = pro_thresholds(amaps).astype(np.float32)
        scores = np.concatenate([thresholds, np.nextafter(thresholds, np.float32(np.inf)),
                                 np.nextafter(thresholds, np.float32(-np.inf)), amaps])
        scores = np.clip(scores, amaps[0], amaps[1]).astype(np.float32)
        expected = np.searchsorted(thresholds, scores, side="left")
        assert np.array_equal(metrics._thresholds_below(thresholds, scores), expected)


# ----------------------------------------------------------------------------- AUROC, AP, F1

def label_score_cases():
    rng = np.random.default_rng(0)
    for levels in (0, 50, 4):  # continuous, many ties, a few distinct values
        y = rng.random(3000) < 0.2
        s = rng.random(3000) + 0.4 * y
        if levels:
            s = np.round(s * levels) / levels  # positive and negative scores tie
        yield y, s.astype(np.float32)
    yield np.array([0, 1, 1, 0, 1]), np.array([0.3, 0.3, 0.9, 0.1, 0.3], np.float32)  # int labels
    yield np.array([1.0, 0.0]), np.array([0.2, 0.7])  # float labels, inverted
    yield np.array([True, False, True]), np.full(3, 0.5, np.float32)  # constant score


@pytest.mark.parametrize("case", range(6))
def test_binary_metrics_equal_sklearn_and_brute_force(case):
    y_true, y_score = list(label_score_cases())[case]
    auroc, ap, f1 = binary_metrics(y_true, y_score)
    assert auroc == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-9)
    assert ap == pytest.approx(average_precision_score(y_true, y_score), abs=1e-9)
    assert f1 == pytest.approx(reference_f1_max(y_true, y_score), abs=1e-9)
    assert f1 == pytest.approx(brute_force_f1_max(y_true != 0, y_score), abs=1e-9)
    assert (roc_auc(y_true, y_score), average_precision(y_true, y_score), f1_score_max(y_true, y_score)) \
        == (auroc, ap, f1)


def test_binary_metrics_in_many_chunks(monkeypatch):
    """Ties that straddle chunk borders, in the split and in the rank pass."""
    y_true, y_score = list(label_score_cases())[2]
    whole = binary_metrics(y_true, y_score)
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    monkeypatch.setattr(metrics, "_SPLIT_CHUNK", 13)
    assert binary_metrics(y_true, y_score) == pytest.approx(whole, abs=1e-12)
    assert whole[0] == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-9)


def test_average_precision_is_added_in_positive_chunks(monkeypatch):
    """AP's float64 rounding is pinned (a run's results.csv keeps its last digits): numpy's
    sum of the precision at each positive, ties repeated, over runs of `_CHUNK` positives in
    ascending score order, then those sums added exactly; written out plainly here."""
    y_true, y_score = list(label_score_cases())[2]
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    labels, scores = np.asarray(y_true).ravel() != 0, np.asarray(y_score).ravel()
    positives = np.sort(scores[labels])
    negatives = np.sort(scores[~labels])
    tp = positives.size - np.searchsorted(positives, positives, side="left")
    fp = negatives.size - np.searchsorted(negatives, positives, side="left")
    precision = tp / (tp + fp)
    chunks = [float(precision[k:k + 7].sum()) for k in range(0, positives.size, 7)]
    assert binary_metrics(y_true, y_score)[1] == math.fsum(chunks) / positives.size
    assert pixel_metrics(labels.reshape(1, 1, -1), scores.reshape(1, 1, -1))[1] == \
        math.fsum(chunks) / positives.size


def test_perfect_and_inverted_detectors():
    rng = np.random.default_rng(5)
    y = rng.random(500) < 0.3
    s = rng.random(500) + 2.0 * y
    auroc, ap, f1 = binary_metrics(y, s)
    assert (auroc, ap) == (1.0, 1.0)
    assert f1 == pytest.approx(1.0, abs=1e-7)  # 2 / (2 + 1e-7)
    auroc, ap, f1 = binary_metrics(y, -s)
    assert auroc == 0.0
    assert ap < 0.35 and f1 < 0.5  # no better than the prevalence / all-positive F1
    assert f1 == pytest.approx(reference_f1_max(y, -s), abs=1e-12)


def test_binary_metrics_reject_what_sklearn_rejects():
    with pytest.raises(ValueError):
        binary_metrics(np.zeros(4, bool), np.arange(4.0))  # one class
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 1, 1]), np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))  # not binary


# ----------------------------------------------------------------------------- the slab path, pixel_metrics

@pytest.fixture
def slab_path(monkeypatch):
    """rank_counts' slab machinery (used above 4 M scores) on these small arrays, in many
    chunks; the values must not change."""
    monkeypatch.setattr(rank_counts, "SORT_BELOW", 0)
    monkeypatch.setattr(rank_counts, "CHUNK", 500)


@pytest.mark.parametrize("key", list(REFERENCE_RUN)[::2])
def test_slab_path_equals_the_reference_run(key, slab_path):
    expected = REFERENCE_RUN[key]
    seed, levels, int_masks = map(int, key.split(","))
    masks, amaps = synthetic_case(seed, levels=levels) if levels >= 0 else on_threshold_case(seed)
    masks = masks.astype(np.uint8) if int_masks else masks
    aupro = compute_pro(masks, amaps)
    auroc, ap, f1 = binary_metrics(masks.ravel(), amaps.ravel())
    assert aupro == pytest.approx(expected["aupro"], abs=1e-12)
    assert (auroc, ap, f1) == pytest.approx((expected["auroc"], expected["ap"], expected["f1"]), abs=1e-12)
    assert pixel_metrics(masks, amaps) == (auroc, ap, f1, aupro)  # one pass, the same values


@pytest.mark.parametrize("case", range(6))
def test_slab_path_binary_metrics_equal_sklearn(case, slab_path):
    y_true, y_score = list(label_score_cases())[case]
    auroc, ap, f1, threshold = metrics.binary_metrics_and_threshold(y_true, y_score)
    assert auroc == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-9)
    assert ap == pytest.approx(average_precision_score(y_true, y_score), abs=1e-9)
    assert f1 == pytest.approx(reference_f1_max(y_true, y_score), abs=1e-9)
    predicted = y_score > threshold  # the F1-max partition
    tp = np.sum(predicted & (y_true != 0))
    assert 2 * tp / (predicted.sum() + np.sum(y_true != 0)) == pytest.approx(f1, abs=1e-6)


def test_pixel_metrics_equal_the_separate_metrics():
    masks, amaps = synthetic_case(31, n=6, h=24, w=20, levels=25)
    amaps[1] -= 0.7  # negative scores: the general keys
    expected = (*binary_metrics(masks.ravel(), amaps.ravel()), compute_pro(masks, amaps))
    assert pixel_metrics(masks, amaps) == expected
    assert expected[3] == pytest.approx(reference_pro(masks, amaps), abs=1e-9)


def test_pixel_metrics_undefined_cases():
    masks, amaps = synthetic_case(32, n=3, h=16, w=16)
    assert all(math.isnan(v) for v in pixel_metrics(np.zeros_like(masks), amaps))  # no anomaly
    assert all(math.isnan(v) for v in pixel_metrics(np.ones_like(masks), amaps))  # no normal pixel
    auroc, ap, f1, aupro = pixel_metrics(masks, np.full(amaps.shape, 0.5, np.float32))  # constant
    assert (auroc, ap, f1) == binary_metrics(masks.ravel(), np.full(masks.size, 0.5, np.float32))
    assert math.isnan(aupro)
    for bad in (np.nan, np.inf):
        broken = amaps.copy()
        broken[0, 0, 0] = bad
        with pytest.raises(ValueError):
            pixel_metrics(masks, broken)
