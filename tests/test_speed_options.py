"""The speed options on CPU: SDPA at the real token count, --amp, --cache_images
(through the trainer's builders), --compile (wiring; graph capture with the aot_eager
backend), the global-batch sampler against RandomSampler, and the flags in config.json.
Timing is the benchmarks' business (benchmarks/bench_train.py), not asserted here."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from engine import distributed, training_state
import models
import synth
import engine.step
from engine.cli import parse_args
from recipes.dinomaly import Config
from engine.data import build_datasets, make_train_loader
from engine.run import run, speed_options
from engine.run_folder import write_config
import utils
from test_encoder import official_vits_state_dict

ENCODER = "dinov2reg_vit_small_14"
MVTEC = ("aaa", "bbb")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 3 training images per class: 6 in all, 3 batches of 2 per epoch
    return synth.make_mvtec(tmp_path_factory.mktemp("data") / "mvtec", classes=MVTEC, n_train=3)


def tiny_config(data: Path, save_dir: Path, name: str, **overrides) -> Config:
    """Random ViT-S at 56 px, batch 2, CPU: seconds per run."""
    settings = dict(data_path=str(data), classes=MVTEC, encoder=ENCODER, encoder_weights="random",
                    image_size=64, crop_size=56, total_iters=2, batch_size=2, eval_every=2,
                    num_workers=0, device="cpu", eval_resolution=64, save_dir=str(save_dir),
                    save_name=name)
    return Config(**{**settings, **overrides})


@pytest.fixture
def recorded(monkeypatch) -> list[dict]:
    """Every call of the training loss: its value and the dtypes of its inputs."""
    calls: list[dict] = []
    loss_fn = utils.global_cosine_hm_percent

    def recording(a, b, *args, **kwargs):
        loss = loss_fn(a, b, *args, **kwargs)
        calls.append({"loss": loss.item(), "dtypes": {t.dtype for t in (*a, *b)}})
        return loss
    monkeypatch.setattr(utils, "global_cosine_hm_percent", recording)
    return calls


def trainable_weights(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if not k.startswith("encoder.")}


# ----------------------------------------------------------------------------- SDPA

def test_sdpa_equals_explicit_at_392_px(tmp_path):
    """28 × 28 patches + 5 tokens = 789, the real training size: every target block's
    attention, from the same input, and the whole encoder (spec: 1e-5 relative)."""
    sd = official_vits_state_dict(seed=1)
    torch.save(sd, tmp_path / "plain.pth")
    # larger q/k weights and full residual branches: peaked attention (softmax matters)
    peaked = {k: v * 8 if k.endswith("attn.qkv.weight") else
              torch.ones_like(v) if k.endswith("gamma") else v for k, v in sd.items()}
    torch.save(peaked, tmp_path / "peaked.pth")
    x = torch.randn(1, 3, 392, 392, generator=torch.Generator().manual_seed(0))

    model = models.build_dinomaly(ENCODER, tmp_path / "peaked.pth", dropout=0.0, device="cpu")
    with torch.no_grad():
        tokens = model.encoder.prepare_tokens(x)
        assert tokens.shape[1] == 789
        for block in model.encoder.blocks[:10]:
            h = block.norm1(tokens)
            block.attn.fused = True
            fused = block.attn(h)
            block.attn.fused = False
            explicit = block.attn(h)
            scale = explicit.abs().max().item()
            torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5 * scale)
            tokens = block(tokens)
        q, k, _ = block.attn.qkv(h).reshape(1, 789, 3, 6, 64).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) / 8).softmax(-1)
        assert weights.max(-1).values.mean() > 0.5  # far from uniform attention

    model = models.build_dinomaly(ENCODER, tmp_path / "plain.pth", dropout=0.0, device="cpu")
    fused = model.encode(x)
    for block in model.encoder.blocks:
        block.attn.fused = False
    for a, b in zip(fused, model.encode(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


# ----------------------------------------------------------------------------- amp

@pytest.mark.slow
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu(data, tmp_path, recorded, amp):
    """Mixed precision changes the forward's arithmetic only: the loss gets fp32 features,
    stays close to the fp32 loss (same weights at step 1), weights stay fp32."""
    run(tiny_config(data, tmp_path, "fp32", dropout=0.0))
    fp32 = [c["loss"] for c in recorded]
    recorded.clear()
    run(tiny_config(data, tmp_path, amp, dropout=0.0, amp=amp))
    mixed = [c["loss"] for c in recorded]
    assert len(fp32) == len(mixed) == 2
    assert all(c["dtypes"] == {torch.float32} for c in recorded)
    assert all(math.isfinite(v) for v in mixed)
    assert mixed[0] != fp32[0]  # the forward really ran in low precision ...
    assert mixed[0] == pytest.approx(fp32[0], rel=2e-2)  # ... and stayed close
    weights = trainable_weights(tmp_path / amp / "model.pth")
    assert {v.dtype for v in weights.values()} == {torch.float32}
    log = (tmp_path / amp / "log.txt").read_text()
    assert f"amp {amp}" in log.splitlines()[0]


# ----------------------------------------------------------------------------- cache

def batches(loader: DataLoader, epochs: int) -> list[torch.Tensor]:
    return [img for _ in range(epochs) for img, _label in loader]


def test_cache_images_gives_the_same_batches(data, tmp_path):
    """Through the trainer's builders, 3 epochs: cached images with a persistent worker give
    the tensors, the order and the generator state of the uncached, worker-less loader,
    which gives those of the reference's DataLoader(shuffle=True, drop_last=True)."""
    plain_cfg = tiny_config(data, tmp_path, "x")
    cached_cfg = tiny_config(data, tmp_path, "x", cache_images=True, num_workers=1)
    plain_set, _ = build_datasets(plain_cfg, MVTEC, cache_images=plain_cfg.cache_images)
    cached_set, _ = build_datasets(cached_cfg, MVTEC, cache_images=cached_cfg.cache_images)
    assert all(part.images.cache is not None for part in cached_set.datasets)
    runs = []
    for cfg, train_set in ((plain_cfg, plain_set), (cached_cfg, cached_set)):
        torch.manual_seed(3)
        loader = make_train_loader(cfg, train_set)
        assert loader.persistent_workers == (cfg is cached_cfg)
        runs.append((batches(loader, 3), torch.get_rng_state()))
    torch.manual_seed(3)
    reference = DataLoader(plain_set, batch_size=2, shuffle=True, drop_last=True)
    runs.append((batches(reference, 3), torch.get_rng_state()))
    (plain, plain_rng), (cached, cached_rng), (ref, ref_rng) = runs
    assert len(plain) == len(cached) == len(ref) == 9
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(plain, cached, ref))
    assert torch.equal(plain_rng, cached_rng) and torch.equal(plain_rng, ref_rng)
    assert not all(torch.equal(a, b) for a, b in zip(plain[:3], plain[3:6]))  # reshuffled


