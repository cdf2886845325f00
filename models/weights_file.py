"""Weights files: reading `.pth` and `.safetensors` files with one short error when they
are not what they should be, and loading a state_dict strictly (every missing, unexpected
or mis-shaped key named in one error)."""
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from .encoder_family import EncoderError


class KeyMismatch(EncoderError):
    """Weights that were read but do not fit the model (keys or shapes)."""


# Leading bytes of files that get passed as checkpoints by mistake, for the error message.
_NOT_TORCH = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
              (b"GIF8", "a GIF image"), (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"),
              (b"MM\x00*", "a TIFF image"), (b"\x08", "an ONNX model or other protobuf"),
              (b"{", "a text or JSON file"), (b"#", "a text file"))
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: zip archive (torch >= 1.6), or pickle


def _not_torch_reason(path: Path) -> str | None:
    """Why `path` is clearly not a `torch.save` file (from its first bytes), else None."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "the file is empty"
    if head.startswith(_TORCH_MAGIC):
        return None
    looks = next((name for magic, name in _NOT_TORCH if head.startswith(magic)), None)
    return "it is not a file written by torch.save" + (f" (it looks like {looks})" if looks else "")


def check_file(path: str | os.PathLike, what: str) -> Path:
    """`path` exists and starts as a `torch.save` file does (its first bytes only: cheap
    enough for a check before anything is written); else one short EncoderError."""
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"{what} not found: {path}")
    try:
        reason = _not_torch_reason(path)
    except OSError as err:
        raise EncoderError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if reason is not None:
        raise EncoderError(f"cannot read {what} {path}: {reason}; pass a .pth file written "
                           "by torch.save") from None
    return path


def load_file(path: str | os.PathLike, what: str) -> object:
    """`torch.load` of a weights file (tensors only), with one short error if it fails:
    not a torch file (e.g. an image), truncated, or holding pickled Python objects."""
    path = check_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's weights_only refusal: several paragraphs about trusting the source
        raise EncoderError(f"cannot read {what} {path}: it holds pickled Python objects, not "
                           "only tensors (e.g. a whole model saved with torch.save(model)); "
                           "save its state_dict() instead") from None
    except Exception as err:
        text = str(err).strip() or type(err).__name__
        first = text.splitlines()[0].split(". ")[0]  # torch's first sentence, not its advice
        raise EncoderError(f"cannot read {what} {path}: truncated or corrupt ({first}); "
                           "copy or download it again") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from a `.pth` file, unwrapped from `{'model': ...}` style containers."""
    obj = load_file(path, "encoder weights file")
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise EncoderError(f"{path} holds no state_dict")
    return obj


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)`, with every missing, unexpected or mis-shaped key
    reported in one error that names `source`."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mis_shaped = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = [f"{label}: {', '.join(keys[:10])}{' …' if len(keys) > 10 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape mismatch", mis_shaped)) if keys]
    if problems:
        raise KeyMismatch(f"{source} does not fit this model — " + "; ".join(problems)
                           + ". Is it a checkpoint of another encoder size or family?")
    module.load_state_dict(state_dict, strict=True)


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header length (8 bytes, little-endian) and a JSON
    header `{...`; torch files start otherwise (see `_TORCH_MAGIC`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False  # missing or unreadable: `read_state_dict` says which
    return not head.startswith(_TORCH_MAGIC) and head[8:9] == b"{"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a `.safetensors` file, on the CPU; one EncoderError if it fails."""
    try:
        from safetensors.torch import load_file as load_safetensors
    except ImportError:
        raise EncoderError(f"{path} is a safetensors file: install the safetensors package "
                           "(pip install -r requirements.txt) to read it") from None
    try:
        return load_safetensors(str(path), device="cpu")
    except Exception as err:
        raise EncoderError(f"cannot read encoder weights file {path}: truncated or corrupt "
                           f"safetensors ({str(err).strip() or type(err).__name__})") from None
