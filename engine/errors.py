"""One error policy for every command (the training scripts, predict.py, export.py): an
exception type per cause, and one place, `exit_line`, that turns each into the one
`error: …` line a user reads and the exit status — never a traceback for a cause the user
can fix (a bug keeps its traceback).

    cause                                                   type                     status
    a flag that cannot work (range, device, combination)    CheckError               2
    data that cannot be read as the layout says             dataset.DatasetError     1
    encoder weights or a checkpoint that cannot be used     models.EncoderError      1
    a resume checkpoint that does not fit                   TrainingStateError       1
    a run that cannot start or go on (folder taken, …)      RunError                 1
    an export a runtime refuses                             ExportError              1
    a file that cannot be written (full disk, …)            OSError (fileio.WriteError)  1
    Ctrl-C                                                  KeyboardInterrupt        130

`Stop` is the result: a SystemExit whose `str()` is the line, raised after the line is
printed (`stop`).
"""
from __future__ import annotations

import argparse
import errno
import sys
from typing import NoReturn

import dataset
import models


class CheckError(ValueError):
    """A setting that cannot work here; the message names the flag."""


class RunError(Exception):
    """A run that cannot start or go on for a reason the user can fix; the message says
    which and what to do."""


class TrainingStateError(Exception):
    """A resume checkpoint that is missing, unreadable, or does not fit this run."""


class ExportError(RuntimeError):
    """A model that the exporter or a runtime refuses."""


class Stop(SystemExit):
    """Ends the program with one line and an exit status, without a traceback: `str()` is
    the line (callers and tests read it), the status an int (so Python prints nothing
    more). Whoever raises it prints the line (see `stop`)."""

    def __init__(self, line: str, status: int = 2) -> None:
        super().__init__(status)
        self.line = line

    def __str__(self) -> str:
        return self.line


def stop(line: str, status: int = 2) -> Stop:
    """Print `line` to stderr and return the `Stop` to raise: `raise stop("error: …")`."""
    print(line, file=sys.stderr, flush=True)
    return Stop(line, status)


USER_ERRORS = (RunError, dataset.DatasetError, models.EncoderError, TrainingStateError,
               ExportError, OSError)  # status 1 (models.CheckpointError is an EncoderError)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def exit_line(err: BaseException, interrupted: str = "interrupted",
              disk_full_hint: str = "") -> tuple[str, int] | None:
    """The line and exit status for `err` (the table above), or None for a bug.
    `interrupted`: what Ctrl-C says here; `disk_full_hint`: added to a full disk's line."""
    if isinstance(err, KeyboardInterrupt):
        return interrupted, 130
    if isinstance(err, CheckError):
        return f"error: {err}", 2
    if isinstance(err, USER_ERRORS):
        line = f"error: {err}"
        if disk_full_hint and isinstance(err, OSError) and err.errno in DISK_FULL:
            line += f" ({disk_full_hint})"
        return line, 1
    return None


def run_command(body, interrupted: str = "interrupted") -> None:
    """Run `body()`; an error with a cause ends in its one line (`exit_line`)."""
    try:
        body()
    except Stop:
        raise
    except (Exception, KeyboardInterrupt) as err:
        found = exit_line(err, interrupted)
        if found is None:
            raise
        raise stop(*found) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends in one line `error: <message>` on stderr (no usage
    block), exit status 2 as argparse's, and the `SystemExit` carries the line."""

    def error(self, message: str) -> NoReturn:
        raise stop(f"error: {message}")