def test_cache_images_reaches_realiad(tmp_path):
    root = synth.make_realiad(tmp_path / "realiad", categories=("audiojack",), n_train=2)
    cfg = Config(dataset="realiad", data_path=str(root), classes=("audiojack",),
                         image_size=64, crop_size=56)
    cached, _ = build_datasets(cfg, cfg.classes, cache_images=True)
    plain, _ = build_datasets(cfg, cfg.classes)
    assert cached.datasets[0].images.cache is not None and plain.datasets[0].images.cache is None
    assert all(torch.equal(cached[i][0], plain[i][0]) for i in range(len(plain)))


# ----------------------------------------------------------------------------- sampler

@pytest.mark.parametrize("n,batch", [(10, 4), (17, 4), (16, 16)])
def test_global_batch_sampler_is_random_sampler(n, batch):
    """One process: the batches of BatchSampler(RandomSampler, drop_last=True) and the same
    generator consumption, epoch after epoch."""
    torch.manual_seed(5)
    ours = [list(distributed.GlobalBatchSampler(n, batch)) for _ in range(2)]
    ours_rng = torch.get_rng_state()
    torch.manual_seed(5)
    sampler = BatchSampler(RandomSampler(range(n)), batch, drop_last=True)
    theirs = [list(sampler) for _ in range(2)]
    assert ours == theirs and torch.equal(ours_rng, torch.get_rng_state())
    assert len(distributed.GlobalBatchSampler(n, batch)) == len(sampler) == n // batch


