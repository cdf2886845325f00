"""Atomic file writes, used for every file the project writes (results, checkpoints,
downloaded weights, prepared datasets, heatmaps): a crash or kill at any moment leaves
either the old file or the new one at `path`, never a half-written one."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], binary: bool = False,
                 remove_stale: bool = False) -> None:
    """Write through `write(file)` into a temporary file in `path`'s folder, fsync, then
    rename it over `path`. A failed write removes its temporary file and re-raises.

    `remove_stale`: first delete temporary files of `path` left by a killed earlier write
    (for large files written by one process only, e.g. checkpoints: with concurrent
    writers of one path, e.g. every torchrun process fetching the weights, it would delete
    another writer's file in progress).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # newline="": text is written as given (csv writes its own line ends)
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            write(f)
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`data` at `path`, atomically."""
    atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` at `path`, atomically."""
    atomic_write(path, lambda f: f.write(text))
