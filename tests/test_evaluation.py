"""evaluation.py: the blur, the anomaly maps, and evaluation_batch against the
reference's procedure written plainly here (lists of tensors, scikit-learn, the
plain AUPRO loop)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler

from engine import maps
from engine.maps import EvalMaps
from oracles import reference_f1_max, reference_pro
from recipes.anomaly_map import AnomalyPipeline, cal_anomaly_maps, get_gaussian_kernel
from utils import evaluation_batch


def collect_maps(model, loader, device, max_ratio=0, resize_mask=None, **kwargs) -> EvalMaps:
    """The maps of `model` (its anomaly pipeline at `resize_mask`, scores by `max_ratio`)."""
    return maps.collect_maps(AnomalyPipeline(model, resize_mask, max_ratio), loader, device,
                             resize_mask, **kwargs)


# ----------------------------------------------------------------------------- blur

def test_gaussian_kernel_weights():
    blur = get_gaussian_kernel(kernel_size=5, sigma=4)
    w = blur.weight
    assert w.shape == (1, 1, 5, 5) and not w.requires_grad and blur.bias is None
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    g = torch.exp(-(torch.arange(5.0) - 2) ** 2 / (2 * 16))
    separable = torch.outer(g, g) / torch.outer(g, g).sum()
    assert torch.allclose(w[0, 0], separable, atol=1e-7)
    assert get_gaussian_kernel(3, 2, channels=4).weight.shape == (4, 1, 3, 3)


def test_gaussian_blur_pads_with_zeros():
    blur = get_gaussian_kernel(kernel_size=5, sigma=4)
    with torch.no_grad():
        out = blur(torch.ones(1, 1, 9, 9))
    assert out.shape == (1, 1, 9, 9)
    assert out[0, 0, 4, 4].item() == pytest.approx(1.0, abs=1e-6)  # interior unchanged
    corner = blur.weight[0, 0, 2:, 2:].sum()  # only the in-image quarter of the kernel
    assert out[0, 0, 0, 0].item() == pytest.approx(corner.item(), abs=1e-6)
    assert out[0, 0, 0, 0] < out[0, 0, 0, 4] < 1  # the border darkens


def test_gaussian_kernel_draws_from_the_cpu_generator_like_a_conv2d():
    torch.manual_seed(0)
    get_gaussian_kernel(kernel_size=5, sigma=4)
    after_kernel = torch.rand(3)
    torch.manual_seed(0)
    nn.Conv2d(1, 1, kernel_size=5, groups=1, bias=False, padding=2)
    after_conv = torch.rand(3)
    torch.manual_seed(0)
    untouched = torch.rand(3)
    assert torch.equal(after_kernel, after_conv)
    assert not torch.equal(after_kernel, untouched)


# ----------------------------------------------------------------------------- maps

def test_cal_anomaly_maps_on_hand_built_features():
    torch.manual_seed(1)
    f = torch.randn(2, 8, 3, 4)
    same, _ = cal_anomaly_maps([f, f], [f.clone(), 2 * f], out_size=6)
    assert same.shape == (2, 1, 6, 6)
    assert same.abs().max() < 1e-6
    opposite, groups = cal_anomaly_maps([f], [-f], out_size=(6, 10))
    assert opposite.shape == (2, 1, 6, 10) and len(groups) == 1
    assert torch.allclose(opposite, torch.full_like(opposite, 2.0), atol=1e-6)
    half, groups = cal_anomaly_maps([f, f], [f, -f], out_size=5)  # mean of 0 and 2
    assert torch.allclose(half, torch.ones_like(half), atol=1e-6)
    assert torch.allclose(groups[1], torch.full_like(groups[1], 2.0), atol=1e-6)


def test_cal_anomaly_maps_interpolates_with_aligned_corners():
    torch.manual_seed(2)
    fs, ft = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    a_map, _ = cal_anomaly_maps([fs], [ft], out_size=5)
    d = 1 - (fs * ft).sum(1) / (fs.norm(dim=1) * ft.norm(dim=1))  # 1, 3, 3
    # align_corners=True on 3 -> 5: even output pixels are the inputs, odd ones midpoints
    assert torch.allclose(a_map[0, 0, ::2, ::2], d[0], atol=1e-6)
    assert torch.allclose(a_map[0, 0, 1, 0], (d[0, 0, 0] + d[0, 1, 0]) / 2, atol=1e-6)


# ----------------------------------------------------------------------------- evaluation_batch

class FakeModel(nn.Module):
    """Stands for ViTill: `(en, de)`, two groups of `B x 6 x h x w` features made
    deterministically from the image, the decoder missing bright spots."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(3, 6, kernel_size=1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.linspace(-1, 1, 18).view(6, 3, 1, 1))
            self.mix.bias.copy_(torch.linspace(0.5, 1.5, 6))

    def forward(self, x):
        f = self.mix(F.avg_pool2d(x, 4))  # B, 6, h, w
        g = self.mix(F.avg_pool2d(x.clamp(max=0.6), 4))
        return [f, f.roll(1, dims=1)], [g, g.roll(1, dims=1) + 0.1]