def test_global_batch_sampler_splits_each_batch_over_ranks():
    """Rank r takes the r-th contiguous quarter of each global batch; the same seed draw."""
    torch.manual_seed(7)
    whole = list(distributed.GlobalBatchSampler(37, 8))
    shares = []
    for rank in range(4):
        torch.manual_seed(7)
        shares.append(list(distributed.GlobalBatchSampler(37, 8, rank=rank, processes=4)))
    assert len(whole) == 4 and all(len(s) == 4 for s in shares)
    for i, batch in enumerate(whole):
        assert [j for s in shares for j in s[i]] == batch
        assert all(len(s[i]) == 2 for s in shares)


def test_global_batch_sampler_resume_and_errors():
    sampler = distributed.GlobalBatchSampler(10, 4, rank=1, processes=2)
    order = list(range(9, -1, -1))
    sampler.resume(order, 4)
    state = torch.get_rng_state()
    assert list(sampler) == [[3, 2]]  # global batch [5, 4, 3, 2]; the rest is dropped
    assert torch.equal(state, torch.get_rng_state())  # resuming draws nothing
    assert sampler.order == order
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        distributed.GlobalBatchSampler(10, 16, processes=3)
    with pytest.raises(ValueError, match="cannot resume"):
        sampler.resume(order, 3)


# ----------------------------------------------------------------------------- compile

