"""Frozen DINOv2 encoders by name, with their official weights.

`load('dinov2reg_vit_base_14')` builds the ViT, finds the official checkpoint (downloaded
once into the cache folder), loads it strictly and freezes it.

Cache folder: `$DINOMALY_CACHE` if set, else `~/.cache/dinomaly`. Offline, put the file
named in the error message at the path it gives, or pass `weights=<path to .pth>`.
"""
import os
import pickle
import urllib.error
from pathlib import Path

import torch
from torch import nn

from .dinov2 import DinoVisionTransformer
from .reference_rng import advance_like_dinov1_vit

# size -> (embed_dim, depth, num_heads); spec §2
ARCHS = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
ENCODER_NAMES = tuple(f"{family}_vit_{size}_14" for family in ("dinov2reg", "dinov2")
                      for size in ARCHS)
URL_ROOT = "https://dl.fbaipublicfiles.com/dinov2"


class EncoderError(ValueError):
    """A bad encoder name or weights that cannot be found, fetched or loaded."""


class KeyMismatch(EncoderError):
    """Weights that were read but do not fit the model (keys or shapes)."""


def parse_name(name: str) -> tuple[str, int]:
    """`'dinov2reg_vit_base_14' -> ('base', 4)`: size and number of register tokens."""
    if name not in ENCODER_NAMES:
        raise EncoderError(f"unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}")
    family, _, size, _ = name.split("_")
    return size, 4 if family == "dinov2reg" else 0


def checkpoint_url(name: str) -> str:
    """Official checkpoint URL, e.g. `.../dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth`."""
    size, n_reg = parse_name(name)
    arch = f"vit{size[0]}14"
    suffix = "_reg4" if n_reg else ""
    return f"{URL_ROOT}/dinov2_{arch}/dinov2_{arch}{suffix}_pretrain.pth"


def cache_dir() -> Path:
    return Path(os.environ.get("DINOMALY_CACHE") or Path.home() / ".cache" / "dinomaly")


def cached_path(name: str) -> Path:
    """Where the official checkpoint of `name` lives (or will live) in the cache."""
    return cache_dir() / checkpoint_url(name).rsplit("/", 1)[1]


def download(url: str, dst: Path, progress: bool = True) -> Path:
    """Download `url` to `dst` with torch's own downloader: into a temporary file beside
    `dst`, moved into place when complete (a failed download leaves nothing at `dst`), with
    the permissions of a plain `open` and a progress bar on stderr."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=progress)
    return dst


def official_weights(name: str, progress: bool = True) -> Path:
    """Path of the official checkpoint for `name`, downloading it once if needed."""
    path = cached_path(name)
    if path.is_file():
        return path
    url = checkpoint_url(name)
    try:
        return download(url, path, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise EncoderError(
            f"could not download the {name} weights from {url} ({err}). "
            f"Download that file on a machine with internet access and put it at {path} "
            f"(or set DINOMALY_CACHE to the folder holding it, or pass the .pth path as the "
            f"weights, e.g. --encoder_weights /path/to/file.pth).") from None


def build(name: str, fused_attn: bool = True) -> DinoVisionTransformer:
    """An untrained DINOv2 ViT of the named size (random init, official init scheme)."""
    size, n_reg = parse_name(name)
    dim, depth, heads = ARCHS[size]
    # init_values 1e-8 and offset 0.1: what the reference passes when it builds the encoder
    return DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=dim, depth=depth,
                                 num_heads=heads, init_values=1e-8,
                                 num_register_tokens=n_reg, interpolate_offset=0.1,
                                 fused_attn=fused_attn)


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


def load(name: str, weights: str | os.PathLike = "official",
         fused_attn: bool = True) -> DinoVisionTransformer:
    """A frozen DINOv2 encoder (`eval()`, `requires_grad=False`).

    Args:
        name: one of `ENCODER_NAMES`, e.g. `'dinov2reg_vit_base_14'`.
        weights: `'official'` (download once, then the cache), `'random'` (no
            pretraining: tests, smoke runs) or a path to a `.pth` in the official format.
        fused_attn: `F.scaled_dot_product_attention` (True) or the explicit form.
    """
    # The reference's loader first builds, and drops, a DINOv1 ViT of this size: make its
    # CPU generator draws, whatever `weights` is, so that all later draws match the reference's.
    advance_like_dinov1_vit(parse_name(name)[0])
    model = build(name, fused_attn)
    if weights != "random":
        path = official_weights(name) if weights == "official" else Path(weights)
        load_strict(model, read_state_dict(path), f"encoder weights {path}")
    model.requires_grad_(False)
    return model.eval()
