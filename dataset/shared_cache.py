"""`--cache_images` under torchrun: one copy of the decoded images per machine, not one per
process (VisA: 5 GB once instead of 5 GB × 8).

The process that `fills` (the engine picks local rank 0) decodes the images into a file in
shared memory (`/dev/shm`, or a temporary folder on disk when that has no room: the page
cache is then the one copy); the other processes of the machine map the same file. As
soon as every process has mapped it, the file is removed: the memory stays mapped until the
last process ends, and is returned by the system when it does, also after a crash. A file
left by a filler killed while it was decoding is removed by the next filler (its name
carries the filler's process id).

The dataset package knows nothing of torch.distributed: the engine passes `agree`, a
barrier that every process of the run calls at the same points and that returns whether
all of them passed True (so that a failure on one process stops all, with one message).
"""
from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetError

PREFIX = "dinomaly-cache-"
FOLDERS = ("/dev/shm", tempfile.gettempdir())  # in order of preference


class SharedCache:
    """How the processes of a run share their image caches.

    Args:
        tag: the same on every process of the run, different for every run.
        fills: this process decodes the images (one per machine); the others map them.
        agree: barrier over every process of the run that returns whether all passed True.
        folders: where the filler may put the file (the first with room).
    """

    def __init__(self, tag: str, fills: bool, agree: Callable[[bool], bool],
                 folders: Sequence[str] = FOLDERS) -> None:
        self.tag, self.fills, self.agree, self.folders = tag, fills, agree, tuple(folders)
        self._count = itertools.count()  # every process builds its caches in the same order

    def array(self, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
        """A uint8 array of `shape` shared by the processes of this machine, filled by
        `fill(array)` in the filling process. Collective: every process calls it."""
        name = f"{self.tag}-{next(self._count)}"
        if int(np.prod(shape)) == 0:  # the same on every process: nothing to share
            return np.zeros(shape, np.uint8)
        path, array, error = None, None, None
        if self.fills:
            try:
                path = create_file(self.folders, name, int(np.prod(shape)))
                array = np.memmap(path, np.uint8, "r+", shape=shape)
                fill(array)
            except BaseException as err:  # Ctrl-C too: the others must not wait for ever
                error = err
        if not self.agree(error is None):  # the file is filled (or the filler failed)
            _remove(path)
            if error is not None:
                raise error
            raise DatasetError("the image cache could not be built (the process that builds it "
                               "for this machine stopped; its message says why)")
        if not self.fills:
            try:
                array = np.memmap(find_file(self.folders, name), np.uint8, "r", shape=shape)
            except BaseException as err:
                error = err
        everyone = self.agree(error is None)  # every process has mapped it
        if self.fills:
            _remove(path)  # the mappings keep the memory; nothing is left on the disk
        if error is not None:
            raise error
        if not everyone:
            raise DatasetError("the image cache could not be mapped by every process")
        return array


def create_file(folders: Sequence[str], name: str, size: int) -> Path:
    """A new file of `size` bytes, with its space reserved, in the first of `folders` that has
    room for it, named after `name` and this process (stale files of dead fillers go first)."""
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        remove_stale(folder)
        path = Path(folder) / f"{PREFIX}{os.getpid()}-{name}.u8"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            continue
        try:
            # reserve the space now: a tmpfs that runs full while the images are written
            # would kill the process (SIGBUS) instead of raising
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:  # macOS: no reservation
                os.ftruncate(fd, size)
            return path
        except OSError:
            _remove(path)
        finally:
            os.close(fd)
    raise DatasetError(f"--cache_images: no room for {size / 2**30:.1f} GiB of decoded images "
                       f"in {' or '.join(folders)}; free some, or run without --cache_images")


def find_file(folders: Sequence[str], name: str) -> Path:
    """The file the filler created for `name` (in whichever folder it chose)."""
    for folder in folders:
        found = sorted(Path(folder).glob(f"{PREFIX}*-{name}.u8")) if os.path.isdir(folder) else []
        if found:
            return found[0]
    raise DatasetError(f"--cache_images: the shared image cache {name} is missing from "
                       f"{' and '.join(folders)} (a folder not shared by the processes?)")


def remove_stale(folder: str) -> None:
    """Remove cache files whose filler process no longer exists (killed while decoding)."""
    for path in Path(folder).glob(f"{PREFIX}*.u8"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                _remove(path)
            except OSError:  # another user's file in a shared /tmp
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
