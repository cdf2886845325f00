"""metrics_torch (the device path) against the numpy path of engine.metrics, scikit-learn
and the plain oracles, with torch on the CPU (and on CUDA where there is one)."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from engine import metrics, metrics_torch
from oracles import reference_f1_max, reference_pro
from test_metrics import REFERENCE_RUN, label_score_cases, on_threshold_case, synthetic_case

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def small_steps(monkeypatch):
    """Many chunks of scores and many blocks of regions on these small arrays."""
    monkeypatch.setattr(metrics_torch, "CHUNK", 100)
    monkeypatch.setattr(metrics_torch, "REGION_BLOCK", 2)


def on(device: str, *arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(6))
def test_binary_metrics_equal_the_numpy_path_and_sklearn(case, device, small_steps):
    y_true, y_score = list(label_score_cases())[case]
    expected = metrics.binary_metrics_and_threshold(y_true, y_score)
    got = metrics_torch.binary_metrics_and_threshold(*on(device, y_true, y_score))
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[3] == expected[3]  # the same float32 threshold, bit for bit
    assert got[0] == pytest.approx(roc_auc_score(y_true, y_score), abs=1e-9)
    assert got[1] == pytest.approx(average_precision_score(y_true, y_score), abs=1e-9)
    assert got[2] == pytest.approx(reference_f1_max(y_true, y_score), abs=1e-9)
    t_true, t_score = on(device, y_true, y_score)
    assert (metrics_torch.roc_auc(t_true, t_score), metrics_torch.average_precision(t_true, t_score),
            metrics_torch.f1_score_max(t_true, t_score)) == metrics_torch.binary_metrics(t_true, t_score)


@pytest.mark.parametrize("key", list(REFERENCE_RUN)[1::2])
def test_pixel_metrics_equal_the_reference_run(key, small_steps):
    expected = REFERENCE_RUN[key]
    seed, levels, int_masks = map(int, key.split(","))
    masks, amaps = synthetic_case(seed, levels=levels) if levels >= 0 else on_threshold_case(seed)
    masks = masks.astype(np.uint8) if int_masks else masks
    auroc, ap, f1, aupro = metrics_torch.pixel_metrics(*on("cpu", masks, amaps))
    assert aupro == pytest.approx(expected["aupro"], abs=1e-12)
    assert (auroc, ap, f1) == pytest.approx((expected["auroc"], expected["ap"], expected["f1"]), abs=1e-12)
    assert metrics_torch.compute_pro(*on("cpu", masks, amaps)) == aupro


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,levels", [(40, 0), (41, 7), (42, 1000)])
def test_pixel_metrics_equal_the_numpy_path_and_the_oracle(seed, levels, device, small_steps):
    masks, amaps = synthetic_case(seed, n=5, h=20, w=24, levels=levels)
    amaps[2] -= 0.5  # negative scores
    expected = metrics.pixel_metrics(masks, amaps)
    got = metrics_torch.pixel_metrics(*on(device, masks, amaps))
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[3] == pytest.approx(reference_pro(masks, amaps), abs=1e-9)
    assert np.array_equal(metrics_torch.pro_thresholds(on(device, amaps)[0]), metrics.pro_thresholds(amaps))


def test_counts_at_equal_searchsorted(small_steps):
    rng = np.random.default_rng(5)
    scores = np.round(rng.standard_normal(3000) * 20).astype(np.float32) / 4  # ties
    queries = np.unique(np.concatenate([scores[::9], [-100, 0.1, 100]]).astype(np.float32))
    below, at_most = metrics_torch.counts_at(*on("cpu", scores, queries))
    ordered = np.sort(scores)
    assert np.array_equal(below.numpy(), np.searchsorted(ordered, queries, "left"))
    assert np.array_equal(at_most.numpy(), np.searchsorted(ordered, queries, "right"))


def test_undefined_cases_and_bad_input():
    masks, amaps = synthetic_case(43, n=3, h=16, w=16)
    t_masks, t_maps = on("cpu", masks, amaps)
    assert all(math.isnan(v) for v in metrics_torch.pixel_metrics(torch.zeros_like(t_masks), t_maps))
    assert math.isnan(metrics_torch.compute_pro(torch.ones_like(t_masks), t_maps))
    constant = torch.full_like(t_maps, 0.5)
    assert math.isnan(metrics_torch.compute_pro(t_masks, constant))
    assert metrics_torch.pixel_metrics(t_masks, constant)[:3] == pytest.approx(
        metrics.binary_metrics(masks.ravel(), np.full(masks.size, 0.5, np.float32)), abs=1e-12)
    with pytest.raises(ValueError):
        metrics_torch.compute_pro(t_masks.float() * 0.5, t_maps)  # not 0/1
    with pytest.raises(ValueError):
        metrics_torch.binary_metrics(torch.zeros(4, dtype=torch.bool), torch.arange(4.0))  # one class
    broken = t_maps.clone()
    broken[0, 0, 0] = math.nan
    with pytest.raises(ValueError):
        metrics_torch.pixel_metrics(t_masks, broken)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks_from_the_host_and_uint8():
    """The multi-view evaluation's layout: maps on CUDA, masks uint8 (on either side)."""
    masks, amaps = synthetic_case(44, n=4, h=32, w=32)
    expected = metrics.pixel_metrics(masks, amaps)
    maps = torch.from_numpy(amaps).cuda()
    for m in (torch.from_numpy(masks.astype(np.uint8)), torch.from_numpy(masks.astype(np.uint8)).cuda()):
        assert metrics_torch.pixel_metrics(m, maps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", ["numpy1", "numpy2"])
@pytest.mark.parametrize("case", ["synthetic", "on_threshold"])
def test_pixel_metrics_and_threshold_equal_the_numpy_path(case, rule, device, small_steps):
    """The evaluation's one pixel pass (four metrics and the pixel threshold) on the device
    equals the numpy one, with either rule for AUPRO's thresholds."""
    masks, amaps = synthetic_case(5, levels=0) if case == "synthetic" else on_threshold_case(2)
    expected = metrics.pixel_metrics_and_threshold(masks, amaps, threshold_rule=rule)
    got = metrics_torch.pixel_metrics_and_threshold(*on(device, masks, amaps), threshold_rule=rule)
    assert got[:4] == pytest.approx(expected[:4], abs=1e-12)
    assert got[4] == expected[4]  # the same float32 threshold, bit for bit
    empty = np.zeros_like(masks)
    assert math.isnan(metrics_torch.pixel_metrics_and_threshold(*on(device, empty, amaps))[0])
    assert metrics_torch.pixel_metrics_and_threshold(*on(device, empty, amaps))[4] is None


def test_an_evaluation_on_the_device_equals_the_host_one():
    """`--metrics_on_device` (EvalSpec.device): a class's metrics and thresholds computed with
    torch on the device equal the host's (the thresholds bit for bit); the tiny run's flag
    reaches the evaluation's spec."""
    from engine.eval_spec import EvalSpec
    from engine.evaluation import Evaluation
    from engine.maps import EvalMaps
    masks, amaps = synthetic_case(11, levels=0)
    maps = EvalMaps(amaps, masks, amaps.reshape(len(amaps), -1).max(1),
                    masks.reshape(len(masks), -1).any(1), [f"{i}.png" for i in range(len(masks))])
    host = Evaluation(spec=EvalSpec()).add("c", maps)
    device = Evaluation(spec=EvalSpec(device="cpu")).add("c", maps)
    assert device.metrics == pytest.approx(host.metrics, abs=1e-12)
    assert device.thresholds == host.thresholds
    assert not math.isnan(host.metrics[6])
