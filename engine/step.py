"""One training step and what it needs: the method's model, loss, optimizer and lr schedule
(`setup_training`, from its recipe), and `train_step`: forward → loss → backward → clip →
step → next lr.

The speed options act here: `--amp` (autocast around the forward; fp16 with a loss
scaler), `--compile` (every transformer block compiled in place), `--tf32` and several
processes (DistributedDataParallel, the hard-mining threshold over the global batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from engine import distributed
from engine.config import AMP_DTYPES, RunConfig
from recipes import Recipe, recipe_of
from recipes.base import Loss

COMPILE_BACKEND = "inductor"  # --compile; tests use "aot_eager" (same capture, no code generation)
# Inductor generates its own dropout masks from seeds it draws (other numbers than eager's);
# `fallback_random` makes the compiled code call the eager dropout kernel instead: the same
# masks from the same generator in the same order, so --compile changes rounding only.
INDUCTOR_OPTIONS = {"fallback_random": True}


def compile_blocks(model: nn.Module) -> None:
    """`torch.compile` every module held in an `nn.ModuleList` of the model (Dinomaly: every
    encoder block, the bottleneck, every decoder block), in place (`nn.Module.compile`: the
    state_dict keys stay the reference's). Blocks of one kind share their compiled code, so
    compilation costs one block per kind (evaluation, in eval mode without gradients,
    compiles its own variants); the loss's gradient hooks sit on the model's outputs,
    outside the compiled code. Dropout draws as in eager mode (INDUCTOR_OPTIONS)."""
    options = {"options": INDUCTOR_OPTIONS} if COMPILE_BACKEND == "inductor" else {}
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                block.compile(backend=COMPILE_BACKEND, **options)


def set_tf32(enabled: bool) -> None:
    """--tf32: CUDA float32 matmuls on TF32 tensor cores, or (default, the reference's) in
    full fp32. Set both ways: a run gets what its config says whatever ran before it.
    (Convolutions keep cuDNN's default, as in the reference.)"""
    torch.backends.cuda.matmul.allow_tf32 = enabled


def training_module(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
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

    model: nn.Module  # evaluated and saved: the reference's keys
    net: nn.Module  # what the step runs: `model`, in DDP with several processes
    loss: Loss  # (outputs, iteration) -> loss, the method's (with its schedule)
    trainable: list[nn.Parameter]  # clipped together before each step
    max_grad_norm: float
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # fp16 only; disabled, every call is a no-op


def setup_training(cfg: RunConfig, device: torch.device, recipe: Recipe | None = None) -> Training:
    """A fresh model of the method (`recipe`, by default `cfg`'s: seeded construction, the
    reference's order of random draws), its loss, optimizer, lr schedule and, with the speed
    options, the compiled / DDP-wrapped training module."""
    recipe = recipe_of(cfg) if recipe is None else recipe
    set_tf32(cfg.tf32)
    model = recipe.build_model(cfg, device)
    rank = distributed.rank()
    if rank > 0:  # own dropout masks (with one seed, every rank's i-th image would share one)
        torch.manual_seed(cfg.seed + rank)
    optimization = recipe.optimization(model, cfg)
    # several processes: the loss's hard choices (e.g. a threshold) over the global batch
    loss = recipe.loss(cfg, across_ranks=distributed.world_size() > 1)
    return Training(model, training_module(model, cfg, device), loss, optimization.clip_params,
                    optimization.max_grad_norm, optimization.optimizer, optimization.scheduler,
                    torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16"))


def train_step(t: Training, img: torch.Tensor, it: int, cfg: RunConfig) -> float:
    """Iteration `it` on the batch `img` (`B × 3 × H × W`, on the device; this process's
    share with several): forward → loss → backward → clip → step → next lr.
    Returns the loss of the global batch."""
    # forward (--amp: under autocast); the loss takes the outputs as they come
    with torch.autocast(img.device.type, dtype=AMP_DTYPES[cfg.amp], enabled=cfg.amp != "none"):
        outputs = t.net(img)
    loss = t.loss(outputs, it)
    # backward (several processes: DDP averages the gradients over the ranks)
    t.optimizer.zero_grad()
    t.scaler.scale(loss).backward()
    # clip: global L2 norm of the trainable gradients (fp16: unscaled first)
    t.scaler.unscale_(t.optimizer)
    nn.utils.clip_grad_norm_(t.trainable, max_norm=t.max_grad_norm)
    # step (fp16: skipped if the gradients overflowed), then the scheduler sets the next lr
    t.scaler.step(t.optimizer)
    t.scaler.update()
    value = distributed.mean_over_ranks(loss)  # the step's one host-device synchronisation
    t.scheduler.step()
    return value
