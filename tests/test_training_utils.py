"""Loss, optimizer and schedule against hand-computed values."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import utils


def groups(seed=0, B=3, C=8, H=4, W=5):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(B, C, H, W, generator=g) for _ in range(2)]
    b = [torch.randn(B, C, H, W, generator=g).requires_grad_() for _ in range(2)]
    return a, b


def plain_loss(a, b):
    """One cosine per image over C×H×W, batch mean, mean over groups."""
    total = 0
    for x, y in zip(a, b):
        total = total + (1 - F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1)).mean()
    return total / len(a)


def test_global_cosine_is_a_sum_over_groups():
    a, b = groups()
    assert torch.allclose(utils.global_cosine(a, b), 2 * plain_loss(a, b))
    x = torch.randn(2, 3, 4, 4)
    assert utils.global_cosine([x], [x]).abs() < 1e-6


@pytest.mark.parametrize("p,factor", [(0.9, 0.1), (0.5, 0.0), (0.3, 0.25)])
def test_hard_mining_gradients(p, factor):
    a, b = groups()
    loss = utils.global_cosine_hm_percent(a, b, p=p, factor=factor)
    loss.backward()
    hm_grads = [t.grad.clone() for t in b]
    a2, b2 = groups()
    ref = plain_loss(a2, b2)
    ref.backward()
    assert torch.allclose(loss, ref)  # the value is the plain loss
    for x, y, g_hm, g in zip(a, b, hm_grads, (t.grad for t in b2)):
        d = 1 - F.cosine_similarity(x, y.detach(), dim=1)  # B, H, W
        k = int(d.numel() * (1 - p))
        thresh = torch.sort(d.flatten(), descending=True).values[k - 1]  # k-th largest
        easy = (d < thresh).unsqueeze(1).expand_as(g)
        assert 0 < easy[:, 0].sum() < d.numel()
        assert torch.equal(g_hm[easy], g[easy] * factor)
        assert torch.equal(g_hm[~easy], g[~easy])


def test_p_zero_scales_nothing():
    a, b = groups(seed=3)
    utils.global_cosine_hm_percent(a, b, p=0.0, factor=0.1).backward()
    a2, b2 = groups(seed=3)
    plain_loss(a2, b2).backward()
    for t, u in zip(b, b2):
        assert torch.equal(t.grad, u.grad)


def test_encoder_side_gets_no_gradient():
    a, b = groups()
    a = [t.requires_grad_() for t in a]
    utils.global_cosine_hm_percent(a, b, p=0.9, factor=0.1).backward()
    assert all(t.grad is None for t in a)


def stable_adamw_oracle(w, grads, lrs, betas=(0.9, 0.999), eps=1e-8, wd=1e-4, clip=1.0):
    """The reference's StableAdamW update rule in float64 numpy, step by step."""
    w = w.astype(np.float64).copy()
    m = np.zeros_like(w); v = np.zeros_like(w); vmax = np.zeros_like(w); scales = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        w *= 1 - lr * wd
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / math.sqrt(1 - betas[1] ** t) + eps
        rms = np.sqrt(np.mean((g / denom) ** 2))
        scales.append(max(1.0, rms / clip))
        step = lr / (1 - betas[0] ** t) / scales[-1]
        w -= step * m / denom
    return w, scales


@pytest.mark.parametrize("flat", [True, False])  # the flat buffers and the per-tensor form
@pytest.mark.parametrize("clip", [1.0, 0.5])
def test_stable_adamw_equals_hand_computation(clip, flat):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 4))
    # growing gradients make rms(g/denom) exceed 1 at some steps: the clipping path runs
    grads = [rng.normal(size=(5, 4)) * s for s in (1.0, 3.0, 0.1, 10.0)]
    lrs = [1e-2, 2e-2, 5e-3, 1e-2]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = utils.StableAdamW([{"params": [p]}], lr=lrs[0], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=1e-4, amsgrad=True, clip_threshold=clip, flat=flat)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr  # the schedule writes the group's lr
        p.grad = torch.tensor(g)
        opt.step()
    expected, scales = stable_adamw_oracle(w0, grads, lrs, clip=clip)
    assert max(scales) > 1.0 and min(scales) == 1.0  # both the clipped and the plain path ran
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_stable_adamw_first_step_is_clipped_sign_step():
    # step 1: denom = |g| + eps, so g/denom ≈ ±1, rms ≈ 1 and the update is ≈ lr·sign(g)
    p = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt = utils.StableAdamW([p], lr=0.1, weight_decay=0.0, amsgrad=True, eps=1e-10)
    p.grad = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, -6.0], dtype=torch.float64)
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), -0.1 * np.sign(p.grad.numpy()), rtol=1e-8)


def test_schedule_values():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=123.0)  # works with any torch optimizer
    sched = utils.WarmCosineScheduler(opt, base_value=2e-3, final_value=2e-4, total_iters=20,
                                      warmup_iters=5)
    seen = []
    for _ in range(25):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2e-3 * i / 4 for i in range(5)]  # linspace(0, base, 5): iteration 0 has lr 0
    expected += [2e-4 + 0.5 * (2e-3 - 2e-4) * (1 + math.cos(math.pi * i / 15)) for i in range(15)]
    expected += [2e-4] * 5
    assert seen[0] == 0.0
    np.testing.assert_allclose(seen, expected, rtol=1e-12, atol=1e-15)


def test_schedule_paper_defaults():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = utils.StableAdamW([p], lr=2e-3)
    sched = utils.WarmCosineScheduler(opt, 2e-3, 2e-4, 10000, warmup_iters=100)
    assert len(sched.schedule) == 10000
    assert sched.schedule[0] == 0 and sched.schedule[99] == pytest.approx(2e-3)
    assert sched.schedule[100] == pytest.approx(2e-3) and sched.schedule[-1] > 2e-4


def test_setup_seed_reproduces_all_generators():
    import random
    utils.setup_seed(1)
    a = (torch.rand(3), np.random.rand(3), random.random())
    utils.setup_seed(1)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
