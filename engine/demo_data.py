"""A small MVTec-layout dataset that needs no download (``--demo``).

``build_demo_dataset`` cuts texture classes out of photographs that scikit-image
bundles in its wheel (``skimage.data.brick()``, ``grass()``, ``gravel()``: 512 × 512
grey PNGs under ``skimage/data/``, read without pooch or network; checked with
scikit-image 0.26) and adds synthetic defects with exact masks::

    <root>/<class>/train/good/000.png              RGB, size × size
    <root>/<class>/test/good/000.png
    <root>/<class>/test/<defect>/000.png           defect: scratch, blob, patch
    <root>/<class>/ground_truth/<defect>/000_mask.png   mode L, 0 / 255
    <root>/.dinomaly_demo.json                     marker, written last

Defects: ``scratch`` — 1–3 thick random polylines, dark or bright; ``blob`` — an
irregular ellipse of colour and noise; ``patch`` — a square cut from another class's
texture, magnified 2.5× (from this photograph rotated by 45°, if only one class).

Defaults (3 classes × 16 train + 4 good + 6 anomalous test = 78 images of 256 px,
about 11 MB, built in about a second): small enough that a short CPU training run
with a ViT-S at 224 px plus evaluation stays well under 5 minutes on 2 cores.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from engine.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["build_demo_dataset", "DemoDataError", "TEXTURES", "DEFECTS", "MARKER", "expected_files"]

MARKER = ".dinomaly_demo.json"          # written last: its presence means "complete"
BUILDING = ".dinomaly_demo.building"    # written first: the folder is ours while a build runs
DEFECTS = ("scratch", "blob", "patch")
VERSION = 1                             # bump when the generator changes, so old builds are redone

CROP_FRACTION = 0.625  # side of a crop / side of the photograph (320 of 512 px): one texture scale
# Defects stay inside [MARGIN, 1 - MARGIN] of the image: the test transform's centre
# crop (392 of 448 by default) cuts off the outer 6.25 %, and a defect there would be
# an anomalous image with nothing anomalous left to see.
MARGIN = 0.1
TEXTURES = ("brick", "grass", "gravel")  # skimage.data loaders of bundled photographs


class DemoDataError(Exception):
    """The demo folder cannot be used (it holds files that are not ours)."""


# ----------------------------------------------------------------------------- images

def _rng(seed: int, *names: object) -> np.random.Generator:
    """A generator for one image, independent of the class list and of the other images."""
    key = zlib.crc32("/".join(str(n) for n in names).encode())
    return np.random.default_rng([seed, key])


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """The photograph of a texture class as ``H × W × 3`` uint8 RGB (grey replicated);
    cached and read-only (patches borrow from other classes' photographs)."""
    import skimage.data  # imported here: only the demo needs scikit-image
    if name not in TEXTURES:
        raise ValueError(f"unknown demo class {name!r}; choose from {', '.join(TEXTURES)}")
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3].astype(np.uint8))
    img.flags.writeable = False
    return img


def _crop(rng: np.random.Generator, photo: np.ndarray, size: int, zoom: float = 1.0) -> np.ndarray:
    """A random square crop (at the class's scale, magnified by ``zoom``), random flip and
    rotation by k·90°, resized to ``size × size × 3``."""
    side = int(round(min(photo.shape[:2]) * CROP_FRACTION / zoom))
    y = int(rng.integers(0, photo.shape[0] - side + 1))
    x = int(rng.integers(0, photo.shape[1] - side + 1))
    img = photo[y:y + side, x:x + side]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.rot90(img, int(rng.integers(0, 4)))
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA)


