"""Image and mask files as they come: any mode, bit depth and mask encoding."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np
from PIL import Image

from .errors import DatasetError

# PIL modes a file can hold that load_rgb and load_mask read (LAB, HSV, La: not).
_GREY_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
READABLE_MODES = frozenset(("1", "L", "LA", *_COLOUR_MODES, *_GREY_HIGH_DEPTH_MODES))

# Threads for decoding (PIL releases the GIL while decoding and resizing).
_IO_THREADS = min(8, os.cpu_count() or 1)


def _grey_to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """A high-depth grey image ``H × W`` (mode I;16*, I or F) as uint8 ``H × W``, scaled by its depth.

    16-bit: ``v >> 8`` (gives back ``v`` from ``v*257`` and from ``v*256``); I: 16-bit if every
    value fits 0..65535, else ``v >> 24``; F: 0..1 times 255 if the maximum is <= 1, else clipped
    to 0..255; rounded. Negative values become 0.
    """
    if mode == "F":
        values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0).clip(0, None)
        if values.max(initial=0) <= 1:
            values = values * 255
        return np.rint(values.clip(0, 255)).astype(np.uint8)
    values = arr.astype(np.int64).clip(0, None)
    shift = 8 if values.max(initial=0) <= 65535 else 24  # I;16* always fit 0..65535
    return (values >> shift).clip(0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """PIL image of a mode in ``READABLE_MODES`` -> RGB: ``convert('RGB')`` (the reference, alpha
    dropped), except high-depth grey, which PIL would clip at 255: scaled to 8 bits, then grey -> RGB."""
    if img.mode in _GREY_HIGH_DEPTH_MODES:
        return Image.fromarray(_grey_to_8bit(np.asarray(img), img.mode)).convert("RGB")
    # The transparency only sets info of the result, never its pixels; dropping it first spares
    # PIL's "Palette images with Transparency expressed in bytes" warning (and is thread-safe).
    img.info.pop("transparency", None)
    return img.convert("RGB")


def _unsupported_mode(img: Image.Image) -> str | None:
    """None if ``img``'s mode can be read, else the reason (header only)."""
    if img.mode in READABLE_MODES:
        return None
    return f"image mode {img.mode} is not supported (save it as RGB, 8- or 16-bit grey, palette or CMYK)"


_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as PIL RGB ``H × W``: torchvision's ``pil_loader`` (``convert('RGB')``) for
    every 8-bit mode (1, L, LA, P, RGB, RGBA, CMYK, ...); 16-bit, 32-bit and float grey scaled by
    their depth (see ``_grey_to_8bit``). Errors name the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            reason = _unsupported_mode(img)
            if reason is None:
                return _to_rgb(img)
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read image {path}: {e} — replace or remove this file") from e
    raise DatasetError(f"cannot read image {path}: {reason} — replace or remove this file")


def _mask_channel(img: Image.Image) -> np.ndarray:
    """A mask of any readable mode as one channel ``H × W``: 1 -> 0/255; L, I*, F as they are;
    LA -> L (alpha dropped); palette and colour modes -> RGB colours, max over the channels
    (anomalous where any channel is; the alpha of RGBA is not the mask)."""
    if img.mode == "1":
        return np.asarray(img.convert("L"))
    if img.mode in ("L", *_GREY_HIGH_DEPTH_MODES):
        return np.asarray(img)
    if img.mode == "LA":
        return np.asarray(img.getchannel(0))
    return np.asarray(_to_rgb(img)).max(axis=2)


def _ceil_ratio(values: np.ndarray, top: int) -> np.ndarray:
    """``ceil(values * 255 / top)`` in integers (no wrap-around; positive stays positive)."""
    return (values.astype(np.int64) * 255 + top - 1) // top


