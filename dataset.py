"""Datasets and transforms of Dinomaly (spec §1), with the reference's public names.

Layouts:
- MVTec AD and prepared VisA: ``<data>/<class>/{train/good, test/<defect>, ground_truth/<defect>}``.
- Real-IAD: ``<data>/realiad_1024/<category>/...`` with the split in
  ``<data>/realiad_jsons/realiad_jsons/<category>.json``.

Items: training ``(img, label)``; test ``(img, gt, label, img_path)`` with
``img`` ``3 × isize × isize`` (normalised), ``gt`` ``1 × isize × isize`` in [0, 1]
(all zeros for normal images), ``label`` 0 normal / 1 anomalous, ``img_path`` the
joined path string.

Every bad input raises ``DatasetError`` with one message that names the path and
says what to do.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder

__all__ = [
    "DatasetError", "MVTEC_CLASSES", "VISA_CLASSES", "REALIAD_CLASSES",
    "get_data_transforms", "split_resize", "MVTecDataset", "RealIADDataset",
    "mvtec_train_set", "discover_classes", "check_images", "image_paths",
]

MVTEC_CLASSES = ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule",
                 "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"]
VISA_CLASSES = ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
                "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
REALIAD_CLASSES = ["audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood",
                   "mint", "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug",
                   "porcelain_doll", "regulator", "rolled_strip_base", "sim_card_set", "switch",
                   "tape", "terminalblock", "toothbrush", "toy", "toy_brick", "transistor1", "usb",
                   "usb_adaptor", "u_block", "vcpill", "wooden_beads", "woodstick", "zipper"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Test images: the reference globs *.png, *.JPG and *.bmp (case-sensitive). We also
# take lowercase *.jpg, which the reference silently skipped (it would then mis-pair
# or drop such images); every dataset the reference reads gives the same list here.
TEST_IMAGE_SUFFIXES = (".png", ".JPG", ".bmp", ".jpg")
MASK_SUFFIX = ".png"

# Threads for decoding (PIL releases the GIL while decoding and resizing).
_IO_THREADS = min(8, os.cpu_count() or 1)


class DatasetError(Exception):
    """A dataset on disk is missing, incomplete or unreadable; the message says where and what to do."""


# ---------------------------------------------------------------- transforms

def get_data_transforms(size: int, isize: int, mean_train: Sequence[float] | None = None,
                        std_train: Sequence[float] | None = None
                        ) -> tuple[transforms.Compose, transforms.Compose]:
    """The reference's transforms (spec §1), in its exact order.

    image: PIL ``H × W`` RGB -> ``Resize((size, size))`` (PIL bilinear, antialiased) -> ``ToTensor``
    -> ``CenterCrop(isize)`` -> ``Normalize`` -> tensor ``3 × isize × isize``.
    mask: PIL ``H × W`` -> ``Resize((size, size))`` (bilinear, fractional edges) -> ``CenterCrop(isize)``
    -> ``ToTensor`` -> tensor ``C × isize × isize`` in [0, 1] (C = 1 for mode L masks).
    """
    mean_train = IMAGENET_MEAN if mean_train is None else list(mean_train)
    std_train = IMAGENET_STD if std_train is None else list(std_train)
    data_transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.CenterCrop(isize),
        transforms.Normalize(mean=mean_train, std=std_train),
    ])
    gt_transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.CenterCrop(isize),
        transforms.ToTensor(),
    ])
    return data_transform, gt_transform


def split_resize(transform: Callable) -> tuple[transforms.Resize, transforms.Compose]:
    """Split ``Compose([Resize, *rest])`` into ``(Resize, Compose(rest))`` for the image cache.

    ``rest(resize(img))`` is ``transform(img)`` step for step, so cached results are exact.
    """
    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, transforms.Compose) or not steps or not isinstance(steps[0], transforms.Resize):
        raise ValueError("the image cache needs a transforms.Compose whose first step is Resize "
                         f"(as get_data_transforms returns); got {transform!r}")
    return steps[0], transforms.Compose(list(steps[1:]))


# ---------------------------------------------------------------- file access

def _load_rgb(path: str) -> Image.Image:
    """torchvision's ``pil_loader`` (open, convert to RGB), with errors naming the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {path}: {e} — replace or remove this file") from e


