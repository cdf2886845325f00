"""hist_metrics (ADEval's histogram pixel metrics, the Dinomaly2 multi-view default) against
a plain oracle written from their description, and against ADEval itself when the adeval
package is installed (it is not a requirement)."""
import math

import numpy as np
import pytest
import torch

from engine.hist_metrics import HistogramAccumulator, region_weights
from oracles import histogram_metrics_oracle
from synth import ellipse_masks


def multiview_case(seed: int, n: int = 6, h: int = 32, w: int = 40):
    """Masks with elliptic regions (one image without, a region of one pixel, two regions
    touching only diagonally, a region on the border) and float32 maps: noise, raised on
    the regions, with repeated values (ties at the maximum)."""
    rng = np.random.default_rng(seed)
    masks = ellipse_masks(rng, n, h, w, divisor=5)
    masks[1, 0, 0] = True  # area 1: weight 1, as the normal pixels
    masks[1, 1, 1] = False
    masks[2, 5:8, 5:8] = True
    masks[2, 8, 8] = True  # diagonal contact: one region
    masks[n - 1, :, -2:] = True
    amaps = rng.random((n, h, w)) * 0.6 + masks * 0.5 * rng.random((n, 1, 1))
    amaps = np.round(amaps * 4000) / 4000  # ties
    amaps.flat[rng.integers(0, amaps.size, 5)] = amaps.max()  # the maximum several times
    return masks, amaps.astype(np.float32)


def summary(maps, masks, smin, smax, batch: int = 4) -> dict[str, float]:
    acc = HistogramAccumulator(smin, smax)
    for start in range(0, len(maps), batch):
        acc.add_anomap_batch(maps[start:start + batch], masks[start:start + batch])
    return acc.summary()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_plain_oracle(seed):
    masks, amaps = multiview_case(seed)
    smin, smax = float(amaps.min()), float(amaps.max())  # as the preview passes them
    got = summary(torch.from_numpy(amaps), torch.from_numpy(masks.astype(np.uint8)), smin, smax)
    expected = histogram_metrics_oracle(amaps, masks, smin, smax)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.5 < got["p_auroc"] <= 1 and 0 < got["p_aupro"] <= 1


def test_scores_outside_the_range_and_other_strips():
    """smin / smax inside the data: scores below and above are counted in the end bins."""
    masks, amaps = multiview_case(3)
    low, high = np.quantile(amaps, [0.05, 0.9])
    acc = HistogramAccumulator(float(low), float(high), nstrips=37)
    acc.add_anomap_batch(amaps, masks)
    assert acc.summary() == pytest.approx(histogram_metrics_oracle(amaps, masks, low, high, strips=37), abs=1e-12)


def test_batches_inputs_and_shapes_do_not_change_the_values():
    masks, amaps = multiview_case(4)
    smin, smax = float(amaps.min()), float(amaps.max())
    whole = summary(amaps, masks, smin, smax, batch=len(amaps))
    assert summary(amaps, masks, smin, smax, batch=1) == whole  # bit for bit
    assert summary(torch.from_numpy(amaps)[:, None], torch.from_numpy(masks)[:, None], smin, smax) == whole
    acc = HistogramAccumulator(smin, smax)
    for amap, mask in zip(amaps, masks):
        acc.add_anomap(amap, mask.astype(np.uint8) * 255)  # any nonzero value is anomalous
    assert acc.summary() == whole


def test_maps_are_resized_to_the_masks():
    masks, amaps = multiview_case(5, h=32, w=32)
    small = torch.from_numpy(amaps)[:, None, ::2, ::2].contiguous()
    resized = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    smin, smax = float(resized.min()), float(resized.max())
    assert summary(small, masks, smin, smax) == summary(resized, masks, smin, smax)


def test_region_weights_are_one_over_the_area():
    mask = np.zeros((6, 7), bool)
    mask[0:2, 0:3] = True  # area 6
    mask[2, 3] = True  # diagonal to it: the same region, area 7
    mask[5, 6] = True  # area 1
    regions, weights = region_weights(mask)  # the mask's pixels in row-major order
    assert np.array_equal(weights[regions], np.array([1 / 7] * 7 + [1], np.float32))
    assert region_weights(np.zeros((3, 3), bool))[0].size == 0


def test_bad_input():
    with pytest.raises(ValueError):
        HistogramAccumulator(1.0, 1.0)
    acc = HistogramAccumulator(0.0, 1.0)
    with pytest.raises(ValueError):
        acc.add_anomap_batch(np.zeros((2, 4, 4), np.float32), np.zeros((3, 4, 4), bool))


def adeval_on_the_cpu(monkeypatch):
    """ADEval's EvalAccumulatorCuda with its histograms on the CPU: its accumulator
    hard-codes device='cuda', and on the CPU torch.histc refuses its float64 `out=` (CUDA
    computes in the input's dtype and copies, done the same way here)."""
    from multiprocessing.reduction import ForkingPickler
    from types import CodeType, ModuleType
    # importing adeval makes every multiprocessing pickler reduce functions, code objects
    # and modules its own way, process-wide: undone here so that no other test sees it
    override = ForkingPickler.__dict__.get("reducer_override")
    added = [kind for kind in (CodeType, ModuleType) if kind not in ForkingPickler._extra_reducers]
    try:
        pytest.importorskip("adeval")
    finally:
        if override is not None:
            ForkingPickler.reducer_override = override
        elif "reducer_override" in ForkingPickler.__dict__:
            del ForkingPickler.reducer_override
        for kind in added:
            ForkingPickler._extra_reducers.pop(kind, None)
    from adeval import cuda_mem_effic, iterative_cuda

    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # numpy 2.4 removed it
    real_zeros, real_histc = torch.zeros, torch.histc

    def zeros(*args, device=None, **kwargs):
        return real_zeros(*args, device="cpu", **kwargs)

    def histc(values, bins, min, max, out):
        out.copy_(real_histc(values, bins=bins, min=min, max=max))
        return out
    monkeypatch.setattr(cuda_mem_effic.torch, "zeros", zeros)
    monkeypatch.setattr(cuda_mem_effic.torch, "histc", histc)
    return iterative_cuda.EvalAccumulator


@pytest.mark.parametrize("seed", [6, 7])
def test_equals_adeval(seed, monkeypatch):
    accumulator = adeval_on_the_cpu(monkeypatch)
    masks, amaps = multiview_case(seed)
    smin, smax = float(amaps.min()), float(amaps.max())
    theirs = accumulator(smin, smax, smin, smax)
    theirs.add_anomap_batch(torch.from_numpy(amaps), torch.from_numpy(masks.astype(np.uint8)))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = theirs.summary()
        recall, precision, _ = theirs._pixel_acc.pr()
    monkeypatch.undo()
    ours = summary(torch.from_numpy(amaps), torch.from_numpy(masks.astype(np.uint8)), smin, smax)
    for key in ("p_auroc", "p_aupr", "p_aupro"):
        assert ours[key] == expected[key], key  # bit for bit
    f1 = 2 * precision * recall / (precision + recall + 1e-10)  # the preview's F1max on ADEval's curve
    assert ours["p_f1max"] == f1.max()
    assert not math.isnan(ours["p_aupro"])
