"""thresholds.py and metrics.binary_metrics_and_threshold: the F1-max thresholds against a
brute-force oracle (every partition `score > t` tried), the same seven metrics as
evaluation.metrics_of (evaluation.class_metrics), pooled thresholds, calibration, thresholds.json."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine import metrics
from engine.evaluation import class_metrics as metrics_and_thresholds
from engine.evaluation import metrics_of, worst_cases
from engine.maps import EvalMaps
from engine.metrics import binary_metrics, binary_metrics_and_threshold
from engine.thresholds import PooledThresholds, ThresholdsFile, calibrated_threshold, read_thresholds


def f1_at(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> float:
    """The reference's F1 formula for the partition `score > threshold`, which must be the
    same whether compared in float64 or in the scores' dtype (numpy's rule for a Python float)."""
    predicted = np.asarray(y_score, dtype=np.float64) > threshold
    assert np.array_equal(predicted, np.asarray(y_score) > threshold)
    tp = int(np.sum(predicted & y_true))
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted.sum(), tp / y_true.sum()
    return 2 * precision * recall / (precision + recall + 1e-7)


def brute_force_best(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The best F1 over every partition `score > t` (t below each distinct score)."""
    values = np.unique(np.asarray(y_score, dtype=np.float64))
    return max(f1_at(y_true, y_score, np.nextafter(v, -np.inf)) for v in values)


def cases():
    rng = np.random.default_rng(3)
    for levels in (0, 40, 3):  # continuous, ties, a few distinct values
        y = rng.random(800) < 0.25
        s = rng.random(800) + 0.5 * y
        if levels:
            s = np.round(s * levels) / levels
        yield y, s.astype(np.float32)
    y = rng.random(300) < 0.5
    yield y, (rng.random(300) + 0.2 * y)  # float64 scores
    yield np.array([True, True, False]), np.array([0.1, 0.2, 0.3], np.float32)  # best: all positive
    yield np.array([True, False, True]), np.full(3, 0.5, np.float32)  # one score for all
    one = np.float32(1.0)  # two adjacent float32 values: no float32 between them
    yield np.array([False, True]), np.array([one, np.nextafter(one, np.float32(2))])


@pytest.mark.parametrize("case", range(7))
def test_threshold_gives_the_reported_f1_max(case):
    y_true, y_score = list(cases())[case]
    auroc, ap, f1, threshold = binary_metrics_and_threshold(y_true, y_score)
    assert (auroc, ap, f1) == binary_metrics(y_true, y_score)  # identical, not approximately
    assert f1_at(y_true, y_score, threshold) == pytest.approx(f1, abs=1e-12)
    assert f1 == pytest.approx(brute_force_best(y_true, y_score), abs=1e-12)
    # the midpoint rule: the threshold sits strictly between the scores on either side
    above = y_score[y_score > threshold]
    below = y_score[y_score <= threshold]
    assert above.size and threshold < above.min()
    assert np.asarray(threshold, y_score.dtype) == threshold  # a value of the scores' dtype
    if below.size:
        assert below.max() <= threshold
        middle = (float(below.max()) + float(above.min())) / 2
        assert threshold == pytest.approx(middle, rel=1e-6) or threshold == below.max()


def test_threshold_across_chunks(monkeypatch):
    y_true, y_score = list(cases())[1]
    whole = binary_metrics_and_threshold(y_true, y_score)
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    monkeypatch.setattr(metrics, "_SPLIT_CHUNK", 11)
    assert binary_metrics_and_threshold(y_true, y_score) == whole


def eval_maps(seed: int, n: int = 8, side: int = 16, anomalous: bool = True) -> EvalMaps:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2 == 1 if anomalous else np.zeros(n, bool)
    masks = np.zeros((n, side, side), bool)
    masks[labels, 4:9, 5:11] = True
    maps = (rng.random((n, side, side)) * 0.5 + masks * rng.random((n, 1, 1)) * 0.6).astype(np.float32)
    scores = maps.reshape(n, -1).max(axis=1)
    return EvalMaps(maps, masks, scores, labels, [f"/data/c/test/{'bad' if a else 'good'}/{i:03d}.png"
                                                  for i, a in enumerate(labels)])


@pytest.mark.parametrize("anomalous", [True, False])
def test_metrics_and_thresholds_equal_metrics_of(anomalous):
    maps = eval_maps(0, anomalous=anomalous)
    values, thr = metrics_and_thresholds(maps)
    expected = metrics_of(maps)
    assert np.array_equal(np.array(values), np.array(expected), equal_nan=True)
    assert thr.scale == (float(maps.maps.min()), float(maps.maps.max()))
    assert (thr.n_normal, thr.n_anomalous) == (int((~maps.labels).sum()), int(maps.labels.sum()))
    if not anomalous:  # no anomaly: nothing to choose a threshold from
        assert thr.image is None and thr.pixel is None and math.isnan(values[2])
        return
    assert f1_at(maps.labels, maps.scores, thr.image) == pytest.approx(values[2], abs=1e-12)
    assert f1_at(maps.masks.ravel(), maps.maps.ravel(), thr.pixel) == pytest.approx(values[5], abs=1e-12)
    assert thr.image_f1 == values[2] and thr.pixel_f1 == values[5]


