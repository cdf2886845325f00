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
import re
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "DatasetError", "MVTEC_CLASSES", "VISA_CLASSES", "REALIAD_CLASSES",
    "get_data_transforms", "split_resize", "MVTecDataset", "RealIADDataset",
    "mvtec_train_set", "discover_classes", "check_images", "check_mask_sizes", "image_paths",
    "load_rgb", "load_mask", "IMAGE_EXTENSIONS", "READABLE_MODES",
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

# Image files, wherever a folder is listed: the training set's rule (torchvision's
# ImageFolder: these extensions, any case). The reference globbed only *.png, *.JPG and
# *.bmp for test images; every dataset it reads gives the same list here. Hidden files
# and folders (names starting with '.': ``._000.png``, ``.DS_Store``, ``.ipynb_checkpoints``)
# are never read.
IMAGE_EXTENSIONS = IMG_EXTENSIONS  # .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp
MASK_SUFFIX = ".png"  # the preferred mask extension when several files share a stem

# PIL modes a file can hold that load_rgb and load_mask read (LAB, HSV, La: not).
_GREY_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
READABLE_MODES = frozenset(("1", "L", "LA", *_COLOUR_MODES, *_GREY_HIGH_DEPTH_MODES))

# Threads for decoding (PIL releases the GIL while decoding and resizing).
_IO_THREADS = min(8, os.cpu_count() or 1)

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


# ---------------------------------------------------------------- transforms

def get_data_transforms(size: int, isize: int, mean_train: Sequence[float] | None = None,
                        std_train: Sequence[float] | None = None
                        ) -> tuple[transforms.Compose, transforms.Compose]:
    """The reference's transforms (spec §1), in its exact order.

    image: PIL ``H × W`` RGB -> ``Resize((size, size))`` (PIL bilinear, antialiased) -> ``ToTensor``
    -> ``CenterCrop(isize)`` -> ``Normalize`` -> tensor ``3 × isize × isize``.
    mask: PIL ``H × W`` -> ``Resize((size, size))`` (bilinear, fractional edges) -> ``CenterCrop(isize)``
    -> ``ToTensor`` -> tensor ``1 × isize × isize`` in [0, 1] for the mode L masks ``load_mask`` gives.
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


def _mask_pairs(dataset: Dataset) -> list[tuple[str, str]]:
    """``(image, mask)`` path pairs of every anomalous item of ``dataset`` (training sets: none)."""
    if isinstance(dataset, ConcatDataset):
        return [pair for d in dataset.datasets for pair in _mask_pairs(d)]
    if isinstance(dataset, _AnomalyDataset):
        return [(i, m) for i, m in zip(dataset.img_paths, dataset.gt_paths) if m is not None]
    if hasattr(dataset, "samples"):  # ImageFolder, _CachedImages: no masks
        return []
    raise TypeError(f"check_mask_sizes does not know the dataset type {type(dataset).__name__}")


def check_mask_sizes(dataset: Dataset) -> None:
    """Verify that every mask has its image's size (file headers only, in threads); run it
    before training. Accepts this module's datasets and ``ConcatDataset``s of them.

    Raises ``DatasetError`` naming the first mismatched pair, both sizes (W×H), and how many more.
    """
    pairs = _mask_pairs(dataset)
    with ThreadPoolExecutor(_IO_THREADS) as pool:
        img_sizes = list(pool.map(_header_size, [i for i, _ in pairs]))
        mask_sizes = list(pool.map(partial(_header_size, what="mask"), [m for _, m in pairs]))
    bad = [k for k in range(len(pairs)) if img_sizes[k] != mask_sizes[k]]
    if bad:
        k = bad[0]
        more = f" (and {len(bad) - 1} more mismatched masks)" if len(bad) > 1 else ""
        raise _size_mismatch(pairs[k][1], mask_sizes[k], pairs[k][0], img_sizes[k], more)


class _ResizedCache:
    """Each image decoded and resized once, kept as uint8 ``H × W × 3`` arrays (issue 5)."""

    def __init__(self, paths: Sequence[str], resize: transforms.Resize) -> None:
        def load(path: str) -> np.ndarray:
            return np.asarray(resize(load_rgb(path)))

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
        return self.transform(load_rgb(self.paths[idx]))


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


def _is_hidden(name: str) -> bool:
    """``.DS_Store``, macOS ``._000.png``, ``.ipynb_checkpoints``: never read."""
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    """ImageFolder's rule: one of ``IMAGE_EXTENSIONS``, any case; and not hidden."""
    return not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _files(folder: Path) -> list[str]:
    """Sorted joined path strings of the image files in ``folder`` (``_is_image_name``)."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if _is_image_name(name) and os.path.isfile(os.path.join(folder, name)))


def _subfolders(folder: Path) -> list[str]:
    """Sorted names of the folders in ``folder``, hidden ones skipped."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not _is_hidden(d.name))


