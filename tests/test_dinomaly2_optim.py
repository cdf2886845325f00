"""Dinomaly2's optimizer and schedule: StableAdamW's non-finite rule against a per-tensor
oracle (float64 numpy), `dinomaly2_optimizer`'s parameter groups, and
`WarmupCosineScheduler`'s values."""
import copy
import math
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from test_fast_paths import SYNCS, aten_ops, host_reads
from torch import nn

import utils
from models.build2 import dinomaly2_bottleneck, dinomaly2_decoder

SHAPES = [[(3, 5), (1200,)], [(7,), (40, 30), (2, 2)], [(5,), (6, 3)]]  # three groups
LRS = [2e-4, 2e-3, 2e-3]


def oracle_step(ws, states, grads, lrs, betas=(0.9, 0.999), eps=1e-10, wd=1e-4, clip=1.0):
    """The preview's loop, written plainly: groups in order, parameters in order; at the
    first gradient with a NaN or ±Inf, stop (that one and all later ones untouched);
    otherwise the StableAdamW update without AMSGrad, with the parameter's own step count."""
    for ws_g, st_g, g_g, lr in zip(ws, states, grads, lrs):
        for w, st, g in zip(ws_g, st_g, g_g):
            if not np.isfinite(g).all():
                return
            st["step"] += 1
            t = st["step"]
            w *= 1 - lr * wd
            st["m"] = betas[0] * st["m"] + (1 - betas[0]) * g
            st["v"] = betas[1] * st["v"] + (1 - betas[1]) * g * g
            denom = np.sqrt(st["v"]) / math.sqrt(1 - betas[1] ** t) + eps
            scale = max(1.0, np.sqrt(np.mean((g / denom) ** 2)) / clip)
            w -= lr / (1 - betas[0] ** t) / scale * st["m"] / denom


def oracle_clip(grads, max_norm):
    """`clip_grad_norm_` written out: coefficient `max_norm / (total + 1e-6)`, at most 1
    (a NaN total keeps it NaN: every gradient becomes NaN)."""
    total = math.sqrt(sum(float(np.sum(g * g)) for gs in grads for g in gs))
    coef = max_norm / (total + 1e-6)
    coef = 1.0 if coef > 1.0 else coef
    with np.errstate(invalid="ignore"):  # 0 · Inf = NaN, as in torch
        return [[g * coef for g in gs] for gs in grads]


def make(flat: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    ws = [[rng.normal(size=s) for s in shapes] for shapes in SHAPES]
    params = [[nn.Parameter(torch.tensor(w)) for w in g] for g in ws]
    opt = utils.StableAdamW([{"params": p, "lr": lr} for p, lr in zip(params, LRS)],
                            lr=2e-3, eps=1e-10, weight_decay=1e-4, amsgrad=False, flat=flat,
                            skip_nonfinite=True)
    states = [[{"step": 0, "m": np.zeros_like(w), "v": np.zeros_like(w)} for w in g] for g in ws]
    return ws, params, opt, states, rng


def spoil(grads, where: tuple[int, int], value: float, rng) -> None:
    g = grads[where[0]][where[1]]
    g.flat[rng.integers(g.size)] = value


def assert_matches(params, opt, ws, states):
    for p_g, w_g, st_g in zip(params, ws, states):
        for p, w, st in zip(p_g, w_g, st_g):
            np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-12, atol=1e-14)
            state = opt.state[p]
            assert int(state.get("step", 0)) == st["step"]
            if st["step"]:
                np.testing.assert_allclose(state["exp_avg"].numpy(), st["m"], rtol=1e-12,
                                           atol=1e-300)
                np.testing.assert_allclose(state["exp_avg_sq"].numpy(), st["v"], rtol=1e-12,
                                           atol=1e-300)


# step by step: (where the bad gradient is, its value) or None; clipped or not
SCHEDULE = [None, ((1, 1), float("nan")), None, ((0, 0), float("inf")), ((2, 1), -float("inf")),
            None, ((1, 0), float("nan"))]


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("clip", [None, 0.1])
def test_nonfinite_rule_equals_the_per_tensor_oracle(flat, clip):
    """With clipping, a NaN makes every gradient NaN (nothing updated), a lone ±Inf makes
    the others 0 (the tensors before it take a zero-gradient step)."""
    ws, params, opt, states, rng = make(flat)
    for k, bad in enumerate(SCHEDULE):
        grads = [[rng.normal(size=w.shape) * (1 + 3 * k) for w in g] for g in ws]
        if bad is not None:
            spoil(grads, bad[0], bad[1], rng)
        if clip is not None:
            for p_g, g_g in zip(params, grads):
                for p, g in zip(p_g, g_g):
                    p.grad = torch.tensor(g)
            torch.nn.utils.clip_grad_norm_([p for g in params for p in g], clip)
            grads = oracle_clip(grads, clip)
        else:
            for p_g, g_g in zip(params, grads):
                for p, g in zip(p_g, g_g):
                    p.grad = torch.tensor(g)
        oracle_step(ws, states, grads, LRS)
        opt.step()
        assert_matches(params, opt, ws, states)
    steps = [st["step"] for g in states for st in g]
    assert len(set(steps)) > 1 and max(steps) > 0  # the per-tensor counts differ
    assert opt.nonfinite_skips.item() == 4  # the device counter of abandoned steps