def tiny_test_set(n=7, size=32, bool_labels=False, channels=1):
    """`(img, gt, label, path)` items: textures, half of them with a bright square whose
    mask has fractional (resized-looking) edges."""
    gen = torch.Generator().manual_seed(3)
    items = []
    for i in range(n):
        img = torch.rand(3, size, size, generator=gen) * 0.5
        gt = torch.zeros(channels, size, size)
        anomalous = i % 2 == 1
        if anomalous:
            top, left = 4 + 3 * i, 20 - 2 * i
            img[:, top:top + 6, left:left + 7] += 0.5
            gt[-1, top:top + 6, left:left + 7] = 1.0
            gt[-1, top - 1, left:left + 7] = 0.3  # fractional edge
            gt[-1, top:top + 6, left + 7] = 0.7
        label = torch.tensor(anomalous) if bool_labels else torch.tensor(int(anomalous))
        items.append((img, gt, label, f"class/test/{'bad' if anomalous else 'good'}/{i:03d}.png"))
    return items


def reference_evaluation(model, dataloader, max_ratio, resize_mask, gt_threshold=0.0):
    """The reference's evaluation_batch written plainly: lists of tensors and torch.cat,
    scikit-learn and the plain AUPRO loop."""
    model.eval()
    blur = get_gaussian_kernel(kernel_size=5, sigma=4)
    gt_px, pr_px, gt_sp, pr_sp = [], [], [], []
    with torch.no_grad():
        for img, gt, label, _ in dataloader:
            en, de = model(img)
            anomaly_map, _ = cal_anomaly_maps(en, de, img.shape[-1])
            if resize_mask is not None:
                anomaly_map = F.interpolate(anomaly_map, size=resize_mask, mode="bilinear", align_corners=False)
                gt = F.interpolate(gt, size=resize_mask, mode="nearest")
            anomaly_map = blur(anomaly_map)
            gt = gt > gt_threshold
            if gt.shape[1] > 1:
                gt = torch.max(gt, dim=1, keepdim=True)[0]
            gt_px.append(gt)
            pr_px.append(anomaly_map)
            gt_sp.append(label)
            flat = anomaly_map.flatten(1)
            if max_ratio == 0:
                pr_sp.append(flat.max(dim=1)[0])
            else:
                top = torch.sort(flat, dim=1, descending=True)[0][:, :int(flat.shape[1] * max_ratio)]
                pr_sp.append(top.mean(dim=1))
    gt_px = torch.cat(gt_px)[:, 0].numpy()
    pr_px = torch.cat(pr_px)[:, 0].numpy()
    gt_sp = torch.cat(gt_sp).flatten().numpy()
    pr_sp = torch.cat(pr_sp).flatten().numpy()
    aupro = reference_pro(gt_px, pr_px)
    gt_px, pr_px = gt_px.ravel(), pr_px.ravel()
    return [roc_auc_score(gt_sp, pr_sp), average_precision_score(gt_sp, pr_sp), reference_f1_max(gt_sp, pr_sp),
            roc_auc_score(gt_px, pr_px), average_precision_score(gt_px, pr_px), reference_f1_max(gt_px, pr_px),
            aupro]


