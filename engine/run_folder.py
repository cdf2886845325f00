"""The run folder `<save_dir>/<save_name>/` and what the trainer writes into it.

- `RunFolder`: creates the folder (an existing non-empty one only for `--resume`) and,
  for a start that fails before its first training step, removes what that start made,
  so that the same command runs again once the cause is fixed.
- `RunLog`: `log.txt`, every printed line, appended and flushed line by line.
- `write_config`: `config.json`, every setting used, the command and the versions.
- `save_model`: `model.pth`, the full `model.state_dict()` in the reference's keys.

Every file but `log.txt` is written atomically (`fileio.atomic_write`): a failed write
(a full disk) leaves the previous good file in place.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from engine import distributed
from engine.config import RunConfig
from engine.errors import RunError
from engine.fileio import WriteError, atomic_write


class RunFolder:
    """`path` for one start of a run. `create()` makes it; `discard()` undoes that for a
    start that failed before it trained: the folder (or, if it existed empty, what was put
    in it) and the parent folders `create()` made. A resumed run's folder is never
    discarded: it holds the run being continued."""

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        self._made: list[Path] = []  # folders this start created, outermost first
        self._created = False

    def create(self) -> Path:
        """The folder, created. An existing non-empty folder is never written into, except
        by `--resume` (which continues the run in it): the run stops and says so."""
        if self.resume:
            return self.path  # check_resume has looked at it
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise RunError(f"results folder {self.path} already exists and is not empty; "
                           "continue that run with --resume, or choose another --save_name "
                           "(or --save_dir), or remove it.")
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        self._made = missing[::-1]
        self._created = True
        return self.path

    def discard(self) -> None:
        """Remove what this start made (nothing for --resume, or before `create`)."""
        if not self._created or self.resume:
            return
        if self.path in self._made:
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # it existed, empty: what is in it now is this start's
            for child in self.path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        for folder in reversed(self._made):  # the parents it made, innermost first
            if folder == self.path:
                continue
            try:
                folder.rmdir()  # only if empty: another run may have started in it since
            except OSError:
                break
        self._created = False


def free_save_name(save_dir: str, name: str) -> str:
    """`name`, or the first of `name_1`, `name_2`, … with no non-empty folder in `save_dir`
    (the demo's runs: each gets its own folder, none is overwritten)."""
    candidates = [name] + [f"{name}_{i}" for i in range(1, 10_000)]
    for candidate in candidates:
        path = Path(save_dir) / candidate
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return candidate
    raise RunError(f"no free results folder {name}_N in {save_dir}; clean it up")


def save_model(model: nn.Module, path: Path) -> None:
    """The full `model.state_dict()` (reference keys: loads in the reference as it is)."""
    atomic_write(path, lambda f: torch.save(model.state_dict(), f), binary=True)


class RunLog:
    """`log(line)`: print to stdout (above the progress bar) and append to log.txt.
    `path=None`: silent (ranks other than 0)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        if self.path is None:
            return
        tqdm.write(line, file=sys.stdout)
        self.record(line)

    def record(self, line: str) -> None:
        """Append `line` to log.txt only (it was printed elsewhere)."""
        if self.path is None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as err:  # e.g. a full disk: say which file
            raise WriteError(self.path, err) from None


def write_config(cfg: RunConfig, run_dir: Path, argv: Sequence[str],
                 record: dict[str, object] | None = None) -> None:
    """config.json: the settings used, the method they are of, `record` (e.g. what the
    encoder changed), the command and library versions."""
    info = {**dataclasses.asdict(cfg), "method": type(cfg).METHOD, **(record or {}),
            "processes": distributed.world_size(),
            "command": [sys.argv[0], *argv],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
            "python": sys.version.split()[0]}
    atomic_write(run_dir / "config.json", lambda f: json.dump(info, f, indent=2))
