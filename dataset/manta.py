"""MANTA-Tiny: five views of one object side by side in one PNG, the Dinomaly2 preview code's
``MANTATinyDataset``."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .base import _AnomalyDataset
from .errors import DatasetError
from .folders import _pair_masks, _require_class_folder, _require_dir, _subfolders, is_image_name
from .images import _READ_ERRORS, _size_mismatch, load_mask, load_rgb

NORMAL_FOLDERS = ("good", "ok")
VIEW_WIDTH = 256  # each view is 256 px wide; the fifth takes every column from 1024 on
N_VIEWS = 5


def split_views(array: np.ndarray) -> list[np.ndarray]:
    """An ``H × W [× C]`` array -> its five views: columns ``[0:256]``, ``[256:512]``,
    ``[512:768]``, ``[768:1024]``, ``[1024:]``."""
    return [array[:, k * VIEW_WIDTH:(k + 1) * VIEW_WIDTH] for k in range(N_VIEWS - 1)] + \
           [array[:, (N_VIEWS - 1) * VIEW_WIDTH:]]


def _pngs(folder: Path) -> list[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if is_image_name(name) and name.lower().endswith(".png"))


def _raw_mask(path: str) -> np.ndarray:
    """A mask as the preview reads it: an 8-bit grey PNG's values as stored (0/255, or 0/1);
    other modes through ``load_mask`` (one channel, 0..255)."""
    try:
        with Image.open(path) as img:
            if img.mode == "L":
                return np.array(img)
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read mask {path}: {e} — replace or remove this file") from e
    return np.array(load_mask(path))


class MANTATinyDataset(_AnomalyDataset):
    """One MANTA-Tiny class ``root = <data>/<group>/<class>``; every PNG holds five views.

    phase ``'train'``: ``<root>/train/good/*.png`` (``ok`` too); item ``(img, 0)``, ``img``
    ``3 × H × W``: one view drawn with Python's ``random.randint(0, 4)`` (the DataLoader
    worker's ``random`` state, as the preview), through ``transform``.
    phase ``'test'``: ``<root>/test/<defect>/*.png``, masks in ``<root>/ground_truth/<defect>/``
    (paired by name, else by sorted order); item ``(imgs, gts, labels, img_path)``: ``imgs``
    ``5 × 3 × H × W``, ``gts`` ``5 × 1 × H × W`` (zeros for normal images, else each view's
    part of the mask through ``gt_transform``), ``labels`` int32 ``[5]``.

    Per-view labels, ``binary_masks=False`` (the preview): ``int(max(gt_view))``, 1 only where a
    transformed mask pixel is exactly 1.0 (a stored 255); masks coded 0/1, or a defect whose
    resized mask peaks below 255, give label 0. ``binary_masks=True``: masks of any binary
    encoding (0/1, 0/255, palette, 16-bit) read as 0/255 (``load_mask``), and a view is
    anomalous if any of its transformed mask pixels is > 0.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable, gt_transform: Callable,
                 phase: str, binary_masks: bool = False) -> None:
        super().__init__(transform, gt_transform, phase)  # the lists, filled below
        self.binary_masks = binary_masks
        root = Path(root)
        _require_class_folder(root)
        folder = root / phase
        _require_dir(folder, f"no {phase} folder in {root} — MANTA-Tiny keeps {phase}/<defect>/*.png per class")
        for sub in _subfolders(folder):
            imgs = _pngs(folder / sub)
            normal = sub in NORMAL_FOLDERS
            if phase == "train" and not normal:
                raise DatasetError(f"training folder {folder / sub} is not good/ (or ok/) — training images "
                                   f"are normal: move them to {folder / 'good'}/ or remove the folder")
            masks: list[str | None] = [None] * len(imgs)
            if not normal:
                paired, notes = _pair_masks(imgs, folder / sub, root / "ground_truth" / sub,
                                            f"ground_truth/{sub} of {root}")
                masks, self.notes = list(paired), self.notes + notes
            self.add_defect_folder(imgs, masks, sub, normal)
        if not self.img_paths:
            raise DatasetError(f"no images in {folder}/<defect>/*.png — expected the MANTA-Tiny layout")

    def files(self) -> list[str]:
        """Every file the items read: the five-view images and masks."""
        return self.img_paths + [m for m in self.gt_paths if m is not None]

    def image_files(self) -> list[str]:
        return self.files()

    def mask_pairs(self) -> list[tuple[str, str]]:
        """``(image, mask)`` of every anomalous item (a mask holds the five views too)."""
        return [(i, m) for i, m in zip(self.img_paths, self.gt_paths) if m is not None]

    def _views(self, idx: int) -> list[np.ndarray]:
        img = np.asarray(load_rgb(self.img_paths[idx]))
        if img.shape[1] <= (N_VIEWS - 1) * VIEW_WIDTH:
            raise DatasetError(f"image {self.img_paths[idx]} is {img.shape[1]} px wide — a MANTA-Tiny image "
                               f"holds five {VIEW_WIDTH} px views side by side (more than "
                               f"{(N_VIEWS - 1) * VIEW_WIDTH} px)")
        return split_views(img)

    def _masks(self, idx: int, shape: tuple[int, int]) -> torch.Tensor:
        """``5 × 1 × H × W``: each view's part of the mask through ``gt_transform``."""
        path = self.gt_paths[idx]
        mask = np.array(load_mask(path)) if self.binary_masks else _raw_mask(path)
        if mask.shape[:2] != shape:
            raise _size_mismatch(path, (mask.shape[1], mask.shape[0]), self.img_paths[idx], (shape[1], shape[0]))
        return torch.stack([self.gt_transform(Image.fromarray(view)) for view in split_views(mask)])

    def __getitem__(self, idx: int) -> tuple:
        views = self._views(idx)
        if self.phase == "train":
            view = views[random.randint(0, N_VIEWS - 1)]
            return self.transform(Image.fromarray(view)), 0
        imgs = torch.stack([self.transform(Image.fromarray(view)) for view in views])
        if self.labels[idx] == 0:
            gts = torch.zeros([N_VIEWS, 1, imgs.shape[-2], imgs.shape[-1]])
        else:
            shape = (views[0].shape[0], sum(v.shape[1] for v in views))
            gts = self._masks(idx, shape)
        if self.binary_masks:
            labels = (gts.flatten(1) > 0).any(dim=1).int()
        else:
            labels = gts.flatten(1).max(dim=1)[0].int()
        return imgs, gts, labels, self.img_paths[idx]
