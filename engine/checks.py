"""Checks of the run's environment, made before anything is written or downloaded: the
device, the results folder, and the numbers on the command line.

Each check returns quietly or raises `CheckError` with one line that names the flag and
says what to do (`engine.errors` turns it into `error: …` and exit status 2).
"""
from __future__ import annotations

import errno
import math
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from engine.errors import CheckError, Stop, stop  # noqa: F401  (the checks' error, re-exported)

SEED_MAX = 2 ** 32 - 1  # numpy's np.random.seed takes 0 … 2**32 - 1


# ----------------------------------------------------------------------------- device

def available_devices() -> list[str]:
    """The devices this process can run on: `cpu`, then `cuda:0` … (and `mps`)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(name: str, flag: str = "--device") -> str:
    """`name` if this machine has that device; else CheckError listing the ones it has.
    CUDA that is asked for and missing is an error, never a silent fall back to the CPU."""
    available = ", ".join(available_devices())
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise CheckError(f"{flag} {name!r} is not a device name; use one of: {available} "
                         "(or cuda for the current GPU)") from None
    if device.type == "cpu":
        return name
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None else
                   "torch finds no CUDA GPU or driver")
            raise CheckError(f"{flag} {name}: no CUDA device is usable here ({why}); "
                             f"available: {available}. Pass {flag} cpu to run on the CPU.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CheckError(f"{flag} {name}: there is no GPU {device.index}, this machine has "
                             f"{count} ({available})")
        return name
    if device.type == "mps" and "mps" in available_devices():
        return name
    raise CheckError(f"{flag} {name}: not a device this machine can run on; use one of: "
                     f"{available}")


# ----------------------------------------------------------------------------- results folder

def _first_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mode_permits_write(path: Path) -> bool:
    """Whether `path`'s permission bits let this user write in it. `os.access` says yes to
    root whatever the bits; a folder made read-only on purpose is respected for root too."""
    if os.geteuid() != 0:
        return True  # os.access has judged
    st = os.stat(path)
    bit = stat.S_IWUSR if st.st_uid == 0 else stat.S_IWGRP if st.st_gid == 0 else stat.S_IWOTH
    return bool(st.st_mode & bit)


def check_writable_folder(path: str | os.PathLike, flag: str) -> None:
    """`path` (a folder that may not exist yet) can be created and written to: no part of
    it is a file, and its nearest existing ancestor takes a new file (tried with a
    temporary file that is removed at once: a read-only file system, missing permissions
    or a full disk show here, before training)."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            raise CheckError(f"{flag} {path}: {part} is a file, not a folder; pass a folder "
                             "(it is created if it does not exist)")
    base = _first_existing(path)
    problem = None
    if os.statvfs(base).f_flag & os.ST_RDONLY:
        problem = "read-only file system"
    elif not os.access(base, os.W_OK | os.X_OK) or not _mode_permits_write(base):
        problem = "no permission to write there"
    else:
        try:
            fd, probe = tempfile.mkstemp(dir=base, prefix=".dinomaly-write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            problem = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                       errno.ENOSPC: "the disk is full"}.get(err.errno, err.strerror or str(err))
    if problem:
        where = "" if base == Path(os.path.abspath(path)) else f" (in {base})"
        raise CheckError(f"{flag} {path}: cannot write there{where}: {problem}; pass a "
                         f"folder you can write to")


# ----------------------------------------------------------------------------- numbers

# flag name (without --) -> (test of its value, what it must be)
NUMBER_RULES = {
    "total_iters": (lambda v: v > 0, "a positive number of iterations"),
    "batch_size": (lambda v: v > 0, "positive"),
    "image_size": (lambda v: v > 0, "positive"),
    "crop_size": (lambda v: v > 0, "positive (a multiple of the encoder's patch)"),
    "eval_every": (lambda v: v > 0, "positive"),
    "eval_resolution": (lambda v: v > 0, "positive"),
    "log_every": (lambda v: v > 0, "positive"),
    "num_workers": (lambda v: v >= 0, "0 (load in the main process) or more"),
    "seed": (lambda v: 0 <= v <= SEED_MAX, f"in 0 … {SEED_MAX} (numpy's seed range)"),
    "checkpoint_every": (lambda v: v >= 0, "0 (off) or a positive number of iterations"),
    "max_restarts": (lambda v: v >= 0, "0 or more"),
    "spike_factor": (lambda v: v == 0 or v > 1,
                     "0 (off) or above 1 (a multiple of the running median loss)"),
    "gt_threshold": (lambda v: 0 <= v < 1,
                     "in [0, 1): it is on the 0-1 scale of the mask (a 0/255 mask's 255 is "
                     "1.0, so 128 of 255 is 0.5)"),
}


def check_numbers(values: Mapping[str, float],
                  rules: Mapping[str, tuple] = NUMBER_RULES) -> None:
    """The numeric flags in range; `values` maps each flag name (without `--`) to its value.
    Only the flags present are checked (`rules`: name -> (test, what it must be); a
    recipe's settings bring theirs in their fields' `check`)."""
    for name, value in values.items():
        if name not in rules:
            continue
        test, must = rules[name]
        if (isinstance(value, float) and not math.isfinite(value)) or not test(value):
            raise CheckError(f"--{name} {value}: must be {must}")
