"""Atomic file writes, used for every file the project writes (results, checkpoints,
downloaded weights, prepared datasets, heatmaps): a crash or kill at any moment leaves
either the old file or the new one at `path`, never a half-written one.

Permissions are those of a plain `open(path, "w")`: `0o666` less the process's umask
(`mkstemp` alone would leave every file `0o600`, unreadable to colleagues on a shared
server); a file that is replaced keeps its own mode.
"""
from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO


class WriteError(OSError):
    """Writing `path` failed (disk full, read-only, no permission…); whatever was at `path`
    before is untouched. `str()` is one line naming the file and the cause."""

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path = Path(path)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}"


class _WriteRecorder:
    """A file object that remembers the first OSError of a write or flush: `torch.save`
    turns such an error (e.g. a full disk) into an unrelated RuntimeError."""

    def __init__(self, f: IO) -> None:
        self._f = f
        self.error: OSError | None = None

    def _record(self, call: Callable[..., object], *args: object) -> object:
        try:
            return call(*args)
        except OSError as err:
            self.error = self.error or err
            raise

    def write(self, data: object) -> object:
        return self._record(self._f.write, data)

    def flush(self) -> None:
        self._record(self._f.flush)

    def __getattr__(self, name: str) -> object:
        return getattr(self._f, name)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], binary: bool = False,
                 remove_stale: bool = False) -> None:
    """Write through `write(file)` into a temporary file in `path`'s folder, fsync, then
    rename it over `path`. A failed write removes its temporary file and re-raises; an
    OSError of the file system (disk full, read-only…), whatever `write` made of it, is
    raised as `WriteError` naming `path`.

    `remove_stale`: first delete temporary files of `path` left by a killed earlier write
    (for large files written by one process only, e.g. checkpoints: with concurrent
    writers of one path, e.g. every torchrun process fetching the weights, it would delete
    another writer's file in progress).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if remove_stale:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise WriteError(path, err) from None
    recorder = None
    try:
        # newline="": text is written as given (csv writes its own line ends)
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as f:
            os.fchmod(f.fileno(), _mode_for(path))
            recorder = _WriteRecorder(f)
            write(recorder)
            recorder.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = recorder.error if recorder is not None else None
        cause = cause or (err if isinstance(err, OSError) else None)
        if cause is None or isinstance(err, WriteError):
            raise
        raise WriteError(path, cause) from None
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


_umask_lock = threading.Lock()


def umask() -> int:
    """The process's current umask. Read from /proc where it can be (`os.umask` can only be
    read by setting it, which races with other threads creating files: heatmaps are
    written from threads), else by setting and restoring it under a lock."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _mode_for(path: Path) -> int:
    """The mode a new file at `path` gets: that of the file it replaces, else 0o666 & ~umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`data` at `path`, atomically."""
    atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`text` at `path`, atomically."""
    atomic_write(path, lambda f: f.write(text))