def discover_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the class folders under ``root`` that have ``train/good`` (``--classes auto``)."""
    root = Path(root)
    _require_dir(root, f"data root not found: {root} — pass --data_path pointing to the folder "
                       "that holds the class folders")
    classes = [name for name in _subfolders(root) if (root / name / "train" / "good").is_dir()]
    if not classes:
        raise DatasetError(f"no class folders with train/good found in {root} — expected "
                           "<data_path>/<class>/train/good/*.png (the MVTec AD layout)")
    return classes


# ---------------------------------------------------------------- masks of a defect folder

def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _name_match(img: str, masks_by_stem: dict[str, list[str]]) -> str | None:
    """The mask of image ``X.<ext>`` by name: ``X_mask.png``, ``X.png``, then ``X_mask.*``, ``X.*``."""
    candidates = masks_by_stem.get(_stem(img) + "_mask", []) + masks_by_stem.get(_stem(img), [])
    png = [m for m in candidates if m.lower().endswith(MASK_SUFFIX)]
    return (png + [m for m in candidates if m not in png] + [None])[0]


def _few(paths: Sequence[str], k: int = 3) -> str:
    """``'a.png, b.png, c.png, … (7 in all)'``: the first ``k`` file names."""
    names = ", ".join(os.path.basename(p) for p in paths[:k])
    return names if len(paths) <= k else f"{names}, … ({len(paths)} in all)"


def _pair_masks(imgs: list[str], img_dir: Path, mask_dir: Path, where: str) -> tuple[list[str], list[str]]:
    """The mask of each anomalous image of ``img_dir``, and notes for the user.

    By name (``_name_match``) when every image has one; masks without an image are then
    ignored, with a note. Otherwise by sorted order (the reference's rule), with a note,
    which needs as many masks as images and must agree with every name match there is.
    """
    masks = _files(mask_dir) if mask_dir.is_dir() else []
    masks_by_stem: dict[str, list[str]] = {}
    for m in masks:
        masks_by_stem.setdefault(_stem(m), []).append(m)
    by_name = {img: _name_match(img, masks_by_stem) for img in imgs}
    unmatched = [img for img in imgs if by_name[img] is None]
    if not unmatched:
        owner: dict[str, str] = {}
        for img, mask in by_name.items():
            if mask in owner:
                raise DatasetError(f"images {owner[mask]} and {img} both pair by name with mask {mask} — "
                                   "rename one of them: each anomalous test image needs its own mask")
            owner[mask] = img
        extra = [m for m in masks if m not in owner]
        notes = [f"{where}: {len(extra)} masks without a test image ignored ({_few(extra)})"] if extra else []
        return [by_name[img] for img in imgs], notes
    if len(imgs) != len(masks):
        folder = "" if mask_dir.is_dir() else " (folder missing)"
        named = "" if len(unmatched) == len(imgs) else f"; no X_mask.png or X.png for {_few(unmatched)}"
        raise DatasetError(
            f"image/mask count mismatch for defect folder {img_dir}: {len(imgs)} images but {len(masks)} "
            f"masks in {mask_dir}{folder}{named} — each anomalous test image needs one mask, named "
            "X_mask.png or X.png for image X.<ext> (else paired by sorted file name)")
    for img, mask in zip(imgs, masks):
        if by_name[img] is not None and by_name[img] != mask:
            raise DatasetError(f"test image {img} has the mask {by_name[img]} by name but {mask} by sorted "
                               f"order (some images of {img_dir} have no mask by name) — name every mask "
                               "X_mask.png or X.png after its image X.<ext>")
    return masks, [f"{where}: masks paired with images by sorted order (no X_mask.png or X.png "
                   f"for {_few(unmatched)})"]


class _AnomalyDataset(Dataset):
    """What the MVTec and Real-IAD datasets share: per item an image (``self.images``), a
    label, a mask path (None for normal images) and the image path."""

    images: _ImageSource
    img_paths: list[str]
    gt_paths: list[str | None]
    labels: list[int]
    gt_transform: Callable
    notes: list[str]  # what the loader decided and the user should know (e.g. masks paired by order)

    def __len__(self) -> int:
        return len(self.img_paths)

    def test_item(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        """``(img, gt, label, img_path)``: ``gt`` all zeros ``1 × H × W`` for a normal image,
        else its transformed mask (one channel, ``load_mask``), which must have the image's size."""
        img = self.images(idx)
        label = self.labels[idx]
        img_path = self.img_paths[idx]
        if label == 0:
            gt = torch.zeros([1, img.shape[-2], img.shape[-1]])
        else:
            mask = load_mask(self.gt_paths[idx])
            img_size = _header_size(img_path)
            if mask.size != img_size:
                raise _size_mismatch(self.gt_paths[idx], mask.size, img_path, img_size)
            gt = self.gt_transform(mask)
        if img.shape[1:] != gt.shape[1:]:
            raise DatasetError(f"mask {self.gt_paths[idx]} gives {tuple(gt.shape[1:])} after the transform, "
                               f"image {img_path} gives {tuple(img.shape[1:])} — use get_data_transforms' pair")
        return img, gt, label, img_path


class MVTecDataset(_AnomalyDataset):
    """One class folder ``root = <data>/<class>`` in the MVTec AD layout (spec §1).

    phase ``'test'``: items ``(img, gt, label, img_path)`` from ``test/<defect>/`` in sorted defect
    order; ``good`` is label 0 with ``gt`` all zeros ``1 × H × W`` (H, W of the transformed image),
    every other folder label 1, image ``X.<ext>`` paired with ``ground_truth/<defect>/X_mask.png``
    or ``X.png`` by name, else (with a line in ``notes``) the i-th image (sorted) with the i-th
    mask (sorted), the reference's rule (identical on MVTec AD).
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
        self.notes: list[str] = []
        if phase == "train":
            self._load_train(root)
        else:
            self._load_test(root)
        self.images = _ImageSource(self.img_paths, transform, cache_images)

    def _load_train(self, root: Path) -> None:
        good = root / "train" / "good"
        _require_dir(good, f"no train/good folder in {root} — training images go in "
                           f"{good}/ (the MVTec AD layout)")
        paths = _files(good)
        if not paths:
            raise DatasetError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in {good} — put the training "
                               "images there")
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
        for defect in _subfolders(test_dir):
            imgs = _files(test_dir / defect)
            masks: list[str | None] = [None] * len(imgs)
            if defect != "good":
                paired, notes = _pair_masks(imgs, test_dir / defect, gt_dir / defect,
                                            f"ground_truth/{defect} of {root}")
                masks = list(paired)
                self.notes += notes
            self.img_paths += imgs
            self.gt_paths += masks
            self.labels += [0 if defect == "good" else 1] * len(imgs)
            self.types += [defect] * len(imgs)
        if not self.img_paths:
            raise DatasetError(f"no test images found in {test_dir}/<defect>/ — expected image files "
                               f"({' '.join(IMAGE_EXTENSIONS)})")

    def __getitem__(self, idx: int) -> tuple:
        return self.test_item(idx)  # the reference's 4-tuple in both phases


def _realiad_record(rec: object, index: int, phase: str, json_path: Path) -> tuple[str, str | None, str]:
    """``(image_path, mask_path or None if normal, anomaly_class)`` of one split-file record.

    ``image_path`` and ``anomaly_class`` are required strings; ``mask_path`` a string for an
    anomalous record (``anomaly_class != 'OK'``), absent or None allowed for a normal one.
    """
    where = f"Real-IAD split file {json_path}: record {index} of '{phase}'"
    fix = "fix or re-extract the split file"
    if not isinstance(rec, dict):
        raise DatasetError(f"{where} is a {type(rec).__name__}, not an object — {fix}")
    if isinstance(rec.get("image_path"), str) and rec["image_path"]:
        where += f" (image_path {rec['image_path']!r})"

    def field(name: str) -> str | None:
        value = rec.get(name)
        if value is not None and not isinstance(value, str):
            raise DatasetError(f"{where} has {name!r} of type {type(value).__name__}, not a string — {fix}")
        return value

    for name in ("image_path", "anomaly_class"):
        if not field(name):
            state = "an empty" if name in rec and rec[name] is not None else "no"
            raise DatasetError(f"{where} has {state} {name!r} field — {fix}")
    mask_path = field("mask_path")
    anomalous = rec["anomaly_class"] != "OK"
    if anomalous and not mask_path:
        raise DatasetError(f"{where} is anomalous ({rec['anomaly_class']!r}) but has no 'mask_path' — {fix}")
    return rec["image_path"], (mask_path if anomalous else None), rec["anomaly_class"]


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
            if not isinstance(records, list):
                raise TypeError(f"'{phase}' is a {type(records).__name__}, not a list")
        except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or encoding
            raise DatasetError(f"Real-IAD split file {json_path} has no readable '{phase}' list ({e!r}) "
                               "— re-extract it from realiad_jsons.zip") from e
        self.transform = transform
        self.gt_transform = gt_transform
        self.phase = phase
        self.img_paths: list[str] = []
        self.gt_paths: list[str | None] = []
        self.labels: list[int] = []
        self.types: list[str] = []
        self.notes: list[str] = []
        for index, rec in enumerate(records):
            image_path, mask_path, anomaly_class = _realiad_record(rec, index, phase, json_path)
            self.img_paths.append(os.path.join(img_root, image_path))
            self.gt_paths.append(None if mask_path is None else os.path.join(img_root, mask_path))
            self.labels.append(int(mask_path is not None))
            self.types.append(anomaly_class)
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


def _visible_image(path: str, root: str) -> bool:
    """ImageFolder's ``is_valid_file``: an image name (``_is_image_name``) with no hidden folder
    between ``root`` and it (ImageFolder walks sub-folders)."""
    parts = os.path.relpath(path, root).split(os.sep)
    return _is_image_name(parts[-1]) and not any(_is_hidden(part) for part in parts[:-1])


class _VisibleImageFolder(ImageFolder):
    """torchvision's ``ImageFolder`` without hidden files and folders: on a tree without them
    the classes, samples and their order are ``ImageFolder``'s."""

    def __init__(self, root: str, transform: Callable, loader: Callable) -> None:
        super().__init__(root, transform=transform, loader=loader,
                         is_valid_file=partial(_visible_image, root=root))

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        classes = _subfolders(Path(directory))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: i for i, name in enumerate(classes)}


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
        # ImageFolder's loader is pil_loader; load_rgb is the same for 8-bit images, scales 16-bit
        # ones, and its errors name the file.
        try:
            folder = _VisibleImageFolder(str(class_dir / "train"), transform=transform, loader=load_rgb)
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
