"""Resume checkpoints: everything a stopped run needs to continue exactly.

    save_training_state(path, model, optimizer, scheduler, progress, config, results)  # atomic
    state = load_training_state(path)                                                 # checked
    progress = restore_training_state(state, model, optimizer, scheduler)             # + RNG

A checkpoint is one plain dict (`torch.load(..., weights_only=True)` reads it):

    format, version       'dinomaly-training-state', 1
    finished              True once the model's last iteration is done: then model, optimizer,
                          scheduler and rng are None (model.pth holds the weights), which
                          keeps a finished run's folder small
    model                 trainable part of the state_dict (bottleneck.*, decoder.*), reference
                          keys: `models.load_checkpoint` reads it too (encoder from its weights)
    optimizer, scheduler  their state_dicts (the scheduler's lr table is rebuilt from the config)
    scaler                the fp16 loss scaler's state ({} when it is off)
    iteration             iterations done
    epoch, epoch_order,   the epoch in progress, its shuffled order (int64 tensor) and the
    epoch_position        batches of it already trained on: the loop restarts mid-epoch there
    epoch_seed            that epoch's worker seed when the sampler tags its samples (a
                          training set replaying the reference loader's augmentation), else None
    losses                float64 tensor, the loss of every iteration done (exact `loss.item()`)
    restarts              spike restarts so far (`--spike_restart`)
    results               the last evaluation's metrics per class
    rng                   per process (rank order): the CPU generator, the run's CUDA device's
                          generator, numpy, random (`generators.rng_state`)
    config                the run's settings (`dataclasses.asdict(Config)`)

Exactness: the loop draws from the CPU generator when it creates a DataLoader iterator (the
worker seed) and when an epoch starts (the shuffle seed). The batch sampler records each
epoch's order and replays the rest of it on resume without drawing; the trainer restores
the generators as they were after the checkpoint's last draw.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from engine.errors import TrainingStateError
from engine.fileio import atomic_write
from engine.generators import all_rng_states, rng_state, set_rng_state  # noqa: F401  (re-exported)
from models.vit_encoder import EncoderError, load_file, load_strict

CHECKPOINT_NAME = "checkpoint.pth"
FORMAT = "dinomaly-training-state"
VERSION = 1

# Settings that may change between a run and its resumption: they change where files are,
# how fast it runs and what is logged, not the trained model. Every other Config field
# (model, data, schedule, loss, seed, evaluation) must match; new fields count as mattering.
RESUME_FREE = frozenset({
    "data_path",         # the same dataset may have moved
    "num_workers",       # loading processes: same batches
    "device",            # e.g. continue a CPU run on a GPU (not bit-exact across devices)
    "log_every",         # log lines only
    "save_dir",          # the run folder is found through these two
    "save_name",
    "resume",
    "save_maps",         # pictures at the final evaluation
    "checkpoint_every",  # extra checkpoints
    "skip_image_check",  # the pre-flight file check
    "spike_factor",      # spike logging and restarts
    "spike_window",
    "spike_restart",
    "max_restarts",
    "demo",
    "encoder_changed",   # a record of which settings the encoder set (they are compared)
    "cache_images",      # speed: the same tensors, the same order of random draws
    "compile",           # the same random draws as eager (step.INDUCTOR_OPTIONS); rounding only
    "metrics_on_device", # the metrics to float round-off, not the training
    "tf32",              # rounding only, like --device: a continuation is then not bit-exact
})


@dataclass
class Progress:
    """Where a run stands; what the loop needs besides model, optimizer and scheduler."""
    iteration: int = 0  # iterations done
    epoch: int = 0  # epoch in progress (or next to start)
    epoch_order: list[int] | None = None  # that epoch's sample order, None if not started
    epoch_position: int = 0  # batches of epoch_order already trained on
    epoch_seed: int | None = None  # that epoch's loader worker seed, when the sampler tags
    losses: list[float] = field(default_factory=list)  # one per iteration done
    restarts: int = 0  # spike restarts so far


# ----------------------------------------------------------------------------- files

def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """`torch.save(obj)` at `path`, atomically (`fileio.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f), binary=True, remove_stale=True)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without the frozen encoder (its weights are the official
    file's or a seeded random init, rebuilt on resume)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}


def save_training_state(path: str | os.PathLike, model: nn.Module, optimizer: Optimizer,
                        scheduler: LRScheduler, progress: Progress,
                        config: Mapping[str, object],
                        results: Mapping[str, Sequence[float]],
                        rng: Sequence[Mapping[str, object]] | None = None,
                        scaler: torch.amp.GradScaler | None = None,
                        finished: bool = False) -> None:
    """Write a checkpoint atomically (content: the module docstring). Call it where the
    RNG states are the ones the next iteration starts from.

    Args:
        rng: every process's RNG states (`all_rng_states()`); default this process's.
        scaler: the fp16 loss scaler, if any.
        finished: the last iteration is done: only progress, results and config are kept.
    """
    scaler_state = {} if scaler is None or finished else scaler.state_dict()
    if finished:
        model_state = optimizer_state = scheduler_state = rng = None
    else:
        model_state = trainable_state_dict(model)
        optimizer_state = optimizer.state_dict()
        scheduler_state = {k: v for k, v in scheduler.state_dict().items()
                           if not isinstance(v, np.ndarray)}  # the lr table: rebuilt from config
        rng = list(rng) if rng is not None else [rng_state()]
    state = {
        "format": FORMAT,
        "version": VERSION,
        "finished": finished,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "scaler": scaler_state,
        "iteration": progress.iteration,
        "epoch": progress.epoch,
        "epoch_order": (None if progress.epoch_order is None
                        else torch.tensor(progress.epoch_order, dtype=torch.int64)),
        "epoch_position": progress.epoch_position,
        "epoch_seed": progress.epoch_seed,
        "losses": torch.tensor(progress.losses, dtype=torch.float64),
        "restarts": progress.restarts,
        "results": {str(k): [float(v) for v in vals] for k, vals in results.items()},
        "rng": rng,
        "config": _plain(config),
    }
    atomic_save(state, path)


def load_training_state(path: str | os.PathLike) -> dict[str, object]:
    """Read a checkpoint (`weights_only`: no code runs); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingStateError(f"no resume checkpoint at {path}")
    try:
        state = load_file(path, "resume checkpoint")
    except EncoderError as err:
        raise TrainingStateError(str(err)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingStateError(f"{path} is not a resume checkpoint of this trainer")
    if state.get("version") != VERSION:
        raise TrainingStateError(f"{path} has checkpoint version {state.get('version')}; "
                                 f"this trainer reads version {VERSION}")
    return state


def progress_of(state: Mapping[str, object]) -> Progress:
    """The `Progress` recorded in a checkpoint."""
    order = state["epoch_order"]
    return Progress(iteration=int(state["iteration"]), epoch=int(state["epoch"]),
                    epoch_order=None if order is None else order.tolist(),
                    epoch_position=int(state["epoch_position"]),
                    epoch_seed=state.get("epoch_seed"),
                    losses=state["losses"].tolist(), restarts=int(state["restarts"]))


def restore_training_state(state: Mapping[str, object], model: nn.Module, optimizer: Optimizer,
                           scheduler: LRScheduler, rng_index: int | None = 0,
                           scaler: torch.amp.GradScaler | None = None,
                           device: torch.device | str | None = None) -> Progress:
    """Load model (trainable part), optimizer, scheduler (and `scaler`) from an unfinished
    checkpoint, and the RNG states of process `rng_index` (None: leave the generators alone,
    e.g. a spike restart that reseeds), the CUDA one into `device`'s generator
    (`generators.cuda_generator_plan`). Returns the progress."""
    if state["finished"]:
        raise TrainingStateError("the checkpoint is of a finished run: nothing to restore")
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    try:  # strict: every trainable key, every shape, or one error listing the mismatches
        load_strict(model, {**encoder, **state["model"]}, "the resume checkpoint")
    except EncoderError as err:
        raise TrainingStateError(str(err)) from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if rng_index is not None:
        set_rng_state(state["rng"][rng_index], device)
    return progress_of(state)


# ----------------------------------------------------------------------------- config

def _plain(value: object) -> object:
    """Tuples as lists, recursively: the form config.json and the checkpoint store."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def config_differences(saved: Mapping[str, object], current: Mapping[str, object],
                       free: frozenset[str] = RESUME_FREE) -> list[str]:
    """`name: saved -> current` for each setting outside `free` that differs (a setting
    present on one side only counts as differing)."""
    saved, current = _plain(saved), _plain(current)
    out = []
    for name in sorted(set(saved) | set(current)):
        if name in free:
            continue
        a, b = saved.get(name, "<absent>"), current.get(name, "<absent>")
        if not _same(a, b):
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
