"""What the preparation scripts share: their error (`PrepareError`, the message names the file)
and how a script ends on one (`run_preparation`: one line, exit status 2)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PrepareError(Exception):
    """Bad input or a conflict with existing output; the message names the file."""


def run_preparation(tool: str, body: Callable[[], T]) -> T:
    """`body()`; a PrepareError, or an OSError (engine.fileio's WriteError names the file),
    ends the script with `<tool>: error: …` on stderr and exit status 2."""
    try:
        return body()
    except (PrepareError, OSError) as e:
        print(f"{tool}: error: {e}", file=sys.stderr)
        sys.exit(2)