def _load_mask(path: str) -> Image.Image:
    """Open a mask as the reference does (no convert: mode L stays L, RGB masks stay RGB)."""
    try:
        mask = Image.open(path)
        mask.load()
        return mask
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read mask {path}: {e} — replace or remove this file") from e


def _check_one(path: str) -> str | None:
    """Return None if ``path`` opens and decodes, else the reason (cheap: no full decode of PNGs)."""
    try:
        with Image.open(path) as img:
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


def image_paths(dataset: Dataset) -> list[str]:
    """Every image and mask file ``dataset`` reads (for ``check_images``).

    Understands this module's datasets, torchvision ``ImageFolder`` and ``ConcatDataset``s of them.
    """
    if isinstance(dataset, ConcatDataset):
        return [p for d in dataset.datasets for p in image_paths(d)]
    if isinstance(dataset, (MVTecDataset, RealIADDataset)):
        return list(dataset.img_paths) + [p for p in dataset.gt_paths if p is not None]
    if hasattr(dataset, "samples"):  # ImageFolder, _CachedImages
        return [p for p, _ in dataset.samples]
    raise TypeError(f"image_paths does not know the dataset type {type(dataset).__name__}")


class _ResizedCache:
    """Each image decoded and resized once, kept as uint8 ``H × W × 3`` arrays (issue 5)."""

    def __init__(self, paths: Sequence[str], resize: transforms.Resize) -> None:
        def load(path: str) -> np.ndarray:
            return np.asarray(resize(_load_rgb(path)))

        # Decoded eagerly in the main process, so DataLoader workers share it (fork).
        with ThreadPoolExecutor(_IO_THREADS) as pool:
            self.arrays = list(pool.map(load, paths))

    def __getitem__(self, idx: int) -> Image.Image:
        return Image.fromarray(self.arrays[idx])


class _ImageSource:
    """Produces transformed images by index: decode + full transform, or cache + remaining steps."""

    def __init__(self, paths: Sequence[str], transform: Callable, cache_images: bool) -> None:
        self.paths = paths
        self.transform = transform
        self.cache: _ResizedCache | None = None
        if cache_images:
            resize, self.rest = split_resize(transform)
            self.cache = _ResizedCache(paths, resize)

    def __call__(self, idx: int) -> torch.Tensor:
        if self.cache is not None:
            return self.rest(self.cache[idx])
        return self.transform(_load_rgb(self.paths[idx]))


# ---------------------------------------------------------------- folders

def _require_dir(path: Path, message: str) -> None:
    if not path.is_dir():
        raise DatasetError(message)


def _require_class_folder(root: Path) -> None:
    """``root`` is one class folder ``<data>/<class>``; say which level is missing."""
    if not root.parent.is_dir():
        raise DatasetError(f"data root not found: {root.parent} — pass --data_path pointing to the "
                           "folder that holds the class folders")
    _require_dir(root, f"class folder not found: {root} — check the class names (--classes) "
                       f"against the folders in {root.parent}")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Sorted joined path strings of the files in ``folder`` with one of ``suffixes`` (case-sensitive)."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(suffixes) and os.path.isfile(os.path.join(folder, name)))


def discover_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the class folders under ``root`` that have ``train/good`` (``--classes auto``)."""
    root = Path(root)
    _require_dir(root, f"data root not found: {root} — pass --data_path pointing to the folder "
                       "that holds the class folders")
    classes = sorted(d.name for d in root.iterdir() if (d / "train" / "good").is_dir())
    if not classes:
        raise DatasetError(f"no class folders with train/good found in {root} — expected "
                           "<data_path>/<class>/train/good/*.png (the MVTec AD layout)")
    return classes


class _AnomalyDataset(Dataset):
    """What the MVTec and Real-IAD datasets share: per item an image (``self.images``), a
    label, a mask path (None for normal images) and the image path."""

    images: _ImageSource
    img_paths: list[str]
    gt_paths: list[str | None]
    labels: list[int]
    gt_transform: Callable

    def __len__(self) -> int:
        return len(self.img_paths)

    def test_item(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        """``(img, gt, label, img_path)``: ``gt`` all zeros ``1 × H × W`` for a normal image,
        else its transformed mask, which must match the image's size."""
        img = self.images(idx)
        label = self.labels[idx]
        img_path = self.img_paths[idx]
        if label == 0:
            gt = torch.zeros([1, img.shape[-2], img.shape[-1]])
        else:
            gt = self.gt_transform(_load_mask(self.gt_paths[idx]))
        if img.shape[1:] != gt.shape[1:]:
            raise DatasetError(f"mask {self.gt_paths[idx]} gives {tuple(gt.shape[1:])} after the transform, "
                               f"image {img_path} gives {tuple(img.shape[1:])} — use get_data_transforms' pair")
        return img, gt, label, img_path


