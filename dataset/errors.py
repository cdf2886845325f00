"""`DatasetError`: one message that names the path and says what to do."""
from __future__ import annotations

import re

# A DatasetError raised in a DataLoader worker comes back as DatasetError(<this text>)
# (torch/_utils.py ExceptionWrapper.reraise): the last "DatasetError: " line of the
# worker's traceback holds the original message.
_WORKER_TEXT = "\nOriginal Traceback"
_ORIGINAL_LINE = re.compile(r"^(?:[\w.]+\.)?DatasetError: ", re.MULTILINE)


def _original_message(message: str) -> str:
    """The one-line message of a DatasetError, also when torch re-raised it from a worker."""
    if not (message.startswith("Caught DatasetError ") and _WORKER_TEXT in message):
        return message
    lines = list(_ORIGINAL_LINE.finditer(message))
    return message[lines[-1].end():].rstrip("\n") if lines else message


class DatasetError(Exception):
    """A dataset on disk is missing, incomplete or unreadable; the message says where and what to do.

    Raised in a DataLoader worker, it reaches the main process with the same one-line message.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(_original_message(str(message)))
