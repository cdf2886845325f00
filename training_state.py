"""Resume checkpoints (issue 6): everything a stopped run needs to continue exactly.

    save_training_state(path, model, optimizer, scheduler, progress, config)   # atomic
    state = load_training_state(path)                                          # checked
    progress = restore_training_state(state, model, optimizer, scheduler)      # + RNG states

A checkpoint is one plain dict (`torch.load(..., weights_only=True)` reads it):

    format, version       'dinomaly-training-state', 1
    model                 trainable part of the state_dict (bottleneck.*, decoder.*), reference
                          keys: `models.load_checkpoint` reads it too (encoder from its weights)
    optimizer, scheduler  their state_dicts (the scheduler's lr table is rebuilt from the config)
    iteration             iterations done
    epoch, epoch_order,   the epoch in progress, its shuffled order (int64 tensor) and the
    epoch_position        batches of it already trained on: the loop restarts mid-epoch there
    losses                float64 tensor, the loss of every iteration done (exact `loss.item()`)
    restarts              spike restarts so far (`--spike_restart`)
    rng                   torch CPU and CUDA generators, numpy, random
    config                the run's settings (`dataclasses.asdict(Config)`)

Exactness: the loop draws from the CPU generator when it creates a DataLoader iterator (the
worker seed) and when `RandomSampler` starts an epoch (the shuffle seed). `ResumableSampler`
records each epoch's order; on resume it replays the rest of that order without drawing,
and the trainer restores the generators saved after the checkpoint's last draw.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import Dataset, RandomSampler, Sampler

from models.vit_encoder import EncoderError, load_strict

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
})


class TrainingStateError(Exception):
    """A resume checkpoint that is missing, unreadable, or of another run."""


@dataclass
class Progress:
    """Where a run stands; what the loop needs besides model, optimizer and scheduler."""
    iteration: int = 0  # iterations done
    epoch: int = 0  # epoch in progress (or next to start)
    epoch_order: list[int] | None = None  # that epoch's sample order, None if not started
    epoch_position: int = 0  # batches of epoch_order already trained on
    losses: list[float] = field(default_factory=list)  # one per iteration done
    restarts: int = 0  # spike restarts so far


# ----------------------------------------------------------------------------- RNG

def rng_state() -> dict[str, object]:
    """The states of every generator the training loop draws from (weights_only-loadable:
    tensors, ints, floats, strings, tuples)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "random": random.getstate(),
    }


def set_rng_state(state: Mapping[str, object]) -> None:
    """Restore what `rng_state` captured. CUDA states are restored when CUDA is present and
    the device count matches (a CPU checkpoint continued on a GPU keeps the fresh seed)."""
    torch.set_rng_state(state["torch"])
    cuda = list(state["cuda"])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------- data order

class ResumableSampler(Sampler[int]):
    """`RandomSampler(data_source)` that records each epoch's order and can resume one.

    A normal epoch draws its shuffle seed from the CPU generator exactly as `RandomSampler`
    does, at the same moment (the first index requested), so a run is RNG-identical to
    `DataLoader(..., shuffle=True)`. After `resume(order, start)` the next epoch yields
    `order[start:]` and draws nothing.
    """

    def __init__(self, data_source: Dataset) -> None:
        self.inner = RandomSampler(data_source)
        self.order: list[int] | None = None  # the current epoch's full order
        self._pending: tuple[list[int], int] | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def resume(self, order: Sequence[int], start: int) -> None:
        """Make the next epoch the rest of `order`, from sample `start` on."""
        if sorted(order) != list(range(len(self.inner))):
            raise TrainingStateError(f"the saved epoch order does not fit the training set "
                                     f"({len(order)} entries for {len(self.inner)} images): "
                                     "the training images changed since the checkpoint")
        self._pending = (list(order), start)

    def __iter__(self) -> Iterator[int]:
        if self._pending is not None:
            self.order, start = self._pending
            self._pending = None
        else:
            self.order = list(self.inner)  # the epoch's seed is drawn here, as RandomSampler
            start = 0
        yield from self.order[start:]


# ----------------------------------------------------------------------------- files

def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """`torch.save(obj)` to a temporary file in `path`'s folder, fsync, then rename over
    `path`: a crash or kill at any moment leaves either the old file or the new one,
    never a partial file at `path`. A failed write removes its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed earlier write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without the frozen encoder (its weights are the official
    file's or a seeded random init, rebuilt on resume)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}


def save_training_state(path: str | os.PathLike, model: nn.Module, optimizer: Optimizer,
                        scheduler: LRScheduler, progress: Progress,
                        config: Mapping[str, object]) -> None:
    """Write a resume checkpoint atomically (see the module docstring for its content).
    Call it where the RNG states are the ones the next iteration should start from."""
    scheduler_state = {k: v for k, v in scheduler.state_dict().items()
                       if not isinstance(v, np.ndarray)}  # the lr table: rebuilt from config
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": trainable_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler_state,
        "iteration": progress.iteration,
        "epoch": progress.epoch,
        "epoch_order": (None if progress.epoch_order is None
                        else torch.tensor(progress.epoch_order, dtype=torch.int64)),
        "epoch_position": progress.epoch_position,
        "losses": torch.tensor(progress.losses, dtype=torch.float64),
        "restarts": progress.restarts,
        "rng": rng_state(),
        "config": _plain(config),
    }
    atomic_save(state, path)


def load_training_state(path: str | os.PathLike) -> dict[str, object]:
    """Read a resume checkpoint (`weights_only`: no code runs); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingStateError(f"no resume checkpoint at {path}: --resume needs a run that "
                                 f"saved one (at every evaluation, or --checkpoint_every N)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingStateError(f"cannot read resume checkpoint {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingStateError(f"{path} is not a resume checkpoint of this trainer")
    if state.get("version") != VERSION:
        raise TrainingStateError(f"{path} has checkpoint version {state.get('version')}; "
                                 f"this trainer reads version {VERSION}")
    return state


def restore_training_state(state: Mapping[str, object], model: nn.Module, optimizer: Optimizer,
                           scheduler: LRScheduler, rng: bool = True) -> Progress:
    """Load model (trainable part), optimizer and scheduler from `state`, and the RNG
    states unless `rng=False` (a spike restart reseeds instead). Returns the progress."""
    encoder = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    try:  # strict: every trainable key, every shape, or one error listing the mismatches
        load_strict(model, {**encoder, **state["model"]}, "the resume checkpoint")
    except EncoderError as err:
        raise TrainingStateError(str(err)) from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    if rng:
        set_rng_state(state["rng"])
    order = state["epoch_order"]
    return Progress(iteration=int(state["iteration"]), epoch=int(state["epoch"]),
                    epoch_order=None if order is None else order.tolist(),
                    epoch_position=int(state["epoch_position"]),
                    losses=state["losses"].tolist(), restarts=int(state["restarts"]))


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