def test_lone_inf_after_clipping_gives_a_zero_gradient_step_before_it():
    ws, params, opt, states, rng = make(True)
    for p_g in params:
        for p in p_g:
            p.grad = torch.full_like(p, 0.5)
    grads = [[np.full(w.shape, 0.5) for w in g] for g in ws]
    spoil(grads, (1, 1), float("inf"), rng)
    params[1][1].grad = torch.tensor(grads[1][1])
    torch.nn.utils.clip_grad_norm_([p for g in params for p in g], 0.1)
    assert torch.all(params[0][0].grad == 0) and torch.isnan(params[1][1].grad).sum() == 1
    before = [[p.detach().clone() for p in g] for g in params]
    opt.step()
    moved = [[not torch.equal(p, b) for p, b in zip(pg, bg)] for pg, bg in zip(params, before)]
    assert moved == [[True, True], [True, False, False], [False, False]]
    torch.testing.assert_close(params[0][0].detach(), before[0][0] * (1 - 2e-4 * 1e-4))


def test_guarded_flat_step_equals_plain_form_and_never_waits_for_the_device():
    """Dinomaly2 ViT-S's 102 trainable tensors in the preview's three groups, a NaN in the
    decoder: the flat step equals the per-tensor one (float32 round-off) and reads nothing
    on the host (on a GPU: no host-device synchronisation)."""
    torch.manual_seed(0)
    model = nn.Module()
    model.bottleneck = dinomaly2_bottleneck(384, 0.4)
    model.decoder = dinomaly2_decoder(384, 6)
    twin = copy.deepcopy(model)
    flat = utils.dinomaly2_optimizer(model)
    plain = utils.dinomaly2_optimizer(twin, flat=False)
    params, twins = list(model.parameters()), list(twin.parameters())
    assert len(params) == 102
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=g) * 10 ** float(torch.randn(()))
            q.grad = p.grad.clone()
        if step == 2:
            params[40].grad[0, 1] = twins[40].grad[0, 1] = float("nan")
        if step < 3:  # the profiler sees the aten operators, the mode the host reads
            ops = aten_ops(flat.step)
            assert not any(ops[name] for name in SYNCS)
        else:
            assert host_reads(flat.step) == Counter()
        plain.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-9)
        assert int(flat.state[p]["step"]) == plain.state[q]["step"]
    assert [int(flat.state[p]["step"]) for p in params][38:42] == [4, 4, 3, 3]


def tiny_dinomaly2() -> nn.Module:
    model = nn.Module()
    model.bottleneck = dinomaly2_bottleneck(16, 0.4)
    model.decoder = dinomaly2_decoder(16, 2, depth=2)
    return model


def test_dinomaly2_optimizer_groups_and_settings():
    model = tiny_dinomaly2()
    expected = [list(model.bottleneck[0].parameters()), list(model.bottleneck[1].parameters()),
                list(model.decoder.parameters())]
    opt = utils.dinomaly2_optimizer(model)
    assert [g["lr"] for g in opt.param_groups] == [2e-4, 2e-3, 2e-3]
    for group, params in zip(opt.param_groups, expected):
        assert len(group["params"]) == len(params)
        assert all(a is b for a, b in zip(group["params"], params))
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-10
        assert group["weight_decay"] == 1e-4 and group["amsgrad"] is False
    assert opt.clip_threshold == 1.0 and opt.skip_nonfinite
    two = utils.dinomaly2_optimizer(tiny_dinomaly2(), first_layer_lr=None)
    assert [g["lr"] for g in two.param_groups] == [2e-3, 2e-3]
    assert [len(g["params"]) for g in two.param_groups] == [6, 2 * 12]


def lrs_seen(initial, warmup, total, ratio, iters):
    params = [nn.Parameter(torch.zeros(1)) for _ in initial]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, initial)], lr=1.0)
    sched = utils.WarmupCosineScheduler(opt, warmup, total, final_ratio=ratio)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(iters):
            seen.append([g["lr"] for g in opt.param_groups])  # what step t uses
            opt.step()
            sched.step()
    return np.array(seen)


@pytest.mark.parametrize("ratio,last", [(1.0, 2e-3), (0.1, None), (0.01, None)])
def test_warmup_cosine_values(ratio, last):
    T = 40_000
    seen = lrs_seen(LRS, 100, T, ratio, T)
    assert seen.shape == (T, 3)
    t = np.arange(T)
    cosine = 0.5 * (1 + np.cos(np.pi * (t - 100) / (T - 100)))
    plain = np.where(t < 100, t / 100, ratio + (1 - ratio) * cosine)
    for g, L in enumerate(LRS):
        np.testing.assert_allclose(seen[:, g], L * plain, rtol=1e-12, atol=0)
    big = seen[:, 1]
    assert big[0] == 0 and big[1] == pytest.approx(2e-5, rel=1e-12)
    assert big[99] == pytest.approx(1.98e-3, rel=1e-12) and big[100] == pytest.approx(2e-3)
    assert big[T - 1] == pytest.approx(last if last else 2e-3 * ratio, rel=1e-6)
    np.testing.assert_allclose(seen[:, 0], seen[:, 1] / 10, rtol=1e-12)
    if ratio == 1.0:
        assert np.all(big[100:] == 2e-3)  # constant after the warm-up
