"""CUDA-only checks of the GPU fast paths (skipped without a GPU; `benchmarks/gpu_bench.sh` runs them:
`python3 -m pytest tests -m cuda`). What the CPU tests cannot see: hidden host-device
synchronisations (CUDA's sync debug mode), fp16 linear attention on tensor cores, the flat
optimizer on the GPU, the device generator on resume, inductor's dropout masks on CUDA, the
current device of `--device cuda:1`, pinned batches."""
from __future__ import annotations

import copy

import pytest
import torch

from engine import distributed, generators
from recipes.dinomaly import Config
from engine.step import INDUCTOR_OPTIONS, setup_training, train_step
from models.vision_transformer import bMlp
from test_fast_paths import todays_attention, two_optimizers, vitb_attention

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ENCODER = "dinov2reg_vit_small_14"


def tiny_training(**changes) -> tuple:
    cfg = Config(encoder=ENCODER, encoder_weights="random", image_size=112, crop_size=98,
                 batch_size=4, device="cuda", **changes)
    torch.manual_seed(0)
    return cfg, setup_training(cfg, torch.device("cuda"))


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_training_step_never_waits_for_the_gpu(monkeypatch, amp):
    """Forward, loss, backward, clipping and the optimizer step under CUDA's sync debug mode
    ('error': any synchronising call raises); only the logged loss's `.item()` waits."""
    cfg, t = tiny_training(amp=amp)
    img = torch.randn(4, 3, 98, 98, device="cuda")
    train_step(t, img, 5, cfg)  # first step: state made, grads adopted
    monkeypatch.setattr(distributed, "mean_over_ranks", lambda loss: loss)  # no .item()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for it in (6, 2000):  # hard mining off, then at full strength
            loss = train_step(t, img, it, cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


def test_fp16_linear_attention_on_tensor_cores():
    attn, x = vitb_attention(3.0)
    attn, x = attn.cuda(), x.cuda()
    with torch.no_grad():
        fp32 = attn(x)
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = attn(x)
            before = todays_attention(attn, x)
    per_token = (fp16.float() - fp32).norm(dim=-1) / fp32.norm(dim=-1)
    assert torch.isfinite(fp16).all() and per_token.max() < 0.01
    assert ((before.float() - fp32).norm(dim=-1) / fp32.norm(dim=-1)).max() > 0.01


def test_flat_stable_adamw_on_the_gpu():
    params, flat, twins, plain = two_optimizers(device="cuda")
    assert flat._flat_groups[0].param_buffer.is_cuda
    g = torch.Generator(device="cuda").manual_seed(0)
    for scale in (1.0, 100.0, 0.01):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, device="cuda", generator=g) * scale
            q.grad = p.grad.clone()
        flat.step()
        plain.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-8)


def dropout_mask(device: str) -> torch.Tensor:
    return torch.nn.functional.dropout(torch.ones(4096, device=device), 0.2) == 0


def test_resume_restores_the_gpu_generator():
    device = "cuda:0"
    torch.cuda.manual_seed_all(7)
    saved = generators.rng_state(device)
    first = dropout_mask(device)
    dropout_mask(device)  # moves on
    generators.set_rng_state(saved, device)
    assert torch.equal(dropout_mask(device), first)
    if torch.cuda.device_count() > 1:  # into another index (same model: exact)
        other = "cuda:1"
        if torch.cuda.get_device_name(1) == torch.cuda.get_device_name(0):
            generators.set_rng_state(saved, other)
            with torch.cuda.device(1):
                assert torch.equal(dropout_mask(other).cpu(), first.cpu())


def test_compiled_dropout_draws_the_eager_masks_on_the_gpu():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = bMlp(64, 256, 64, drop=0.2).cuda().train()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="inductor", options=INDUCTOR_OPTIONS)

    def run(block):
        torch.cuda.manual_seed(3)
        x = torch.randn(4, 50, 64, device="cuda", requires_grad=True)
        y = block(x)
        y.square().sum().backward()
        return y.detach(), x.grad, torch.cuda.get_rng_state()

    (y, gx, rng), (y0, gx0, rng0) = run(compiled), run(eager)
    assert torch.equal(rng, rng0) and torch.equal(y == 0, y0 == 0)
    torch.testing.assert_close(y, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx, gx0, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_an_indexed_gpu_is_the_current_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = torch.cuda.current_device()
    try:
        with distributed.launched("cuda:1"):
            assert torch.cuda.current_device() == 1
            assert torch.ones(1, pin_memory=True).is_pinned()
    finally:
        torch.cuda.set_device(before)


def test_training_batches_are_pinned(tmp_path):
    import synth
    from engine.data import build_datasets, make_train_loader
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa",), n_train=4)
    cfg = Config(data_path=str(data), classes=("aaa",), image_size=64, crop_size=56,
                 batch_size=2, num_workers=1, device="cuda")
    train_set, _ = build_datasets(cfg, cfg.classes)
    img, _ = next(iter(make_train_loader(cfg, train_set)))
    assert img.is_pinned()