def _scratch(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1–3 thick random polylines, each dark or bright; mask = the drawn pixels."""
    size = img.shape[0]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        start = rng.uniform(0.15, 0.85, 2) * size
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.5) * size
        # three segments with small bends, so scratches are not ruler-straight
        points = [start]
        for _ in range(3):
            angle += rng.uniform(-0.3, 0.3)
            points.append(points[-1] + length / 3 * np.array([np.cos(angle), np.sin(angle)]))
        pts = np.clip(np.array(points), MARGIN * size, (1 - MARGIN) * size).round().astype(np.int32)
        thickness = max(2, int(round(rng.uniform(0.012, 0.03) * size)))
        cv2.polylines(mask, [pts], False, 255, thickness)
    out = img.copy()
    value = rng.uniform(0, 40) if rng.random() < 0.5 else rng.uniform(215, 255)
    out[mask > 0] = value
    return out, mask


def _blob(rng: np.random.Generator, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An ellipse with a noisy rim, filled with a random colour plus grain."""
    size = img.shape[0]
    ellipse = np.zeros((size, size), np.uint8)
    centre = tuple(int(c) for c in rng.uniform(0.25, 0.75, 2) * size)
    axes = tuple(int(a) for a in rng.uniform(0.05, 0.14, 2) * size)
    cv2.ellipse(ellipse, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    # irregular rim: erode the ellipse where smooth noise is low
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 40)
    core = cv2.erode(ellipse, np.ones((3, 3), np.uint8), iterations=max(1, size // 64))
    mask = np.where((ellipse > 0) & ((noise > 0) | (core > 0)), 255, 0).astype(np.uint8)
    colour = rng.uniform(20, 235, 3)
    grain = rng.normal(0, 18, (size, size, 3))
    out = img.astype(np.float64)
    out[mask > 0] = (colour + grain)[mask > 0]
    return np.clip(out, 0, 255).astype(np.uint8), mask


def _patch(rng: np.random.Generator, img: np.ndarray, donor: np.ndarray,
           same: bool) -> tuple[np.ndarray, np.ndarray]:
    """A square from ``donor`` (another texture; or this one rotated by 45°), magnified
    2.5× so that it stands out even between similar grey textures (grass, gravel),
    pasted at a random place; mask = the square."""
    size = img.shape[0]
    side = int(rng.uniform(0.15, 0.3) * size)
    source = _crop(rng, donor, size, zoom=2.5)
    if same:
        rot = cv2.getRotationMatrix2D((size / 2, size / 2), 45.0, 1.0)
        source = cv2.warpAffine(source, rot, (size, size), borderMode=cv2.BORDER_REFLECT)
    sy, sx = (int(v) for v in rng.integers(0, size - side + 1, 2))
    lo, hi = int(MARGIN * size), int((1 - MARGIN) * size) - side
    y, x = (int(v) for v in rng.integers(lo, hi + 1, 2))
    out = img.copy()
    out[y:y + side, x:x + side] = source[sy:sy + side, sx:sx + side]
    mask = np.zeros((size, size), np.uint8)
    mask[y:y + side, x:x + side] = 255
    return out, mask


# ----------------------------------------------------------------------------- files

def _write_png(path: Path, image: np.ndarray) -> None:
    """PNG (RGB ``H × W × 3`` or grey ``H × W``), written atomically in its folder."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode PNG for {path}")
    atomic_write_bytes(path, data.tobytes())


def _defect_counts(n_test_bad: int) -> dict[str, int]:
    """Anomalous images per defect type, as even as possible (6 -> 2, 2, 2)."""
    return {d: n_test_bad // len(DEFECTS) + (i < n_test_bad % len(DEFECTS)) for i, d in enumerate(DEFECTS)}


def expected_files(classes: Sequence[str], n_train: int, n_test_good: int,
                   n_test_bad: int) -> list[str]:
    """Every file of a complete build, relative to the root (``/``-separated)."""
    files = []
    for c in classes:
        files += [f"{c}/train/good/{i:03d}.png" for i in range(n_train)]
        files += [f"{c}/test/good/{i:03d}.png" for i in range(n_test_good)]
        for d, n in _defect_counts(n_test_bad).items():
            files += [f"{c}/test/{d}/{i:03d}.png" for i in range(n)]
            files += [f"{c}/ground_truth/{d}/{i:03d}_mask.png" for i in range(n)]
    return files


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _build_class(root: Path, name: str, classes: Sequence[str], n_train: int, n_test_good: int,
                 n_test_bad: int, size: int, seed: int) -> None:
    """All images and masks of one class (files only; the marker is the caller's)."""
    photo = _photo(name)
    others = [c for c in classes if c != name]
    for split, folder, n in (("train", "train/good", n_train), ("good", "test/good", n_test_good)):
        for i in range(n):
            _write_png(root / name / folder / f"{i:03d}.png", _crop(_rng(seed, name, split, i), photo, size))
    for defect, n in _defect_counts(n_test_bad).items():
        for i in range(n):
            rng = _rng(seed, name, defect, i)
            img = _crop(rng, photo, size)
            if defect == "scratch":
                img, mask = _scratch(rng, img)
            elif defect == "blob":
                img, mask = _blob(rng, img)
            else:
                donor = others[int(rng.integers(len(others)))] if others else name
                img, mask = _patch(rng, img, _photo(donor), same=donor == name)
            _write_png(root / name / "test" / defect / f"{i:03d}.png", img)
            _write_png(root / name / "ground_truth" / defect / f"{i:03d}_mask.png", mask)


def build_demo_dataset(root: str | os.PathLike = "demo_data",
                       classes: Sequence[str] = ("brick", "grass", "gravel"),
                       n_train: int = 16, n_test_good: int = 4, n_test_bad: int = 6,
                       size: int = 256, seed: int = 0) -> Path:
    """Build the demo dataset once and return its root (pass it as ``--data_path``).

    Reuse: if ``root`` holds a complete build with the same parameters (marker file
    plus every expected file), nothing is written. A folder of ours (marker or
    in-progress flag) that is incomplete or was built with other parameters is rebuilt:
    the class folders named in the old and new marker are removed first. A folder that
    is not ours and not empty is never touched: ``DemoDataError`` names it.

    Deterministic: the same arguments give byte-identical files (each image draws
    from its own generator keyed by seed, class, split and index).
    """
    root = Path(root)
    classes = list(classes)
    for c in classes:
        if c not in TEXTURES:
            raise ValueError(f"unknown demo class {c!r}; choose from {', '.join(TEXTURES)}")
    if n_train < 1 or n_test_good < 1 or n_test_bad < 1 or size < 32:
        raise ValueError("the demo needs n_train, n_test_good, n_test_bad >= 1 and size >= 32")
    params = {"version": VERSION, "classes": classes, "n_train": n_train, "n_test_good": n_test_good,
              "n_test_bad": n_test_bad, "size": size, "seed": seed}
    files = expected_files(classes, n_train, n_test_good, n_test_bad)

    marker, building = root / MARKER, root / BUILDING
    if root.exists() and not root.is_dir():
        raise DemoDataError(f"demo data path {root} is a file, not a folder; pass another --data_path")
    old = _read_marker(marker) if marker.exists() else None
    if old == {**params, "files": len(files)} and all((root / f).is_file() for f in files):
        return root  # complete and of these parameters: reuse, write nothing
    ours = marker.exists() or building.exists()
    if root.is_dir() and not ours and any(root.iterdir()):
        raise DemoDataError(
            f"{root} exists, is not empty and was not made by the demo (no {MARKER}); "
            f"the demo never writes into other files: move that folder or choose another path")

    # ours (or new): flag the build first, so an interrupted build is recognised and redone
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(building, json.dumps(params))
    marker.unlink(missing_ok=True)
    for c in set(classes) | set((old or {}).get("classes", [])):
        if c in TEXTURES and (root / c).is_dir():
            shutil.rmtree(root / c)  # a class folder of an earlier build: drop stale images
    for name in classes:
        _build_class(root, name, classes, n_train, n_test_good, n_test_bad, size, seed)
    atomic_write_text(marker, json.dumps({**params, "files": len(files)}, indent=1))
    building.unlink()
    return root