class MVTecDataset(_AnomalyDataset):
    """One class folder ``root = <data>/<class>`` in the MVTec AD layout (spec §1).

    phase ``'test'``: items ``(img, gt, label, img_path)`` from ``test/<defect>/`` in sorted defect
    order; ``good`` is label 0 with ``gt`` all zeros ``1 × H × W`` (H, W of the transformed image),
    every other folder label 1, its i-th image (sorted) paired with the i-th mask (sorted) of
    ``ground_truth/<defect>/``.
    phase ``'train'``: the same 4-tuples, from ``train/good/`` (label 0, all-zero ``gt``), as
    the reference's. (The scripts train on ``mvtec_train_set``, the reference's ImageFolder.)

    Args:
        cache_images: decode and resize every image once, at construction (see ``mvtec_train_set``).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable, gt_transform: Callable,
                 phase: str, cache_images: bool = False) -> None:
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        root = Path(root)
        _require_class_folder(root)
        self.transform = transform
        self.gt_transform = gt_transform
        self.phase = phase
        self.img_paths: list[str] = []
        self.gt_paths: list[str | None] = []
        self.labels: list[int] = []
        self.types: list[str] = []
        if phase == "train":
            self._load_train(root)
        else:
            self._load_test(root)
        self.images = _ImageSource(self.img_paths, transform, cache_images)

    def _load_train(self, root: Path) -> None:
        good = root / "train" / "good"
        _require_dir(good, f"no train/good folder in {root} — training images go in "
                           f"{good}/ (the MVTec AD layout)")
        paths = _files(good, TEST_IMAGE_SUFFIXES)
        if not paths:
            raise DatasetError(f"no images (*.png, *.JPG, *.jpg, *.bmp) in {good} — put the training images there")
        self.img_paths = paths
        self.gt_paths = [None] * len(paths)
        self.labels = [0] * len(paths)
        self.types = ["good"] * len(paths)

    def _load_test(self, root: Path) -> None:
        test_dir = root / "test"
        gt_dir = root / "ground_truth"
        _require_dir(test_dir, f"no test folder in {root} — test images go in {test_dir}/<defect>/ "
                               "(good/ for normal ones), masks in ground_truth/<defect>/")
        # Sorted, not the reference's os.listdir order: deterministic, and no metric depends on order.
        for defect in sorted(d.name for d in test_dir.iterdir() if d.is_dir()):
            imgs = _files(test_dir / defect, TEST_IMAGE_SUFFIXES)
            if defect == "good":
                masks: list[str | None] = [None] * len(imgs)
            else:
                mask_dir = gt_dir / defect
                masks = _files(mask_dir, (MASK_SUFFIX,)) if mask_dir.is_dir() else []
                if len(imgs) != len(masks):
                    where = "" if mask_dir.is_dir() else " (folder missing)"
                    raise DatasetError(
                        f"image/mask count mismatch for defect folder {test_dir / defect}: {len(imgs)} images "
                        f"but {len(masks)} masks in {mask_dir}{where} — each anomalous test image needs "
                        "one *.png mask; they are paired by sorted file name")
            self.img_paths += imgs
            self.gt_paths += masks
            self.labels += [0 if defect == "good" else 1] * len(imgs)
            self.types += [defect] * len(imgs)
        if not self.img_paths:
            raise DatasetError(f"no test images found in {test_dir}/<defect>/ — expected *.png, *.JPG, "
                               "*.jpg or *.bmp files")

    def __getitem__(self, idx: int) -> tuple:
        return self.test_item(idx)  # the reference's 4-tuple in both phases


class RealIADDataset(_AnomalyDataset):
    """One Real-IAD category (spec §1): items ``(img, label)`` for ``'train'``,
    ``(img, gt, label, img_path)`` for ``'test'``; ``anomaly_class == 'OK'`` is label 0 with an
    all-zero ``1 × H × W`` gt, anything else label 1 with the mask at ``mask_path``.
    """

    def __init__(self, root: str | os.PathLike, category: str, transform: Callable,
                 gt_transform: Callable, phase: str, cache_images: bool = False) -> None:
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        root = Path(root)
        _require_dir(root, f"data root not found: {root} — pass --data_path pointing to the Real-IAD "
                           "folder that holds realiad_1024/ and realiad_jsons/")
        img_root = root / "realiad_1024" / category
        _require_dir(img_root, f"category folder not found: {img_root} — check the category name "
                               "and that the 1024 px images are unpacked under realiad_1024/")
        json_path = root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"
        if not json_path.is_file():
            raise DatasetError(f"Real-IAD split file not found: {json_path} — unpack realiad_jsons.zip "
                               f"into {root / 'realiad_jsons'}")
        try:
            with open(json_path) as f:
                records = json.load(f)[phase]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"Real-IAD split file {json_path} has no readable '{phase}' list ({e!r}) "
                               "— re-extract it from realiad_jsons.zip") from e
        self.transform = transform
        self.gt_transform = gt_transform
        self.phase = phase
        self.img_paths: list[str] = []
        self.gt_paths: list[str | None] = []
        self.labels: list[int] = []
        self.types: list[str] = []
        for rec in records:
            anomalous = rec["anomaly_class"] != "OK"
            if anomalous and not rec.get("mask_path"):
                raise DatasetError(f"record {rec['image_path']} in {json_path} is anomalous but has no "
                                   "mask_path — fix the split file")
            self.img_paths.append(os.path.join(img_root, rec["image_path"]))
            self.gt_paths.append(os.path.join(img_root, rec["mask_path"]) if anomalous else None)
            self.labels.append(int(anomalous))
            self.types.append(rec["anomaly_class"])
        if not self.img_paths:
            raise DatasetError(f"the '{phase}' list in {json_path} is empty")
        self.images = _ImageSource(self.img_paths, transform, cache_images)

    def __getitem__(self, idx: int) -> tuple:
        if self.phase == "train":
            return self.images(idx), self.labels[idx]
        return self.test_item(idx)


# ---------------------------------------------------------------- training set of the MVTec/VisA scripts

class _CachedImages(Dataset):
    """An ImageFolder's ``samples`` served from the resize cache: items ``(img, label)``."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable) -> None:
        self.samples = samples
        self.images = _ImageSource([p for p, _ in samples], transform, cache_images=True)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.images(idx), self.samples[idx][1]