@pytest.mark.parametrize("max_ratio,resize_mask", [(0.01, 16), (0, None)])
def test_evaluation_batch_equals_the_plain_procedure(max_ratio, resize_mask):
    model = FakeModel()
    loader = DataLoader(tiny_test_set(), batch_size=3)
    expected = reference_evaluation(model, loader, max_ratio, resize_mask)
    model.train()
    results = evaluation_batch(model, loader, "cpu", max_ratio=max_ratio, resize_mask=resize_mask)
    assert not model.training  # left in eval mode, as the reference
    assert len(results) == 7 and all(type(v) is float for v in results)
    assert results == pytest.approx(expected, abs=1e-9)
    assert 0.5 < results[0] <= 1 and 0.5 < results[3] <= 1  # the fake model does find the spots


def test_collect_maps_arrays_and_label_types():
    items = tiny_test_set()
    model = FakeModel()
    result = collect_maps(model, DataLoader(items, batch_size=2), "cpu", max_ratio=0.01, resize_mask=16)
    assert isinstance(result, EvalMaps)
    assert result.maps.shape == (7, 16, 16) and result.maps.dtype == np.float32
    assert result.masks.shape == (7, 16, 16) and result.masks.dtype == bool
    assert result.scores.shape == (7,) and result.scores.dtype == np.float32
    assert result.labels.tolist() == [i % 2 == 1 for i in range(7)]
    assert result.paths == [item[3] for item in items]
    assert np.array_equal(result.masks.any(axis=(1, 2)), result.labels)
    with_bools = collect_maps(model, DataLoader(tiny_test_set(bool_labels=True), batch_size=2), "cpu",
                              max_ratio=0.01, resize_mask=16)
    assert np.array_equal(with_bools.labels, result.labels)
    assert np.array_equal(with_bools.maps, result.maps)
    # a sampler that visits part of the set: only what was seen is returned
    part = collect_maps(model, DataLoader(items, batch_size=2, sampler=SubsetRandomSampler([0, 3, 4])), "cpu")
    assert part.maps.shape[0] == 3 and len(part.paths) == 3


def test_gt_threshold_on_fractional_masks():
    model = FakeModel()
    loader = DataLoader(tiny_test_set(), batch_size=4)
    at_0 = collect_maps(model, loader, "cpu", gt_threshold=0.0)
    at_half = collect_maps(model, loader, "cpu", gt_threshold=0.5)
    gts = torch.stack([item[1] for item in tiny_test_set()])[:, 0].numpy()
    assert np.array_equal(at_0.masks, gts > 0)
    assert np.array_equal(at_half.masks, gts > 0.5)
    assert at_0.masks.sum() > at_half.masks.sum()  # the 0.3 and 0.7 edges, then only the 0.7 one
    r0 = evaluation_batch(model, loader, "cpu", gt_threshold=0.0)
    r5 = evaluation_batch(model, loader, "cpu", gt_threshold=0.5)
    assert r0[:3] == r5[:3]  # image metrics do not use the masks
    assert r0[3:] != r5[3:]
    assert r5 == pytest.approx(reference_evaluation(model, loader, 0, None, gt_threshold=0.5), abs=1e-9)


def test_multichannel_masks_are_anomalous_where_any_channel_is():
    model = FakeModel()
    items = tiny_test_set(channels=3)  # the defect is drawn in the last channel only
    result = collect_maps(model, DataLoader(items, batch_size=4), "cpu")
    expected = np.stack([item[1].numpy().max(axis=0) > 0 for item in items])
    assert expected.any() and np.array_equal(result.masks, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluation_on_cuda_matches_cpu():
    model = FakeModel()
    loader = DataLoader(tiny_test_set(), batch_size=3)
    on_cpu = collect_maps(model, loader, "cpu", max_ratio=0.01, resize_mask=16)
    on_gpu = collect_maps(model.cuda(), loader, "cuda", max_ratio=0.01, resize_mask=16)
    assert np.allclose(on_gpu.maps, on_cpu.maps, atol=1e-5)
    assert np.allclose(on_gpu.scores, on_cpu.scores, atol=1e-5)
    assert np.array_equal(on_gpu.masks, on_cpu.masks)
    results = evaluation_batch(model, loader, torch.device("cuda"), max_ratio=0.01, resize_mask=16)
    assert all(math.isfinite(v) for v in results)
