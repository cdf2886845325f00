"""One training step and what it needs: the model, its optimizer and lr schedule
(`setup_training`), and `train_step`: forward → loss → backward → clip → step (spec §4).

The speed options act here: `--amp` (autocast around the forward; fp16 with a loss
scaler), `--compile` (every transformer block compiled in place), `--tf32` and several
processes (DistributedDataParallel, the hard-mining threshold over the global batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import models
import utils
from engine import distributed
from engine.config import AMP_DTYPES, Config

COMPILE_BACKEND = "inductor"  # --compile; tests use "aot_eager" (same capture, no code generation)
# Inductor generates its own dropout masks from seeds it draws (other numbers than eager's);
# `fallback_random` makes the compiled code call the eager dropout kernel instead: the same
# masks from the same generator in the same order, so --compile changes rounding only.
INDUCTOR_OPTIONS = {"fallback_random": True}


def compile_blocks(model: models.ViTill) -> None:
    """`torch.compile` every encoder block, the bottleneck and every decoder block, in place
    (`nn.Module.compile`: the state_dict keys stay the reference's). Blocks of one kind share
    their compiled code, so compilation costs one block per kind (evaluation, in eval mode
    without gradients, compiles its own variants); the loss's gradient hooks sit on the
    decoder outputs, outside the compiled code. Dropout draws as in eager mode
    (INDUCTOR_OPTIONS)."""
    options = {"options": INDUCTOR_OPTIONS} if COMPILE_BACKEND == "inductor" else {}
    for block in [*model.encoder.blocks, *model.bottleneck, *model.decoder]:
        block.compile(backend=COMPILE_BACKEND, **options)


def set_tf32(enabled: bool) -> None:
    """--tf32: CUDA float32 matmuls on TF32 tensor cores, or (default, the reference's) in
    full fp32. Set both ways: a run gets what its config says whatever ran before it.
    (Convolutions keep cuDNN's default, as in the reference.)"""
    torch.backends.cuda.matmul.allow_tf32 = enabled


def training_module(model: models.ViTill, cfg: Config, device: torch.device) -> nn.Module:
    """What the training step runs: `model` (its blocks compiled with --compile), wrapped in
    DistributedDataParallel with several processes (the gradients averaged over ranks: with
    equal shares, the gradient of the global batch's mean loss). `model` itself is what is
    evaluated and saved."""
    if cfg.compile:
        compile_blocks(model)
    if distributed.world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


@dataclass
class Training:
    """The model and what trains it (`setup_training`)."""

    model: models.ViTill  # evaluated and saved: reference keys
    net: nn.Module  # what the step runs: `model`, in DDP with several processes
    trainable: list[nn.Parameter]  # bottleneck + decoder
    optimizer: utils.StableAdamW
    scheduler: utils.WarmCosineScheduler
    scaler: torch.amp.GradScaler  # fp16 only; disabled, every call is a no-op


def setup_training(cfg: Config, device: torch.device) -> Training:
    """A fresh model (seeded init, the reference's order of random draws), its optimizer,
    lr schedule and, with the speed options, the compiled / DDP-wrapped training module."""
    set_tf32(cfg.tf32)
    model = models.build_dinomaly(cfg.encoder, cfg.encoder_weights, cfg.dropout, device=device,
                                  fused_attn=cfg.fused_attn)
    rank = distributed.rank()
    if rank > 0:  # own dropout masks (with one seed, every rank's i-th image would share one)
        torch.manual_seed(cfg.seed + rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = utils.StableAdamW([{"params": trainable}], lr=cfg.lr, betas=cfg.betas,
                                  weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad, eps=cfg.eps)
    # sets the lr of iteration 0 now, and of iteration i+1 at each step()
    scheduler = utils.WarmCosineScheduler(optimizer, base_value=cfg.lr, final_value=cfg.final_lr,
                                          total_iters=cfg.total_iters,
                                          warmup_iters=cfg.warmup_iters)
    return Training(model, training_module(model, cfg, device), trainable, optimizer, scheduler,
                    torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16"))


def train_step(t: Training, img: torch.Tensor, it: int, cfg: Config) -> float:
    """Iteration `it` on the batch `img` (`B × 3 × H × W`, on the device; this process's
    share with several): forward → loss → backward → clip → step → next lr (spec §4).
    Returns the loss of the global batch."""
    # forward (--amp: under autocast), then the features in fp32 for the loss
    with torch.autocast(img.device.type, dtype=AMP_DTYPES[cfg.amp], enabled=cfg.amp != "none"):
        en, de = t.net(img)
    en, de = [e.float() for e in en], [d.float() for d in de]  # fp32 already: no-op
    # loss: the hard-mining share p ramps 0 -> 0.9 over the first 1000 iterations (spec §4);
    # with several processes, its threshold is the whole global batch's
    p = min(cfg.hm_p_max * it / cfg.hm_ramp_iters, cfg.hm_p_max)
    loss = utils.global_cosine_hm_percent(en, de, p=p, factor=cfg.hm_factor,
                                          across_ranks=distributed.world_size() > 1)
    # backward (several processes: DDP averages the gradients over the ranks)
    t.optimizer.zero_grad()
    t.scaler.scale(loss).backward()
    # clip: global L2 norm of the trainable gradients (fp16: unscaled first)
    t.scaler.unscale_(t.optimizer)
    nn.utils.clip_grad_norm_(t.trainable, max_norm=cfg.clip_grad)
    # step (fp16: skipped if the gradients overflowed), then the scheduler sets the next lr
    t.scaler.step(t.optimizer)
    t.scaler.update()
    value = distributed.mean_over_ranks(loss)  # the step's one host-device synchronisation
    t.scheduler.step()
    return value
