"""Frozen DINOv2 and DINOv3 encoders by name, with their official weights.

`load('dinov2reg_vit_base_14')` builds the ViT, finds the official checkpoint (downloaded
once into the cache folder), loads it strictly and freezes it. DINOv3 (`load('dinov3_vitb16')`)
works the same way except that Meta gates its weights: they are never downloaded, the
official file is looked up in the cache, and a timm-format file is accepted too.

Cache folder: `$DINOMALY_CACHE` if set, else `~/.cache/dinomaly`. Offline, put the file
named in the error message at the path it gives, or pass `weights=<path to .pth>`.
"""
import os
import pickle
import urllib.error
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .dinov2 import DinoVisionTransformer
from .dinov3 import DinoVisionTransformer as DinoV3VisionTransformer
from .dinov3.timm_keys import is_timm_format, timm_to_official
from .reference_rng import advance_like_dinov1_vit

# size -> (embed_dim, depth, num_heads); spec §2
ARCHS = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
DINOV2_NAMES = tuple(f"{family}_vit_{size}_14" for family in ("dinov2reg", "dinov2")
                     for size in ARCHS)
URL_ROOT = "https://dl.fbaipublicfiles.com/dinov2"


class V3Arch(NamedTuple):
    """One DINOv3 ViT/16 (shared/DINOV3.md): its size name, shape, FFN and official file."""
    size: str  # the key of build.TARGET_LAYERS
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # 'mlp' (GELU, ratio 4) or 'swiglu' (ratio 6)
    ffn_ratio: float
    file: str  # official checkpoint name, as Meta's download links give it


