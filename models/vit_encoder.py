"""Frozen encoders by name, with their official weights (the reference's `vit_encoder.load`).

`load('dinov2reg_vit_base_14')` finds the encoder's family (`encoder_family`, one spec per
family: `dinov2/family.py`, `dinov3/family.py`), builds it, finds the official checkpoint
(downloaded once into the cache folder; gated families, DINOv3, are looked up in the cache
only), loads it strictly and freezes it.

Cache folder: `$DINOMALY_CACHE` if set, else `~/.cache/dinomaly`. Offline, put the file
named in the error message at the path it gives, or pass `weights=<path to the file>`.
"""
import os
import urllib.error
from pathlib import Path

import torch
from torch import nn

from .encoder_family import (EncoderError, encoder_names, encoder_settings,  # noqa: F401
                             find_encoder)
from .weights_file import (KeyMismatch, check_file, load_file, load_strict,  # noqa: F401
                           read_state_dict)


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "ENCODER_NAMES":  # every registered name, families added later included
        return encoder_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_name(name: str) -> tuple[str, int]:
    """`'dinov2reg_vit_base_14' -> ('base', 4)`: size and number of register tokens
    (`'dinov3_vitb16' -> ('base', 4)`: DINOv3's storage tokens are registers)."""
    family, arch = find_encoder(name)
    return arch.size, family.register_tokens


def patch_size(name: str) -> int:
    """The side of the encoder's square patches in pixels (14 for DINOv2, 16 for DINOv3)."""
    return find_encoder(name)[0].patch_size


def target_layers(name: str) -> list[int]:
    """The encoder blocks whose outputs Dinomaly reconstructs."""
    return list(find_encoder(name)[1].target_layers)


def checkpoint_url(name: str) -> str:
    """Official checkpoint URL, e.g. `.../dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth`
    (for DINOv3 the gated one, `.../dinov3/dinov3_vitb16/dinov3_vitb16_pretrain_…pth`)."""
    family, arch = find_encoder(name)
    return family.weights_url(name, arch)


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
    """Path of the official checkpoint for `name`, downloading it once if needed (a gated
    family's is never downloaded: one EncoderError saying how to get it)."""
    family, _ = find_encoder(name)
    path = cached_path(name)
    if path.is_file():
        return path
    if not family.downloadable:
        raise EncoderError(family.missing_weights(name, path) if family.missing_weights else
                           f"the official {name} weights are not in the cache: put them at {path}")
    url = checkpoint_url(name)
    try:
        return download(url, path, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise EncoderError(
            f"could not download the {name} weights from {url} ({err}). "
            f"Download that file on a machine with internet access and put it at {path} "
            f"(or set DINOMALY_CACHE to the folder holding it, or pass the .pth path as the "
            f"weights, e.g. --encoder_weights /path/to/file.pth).") from None


def build(name: str, fused_attn: bool = True) -> nn.Module:
    """An untrained encoder of the named family and size (the family's random init)."""
    family, arch = find_encoder(name)
    return family.build(arch, fused_attn)


def load(name: str, weights: str | os.PathLike = "official", fused_attn: bool = True) -> nn.Module:
    """A frozen encoder (`eval()`, `requires_grad=False`).

    Args:
        name: a registered encoder name (`encoder_names()`), e.g. `'dinov2reg_vit_base_14'`,
            `'dinov3_vitb16'`.
        weights: `'official'` (download once, then the cache; gated families: the cache
            only), `'random'` (no pretraining: tests, smoke runs) or a path to a weights
            file the family reads (the official format; DINOv3: also timm's).
        fused_attn: `F.scaled_dot_product_attention` (True) or the explicit form.
    """
    family, arch = find_encoder(name)
    if family.before_build is not None:  # random draws the reference makes before building
        family.before_build(arch)
    model = family.build(arch, fused_attn)
    if weights != "random":
        path = official_weights(name) if weights == "official" else Path(weights)
        load_strict(model, family.read_weights(path, model), f"encoder weights {path}")
    model.requires_grad_(False)
    return model.eval()