def test_pooled_thresholds():
    parts = [eval_maps(1), eval_maps(2, n=6), eval_maps(3)]
    pooled = PooledThresholds()
    for part in parts:
        pooled.add(part)
    result = pooled.result()
    labels = np.concatenate([p.labels for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    masks = np.concatenate([p.masks.ravel() for p in parts])
    pixels = np.concatenate([p.maps.ravel() for p in parts])
    # images: exact, over every class's images
    assert result.image_f1 == binary_metrics(labels, scores)[2]
    assert f1_at(labels, scores, result.image) == pytest.approx(result.image_f1, abs=1e-12)
    # pixels: the recorded F1 is the exact F1 of `map > threshold`, close to the exact best
    assert f1_at(masks, pixels, result.pixel) == pytest.approx(result.pixel_f1, abs=1e-12)
    assert result.pixel_f1 <= binary_metrics(masks, pixels)[2] + 1e-12
    assert result.pixel_f1 == pytest.approx(binary_metrics(masks, pixels)[2], abs=2e-3)
    assert result.scale == (float(pixels.min()), float(pixels.max()))
    assert (result.n_normal, result.n_anomalous) == (int((~labels).sum()), int(labels.sum()))
    # accumulated separately then merged: the same
    first, second = PooledThresholds(), PooledThresholds()
    first.add(parts[0])
    for part in parts[1:]:
        second.add(part)
    first.merge(second)
    assert first.result() == result


def test_pooled_histogram_keys_keep_the_order():
    from engine.thresholds import _key_value, _keys
    values = np.array([-2.0, -1e-8, -0.0, 0.0, 1e-30, 0.25, 0.2500001, 1.0, 2.0], np.float32)
    keys = _keys(values)
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert [_key_value(int(k)) for k in keys] == [float(v) for v in values]


def test_calibrated_threshold():
    scores = np.array([0.3, 0.1, 0.2, 0.5, 0.4], np.float32)
    assert calibrated_threshold(scores, 0.5) == pytest.approx(0.3)
    assert calibrated_threshold(scores, 1.0) == pytest.approx(0.5)  # every normal image is OK
    assert calibrated_threshold(scores, 0.99) == np.quantile(scores.astype(np.float64), 0.99)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            calibrated_threshold(scores, bad)


def test_worst_cases():
    maps = eval_maps(4)
    threshold = float(np.median(maps.scores))
    chosen = worst_cases(maps, threshold, per_kind=2)
    fn = [c for c in chosen if c.kind == "fn"]
    fp = [c for c in chosen if c.kind == "fp"]
    missed = sorted(float(s) for s, a in zip(maps.scores, maps.labels) if a and s <= threshold)
    alarms = sorted((float(s) for s, a in zip(maps.scores, maps.labels) if not a and s > threshold), reverse=True)
    assert [c.score for c in fn] == missed[:2] and [c.rank for c in fn] == list(range(1, len(fn) + 1))
    assert [c.score for c in fp] == alarms[:2]
    for c in chosen:
        i = maps.paths.index(c.path)
        assert np.array_equal(c.amap, maps.maps[i]) and np.array_equal(c.mask, maps.masks[i])
    assert worst_cases(maps, None) == []


def test_thresholds_file_merges_classes(tmp_path):
    path = tmp_path / "thresholds.json"
    entry = {"image": 0.5, "image_f1": 0.9, "pixel": 0.4, "pixel_f1": 0.6, "scale": [0.1, 0.9],
             "n_normal": 2, "n_anomalous": 2, "iteration": 5, "checkpoint": "aaa/model.pth"}
    thresholds = ThresholdsFile(path, {"encoder": "x"})
    thresholds.update({"aaa": entry})
    thresholds.update({"bbb": {**entry, "image": 0.7}})
    data = read_thresholds(path)
    assert list(data["classes"]) == ["aaa", "bbb"] and data["classes"]["bbb"]["image"] == 0.7
    assert data["decision"] == "anomalous = score > threshold" and "pooled" not in data
    thresholds.update({"aaa": {**entry, "image": 0.6}}, {**entry, "classes": ["aaa"]})
    data = read_thresholds(path)
    assert data["classes"]["aaa"]["image"] == 0.6 and data["classes"]["bbb"]["image"] == 0.7
    assert data["pooled"]["classes"] == ["aaa"]
    thresholds.update({"bbb": entry})  # no pooled given: the old one stays
    assert read_thresholds(path)["pooled"]["classes"] == ["aaa"]
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError):
        read_thresholds(path)