DINOV3_ARCHS = {
    "dinov3_vits16": V3Arch("small", 384, 12, 6, "mlp", 4.0,
                            "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
    "dinov3_vits16plus": V3Arch("small_plus", 384, 12, 6, "swiglu", 6.0,
                                "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth"),
    "dinov3_vitb16": V3Arch("base", 768, 12, 12, "mlp", 4.0,
                            "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
    "dinov3_vitl16": V3Arch("large", 1024, 24, 16, "mlp", 4.0,
                            "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
    "dinov3_vith16plus": V3Arch("huge_plus", 1280, 32, 20, "swiglu", 6.0,
                                "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth"),
}
DINOV3_URL_ROOT = "https://dl.fbaipublicfiles.com/dinov3"  # gated: links come by mail
DINOV3_FORM = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
ENCODER_NAMES = DINOV2_NAMES + tuple(DINOV3_ARCHS)


class EncoderError(ValueError):
    """A bad encoder name or weights that cannot be found, fetched or loaded."""


class KeyMismatch(EncoderError):
    """Weights that were read but do not fit the model (keys or shapes)."""


def parse_name(name: str) -> tuple[str, int]:
    """`'dinov2reg_vit_base_14' -> ('base', 4)`: size and number of register tokens
    (`'dinov3_vitb16' -> ('base', 4)`: DINOv3's storage tokens are registers)."""
    if name not in ENCODER_NAMES:
        raise EncoderError(f"unknown encoder {name!r}; valid names: {', '.join(ENCODER_NAMES)}")
    if name in DINOV3_ARCHS:
        return DINOV3_ARCHS[name].size, 4
    family, _, size, _ = name.split("_")
    return size, 4 if family == "dinov2reg" else 0


def patch_size(name: str) -> int:
    """The side of the encoder's square patches in pixels: 14 (DINOv2) or 16 (DINOv3)."""
    parse_name(name)  # a known name
    return 16 if name in DINOV3_ARCHS else 14


def checkpoint_url(name: str) -> str:
    """Official checkpoint URL, e.g. `.../dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth`
    (for DINOv3 the gated one, `.../dinov3/dinov3_vitb16/dinov3_vitb16_pretrain_…pth`)."""
    size, n_reg = parse_name(name)
    if name in DINOV3_ARCHS:
        return f"{DINOV3_URL_ROOT}/{name}/{DINOV3_ARCHS[name].file}"
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
    """Path of the official checkpoint for `name`, downloading it once if needed (DINOv3:
    never downloaded; one EncoderError saying how to get it when it is not in the cache)."""
    path = cached_path(name)
    if path.is_file():
        return path
    if name in DINOV3_ARCHS:
        raise EncoderError(dinov3_missing_message(name, path))
    url = checkpoint_url(name)
    try:
        return download(url, path, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise EncoderError(
            f"could not download the {name} weights from {url} ({err}). "
            f"Download that file on a machine with internet access and put it at {path} "
            f"(or set DINOMALY_CACHE to the folder holding it, or pass the .pth path as the "
            f"weights, e.g. --encoder_weights /path/to/file.pth).") from None


def build(name: str, fused_attn: bool = True) -> DinoVisionTransformer | DinoV3VisionTransformer:
    """An untrained DINOv2 ViT of the named size (random init, official init scheme);
    for a DINOv3 name, `build_dinov3`."""
    size, n_reg = parse_name(name)
    if name in DINOV3_ARCHS:
        return build_dinov3(name, fused_attn)
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
         fused_attn: bool = True) -> DinoVisionTransformer | DinoV3VisionTransformer:
    """A frozen DINOv2 or DINOv3 encoder (`eval()`, `requires_grad=False`).

    Args:
        name: one of `ENCODER_NAMES`, e.g. `'dinov2reg_vit_base_14'`, `'dinov3_vitb16'`.
        weights: `'official'` (download once, then the cache; DINOv3: the cache only),
            `'random'` (no pretraining: tests, smoke runs) or a path to a `.pth` in the
            official format (DINOv3: also a timm-format `.safetensors` or `.pth`).
        fused_attn: `F.scaled_dot_product_attention` (True) or the explicit form.
    """
    if name in DINOV3_ARCHS:
        return load_dinov3(name, weights, fused_attn)
    # The reference's loader first builds, and drops, a DINOv1 ViT of this size: make its
    # CPU generator draws, whatever `weights` is, so that all later draws match the reference's.
    advance_like_dinov1_vit(parse_name(name)[0])
    model = build(name, fused_attn)
    if weights != "random":
        path = official_weights(name) if weights == "official" else Path(weights)
        load_strict(model, read_state_dict(path), f"encoder weights {path}")
    model.requires_grad_(False)
    return model.eval()


# ---- DINOv3 (shared/DINOV3.md): gated weights, timm-format files accepted ----

def build_dinov3(name: str, fused_attn: bool = True) -> DinoV3VisionTransformer:
    """An untrained DINOv3 ViT/16 of the named size (a sane random init)."""
    arch = DINOV3_ARCHS[name]
    return DinoV3VisionTransformer(patch_size=16, embed_dim=arch.embed_dim, depth=arch.depth,
                                   num_heads=arch.num_heads, ffn_ratio=arch.ffn_ratio,
                                   ffn=arch.ffn, n_storage_tokens=4, init_values=1e-5,
                                   fused_attn=fused_attn)


def dinov3_missing_message(name: str, path: Path) -> str:
    """The one message for official DINOv3 weights absent from the cache."""
    file = DINOV3_ARCHS[name].file
    return (f"the official {name} weights, {file}, are not in the cache ({path} does not "
            f"exist), and Meta's DINOv3 weights cannot be downloaded without permission: "
            f"request access with Meta's DINOv3 download form ({DINOV3_FORM}); the links it "
            f"mails you follow the pattern {checkpoint_url(name)}. Put the file at {path} "
            f"(or set DINOMALY_CACHE to the folder holding it), or pass its path as the weights "
            f"(e.g. --encoder_weights /path/to/{file}); a timm-format DINOv3 file "
            f"(.safetensors or .pth) is accepted the same way.")


def _is_safetensors(path: Path) -> bool:
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


def read_dinov3_state_dict(path: Path, head_dim: int) -> dict[str, torch.Tensor]:
    """An official-format DINOv3 state_dict from an official `.pth` or a timm-format file
    (safetensors or `.pth`), converted by `dinov3.timm_keys.timm_to_official`."""
    state_dict = read_safetensors(path) if _is_safetensors(path) else read_state_dict(path)
    if is_timm_format(state_dict):
        state_dict = timm_to_official(state_dict, head_dim=head_dim)
    return state_dict


def load_dinov3(name: str, weights: str | os.PathLike = "official",
                fused_attn: bool = True) -> DinoV3VisionTransformer:
    """A frozen DINOv3 encoder; `weights` as in `load`. It is always in eval mode."""
    model = build_dinov3(name, fused_attn)
    if weights != "random":
        path = official_weights(name) if weights == "official" else Path(weights)
        head_dim = model.embed_dim // model.num_heads
        load_strict(model, read_dinov3_state_dict(path, head_dim), f"encoder weights {path}")
    model.requires_grad_(False)
    return model.eval()