def mvtec_train_set(root: str | os.PathLike, classes: Sequence[str], transform: Callable,
                    cache_images: bool = False) -> ConcatDataset:
    """The reference's multi-class training set: for class ``i``, ``ImageFolder(root/<class>/train)``
    with every sample relabelled ``i``, concatenated in class order. Items ``(img, i)``.

    The sample order within a class is ImageFolder's (sorted sub-folders, then sorted files),
    so shuffled indices pick the same images as in the reference.

    Args:
        cache_images: decode and ``Resize`` every image once, now (uint8 in RAM, about
            ``3 * size**2`` bytes per image), then apply only ToTensor -> CenterCrop -> Normalize
            per sample; the tensors are exactly the uncached ones.
    """
    root = Path(root)
    _require_dir(root, f"data root not found: {root} — pass --data_path pointing to the folder "
                       "that holds the class folders")
    parts: list[Dataset] = []
    for i, cls in enumerate(classes):
        class_dir = root / cls
        _require_class_folder(class_dir)
        good = class_dir / "train" / "good"
        _require_dir(good, f"no train/good folder in {class_dir} — training images go in {good}/")
        # Same loader as ImageFolder's default (pil_loader), but errors name the file.
        try:
            folder = ImageFolder(str(class_dir / "train"), transform=transform, loader=_load_rgb)
        except FileNotFoundError as e:  # ImageFolder's "Found no valid file for the classes ..."
            raise DatasetError(f"no images in a folder of {class_dir / 'train'} ({e}) — put the training "
                               f"images in {good}/") from e
        folder.classes = [cls]
        folder.class_to_idx = {cls: i}
        folder.samples = [(path, i) for path, _ in folder.samples]
        folder.imgs = folder.samples
        folder.targets = [i] * len(folder.samples)
        parts.append(_CachedImages(folder.samples, transform) if cache_images else folder)
    if not parts:
        raise DatasetError("no classes given to build the training set from")
    return ConcatDataset(parts)