@pytest.mark.slow
def test_compile_wiring(data, tmp_path, recorded, monkeypatch):
    """--compile compiles the blocks (graph capture checked with the aot_eager backend: the
    inductor code generation takes a minute on CPU and is left to the GPU benchmark); the
    hard-mining hook still acts (p reaches 0.9 at step 2) and the run equals the eager one;
    model.pth keeps the reference's keys."""
    torch._dynamo.reset()
    monkeypatch.setattr(engine.step, "COMPILE_BACKEND", "aot_eager")
    kw = dict(dropout=0.0, hm_ramp_iters=1, total_iters=3, eval_every=3)
    run(tiny_config(data, tmp_path, "eager", **kw))
    eager = [c["loss"] for c in recorded]
    recorded.clear()
    run(tiny_config(data, tmp_path, "compiled", compile=True, **kw))
    compiled = [c["loss"] for c in recorded]
    from torch._dynamo.utils import counters
    assert counters["stats"]["unique_graphs"] >= 3  # encoder, bottleneck, decoder blocks
    assert compiled == pytest.approx(eager, rel=1e-5)
    a = torch.load(tmp_path / "eager" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "model.pth", weights_only=True)
    assert list(a) == list(b) and not any("_orig_mod" in k for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # the hook matters here: without it (factor 1) the weights come out elsewhere
    recorded.clear()
    run(tiny_config(data, tmp_path, "nohook", compile=True, hm_factor=1.0, **kw))
    c = torch.load(tmp_path / "nohook" / "model.pth", weights_only=True)
    assert not torch.allclose(c["decoder.0.attn.qkv.weight"], b["decoder.0.attn.qkv.weight"],
                              rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- CLI

def test_flags_parse_and_reach_config_json(tmp_path):
    defaults = Config(dropout=0.4)
    cfg = parse_args(defaults, [])
    assert (cfg.amp, cfg.cache_images, cfg.compile, cfg.fused_attn) == ("none", False, False, True)
    assert (cfg.dropout, cfg.log_every) == (0.4, 100)
    argv = ["--amp", "bf16", "--cache_images", "--compile", "--explicit_attn", "--dropout", "0",
            "--log_every", "5"]
    cfg = parse_args(defaults, argv)
    assert (cfg.amp, cfg.cache_images, cfg.compile, cfg.fused_attn) == ("bf16", True, True, False)
    assert (cfg.dropout, cfg.log_every) == (0.0, 5)
    write_config(cfg, tmp_path, argv)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["amp"], saved["cache_images"], saved["compile"], saved["fused_attn"]) == \
           ("bf16", True, True, False)
    assert (saved["dropout"], saved["log_every"], saved["processes"]) == (0.0, 5, 1)
    assert saved["command"][1:] == argv
    assert speed_options(cfg, 2) == \
           ", amp bf16, explicit attention, image cache, compiled, 2 processes"
    assert speed_options(Config(), 1) == ""


@pytest.mark.parametrize("argv", [["--amp", "fp32"], ["--dropout", "1"], ["--log_every", "0"]])
def test_flags_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(Config(), argv)
    assert "error" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CUDA plumbing

def test_an_indexed_gpu_becomes_the_current_device(monkeypatch):
    """`--device cuda:1`: CUDA's context (and pinned memory) on GPU 1, not GPU 0."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for device in ("cuda:1", "cuda", "cpu"):
        with distributed.launched(device) as used:
            assert used == device
    assert calls == ["cuda:1"]


@pytest.mark.parametrize("device,workers,pin,persistent", [
    ("cuda", 2, True, True), ("cuda:1", 0, True, False), ("cpu", 2, False, True),
    ("cpu", 0, False, False)])
def test_loader_settings_in_every_configuration(data, tmp_path, device, workers, pin,
                                                persistent):
    """Pinned batches on CUDA and loader processes kept across epochs, with or without the
    image cache (the sampler replays a fresh iterator's draw: test_cache_images_…)."""
    for cache in (False, True):
        cfg = tiny_config(data, tmp_path, "x", device=device, num_workers=workers,
                          cache_images=cache)
        train_set, _ = build_datasets(cfg, MVTEC)
        loader = make_train_loader(cfg, train_set)
        assert (loader.pin_memory, loader.persistent_workers) == (pin, persistent)
        assert loader.batch_sampler.persistent_loader == persistent


def test_persistent_workers_keep_the_batches_and_generator(data, tmp_path):
    """Uncached, 2 loader processes kept across 3 epochs: the batches and the generator state
    of the reference's DataLoader(shuffle=True, drop_last=True) without workers."""
    cfg = tiny_config(data, tmp_path, "x", num_workers=2)
    train_set, _ = build_datasets(cfg, MVTEC)
    torch.manual_seed(3)
    ours = batches(make_train_loader(cfg, train_set), 3), torch.get_rng_state()
    torch.manual_seed(3)
    reference = DataLoader(train_set, batch_size=2, shuffle=True, drop_last=True)
    theirs = batches(reference, 3), torch.get_rng_state()
    assert len(ours[0]) == 9 and all(torch.equal(a, b) for a, b in zip(ours[0], theirs[0]))
    assert torch.equal(ours[1], theirs[1])


def test_tf32_flag(tmp_path):
    """--tf32: a Config field and flag, in config.json and the log line, free on --resume,
    applied both ways by setup_training (the default is full fp32)."""
    cfg = parse_args(Config(), ["--tf32"])
    assert cfg.tf32 and not parse_args(Config(), []).tf32
    write_config(cfg, tmp_path, ["--tf32"])
    assert json.loads((tmp_path / "config.json").read_text())["tf32"] is True
    assert speed_options(cfg, 1) == ", tf32"
    assert "tf32" in training_state.RESUME_FREE and "compile" in training_state.RESUME_FREE
    # the process-wide setting, restored afterwards by hand: on recent CUDA builds of torch
    # `allow_tf32` is a computed attribute that monkeypatch cannot put back
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        engine.step.set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32
        engine.step.set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