def _mask_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """One mask channel ``H × W`` -> uint8 ``H × W`` on the 0..255 scale.

    Binary (values in {0, m}, m > 0: 0/1, 0/255, 0/65535, a colour): m -> 255. Otherwise 8-bit as
    it is, 16-bit (and I within 0..65535) ``ceil(v*255/65535)``, wider I ``ceil(v*255/(2**32-1))``,
    F times 255 if its maximum is <= 1, then clipped to 0..255 and rounded up. Negatives become 0.
    """
    if mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    values = values.clip(0, None)
    top = values.max(initial=0)
    if top > 0 and np.all((values == 0) | (values == top)):
        return np.where(values > 0, 255, 0).astype(np.uint8)
    if mode == "F":
        scaled = (values * 255 if top <= 1 else values).clip(0, 255)
        rounded = np.ceil(scaled - 1e-3)  # up, but float32 noise (51.00001) is not a step
        return np.where(scaled > 0, np.maximum(rounded, 1), 0).astype(np.uint8)
    if mode in _GREY_HIGH_DEPTH_MODES:
        return _ceil_ratio(values, 65535 if top <= 65535 else 2**32 - 1).astype(np.uint8)
    return values.astype(np.uint8)


def load_mask(path: str | os.PathLike) -> Image.Image:
    """Open a mask file as PIL ``'L'`` ``H × W`` on the 0..255 scale, whatever its encoding.

    One channel (``_mask_channel``), then 0..255 (``_mask_to_8bit``): an 8-bit grey mask stays
    bit-identical (MVTec's 0/255: the reference's gt), a binary mask of any depth becomes 0/255.
    Errors name the file.
    """
    try:
        with Image.open(path) as img:
            reason = _unsupported_mode(img)
            if reason is None:
                return Image.fromarray(_mask_to_8bit(_mask_channel(img), img.mode))
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read mask {path}: {e} — replace or remove this file") from e
    raise DatasetError(f"cannot read mask {path}: {reason} — replace or remove this file")


def _check_one(path: str) -> str | None:
    """Return None if ``path`` opens, has a readable mode and decodes, else the reason
    (cheap: no full decode of PNGs)."""
    try:
        with Image.open(path) as img:
            reason = _unsupported_mode(img)
            if reason is not None:
                return reason
            if img.format == "PNG":
                img.verify()  # walks every chunk with its CRC: catches truncation and corruption
            elif img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()  # 1/8-scale DCT decode still reads the whole entropy stream
            else:
                img.load()
    except Exception as e:  # any failure to decode is a bad file, whatever PIL raises
        return f"{type(e).__name__}: {e}"
    return None


def check_images(paths: Iterable[str | os.PathLike]) -> None:
    """Verify that every image (or mask) file exists and decodes; run it before training.

    PNGs are verified chunk by chunk, JPEGs decoded at 1/8 scale, other formats fully,
    in parallel threads. Raises ``DatasetError`` naming the first bad file (and how many more).
    """
    paths = [str(p) for p in paths]
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        reasons = list(pool.map(_check_one, paths))
    bad = [(p, r) for p, r in zip(paths, reasons) if r is not None]
    if bad:
        path, reason = bad[0]
        more = f" (and {len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise DatasetError(f"cannot read image {path}: {reason}{more} — replace or remove the file")


def _header_size(path: str, what: str = "image") -> tuple[int, int]:
    """``(W, H)`` of an image file from its header alone (no decode)."""
    try:
        with Image.open(path) as img:
            return img.size
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read {what} {path}: {e} — replace or remove this file") from e


def _size_mismatch(mask_path: str, mask_size: tuple[int, int], img_path: str,
                   img_size: tuple[int, int], more: str = "") -> DatasetError:
    return DatasetError(f"mask {mask_path} is {mask_size[0]}×{mask_size[1]} (W×H) but its image {img_path} "
                        f"is {img_size[0]}×{img_size[1]}{more} — each mask must have its image's size "
                        "(a transposed or resized mask?): fix or replace the mask")
