"""What the MVTec and Real-IAD datasets share: the test item."""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import Dataset

from .cache import _ImageSource
from .errors import DatasetError
from .images import _header_size, _size_mismatch, load_mask
from .shared_cache import SharedCache


class _AnomalyDataset(Dataset):
    """What the MVTec and Real-IAD datasets share: per item an image (``self.images``), a
    label, a mask path (None for normal images) and the image path. A subclass fills the
    lists in its ``__init__``, then calls ``read_images``."""

    images: _ImageSource

    def __init__(self, transform: Callable, gt_transform: Callable, phase: str) -> None:
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        self.transform = transform
        self.gt_transform = gt_transform
        self.phase = phase
        self.img_paths: list[str] = []
        self.gt_paths: list[str | None] = []
        self.labels: list[int] = []
        self.types: list[str] = []
        self.notes: list[str] = []  # what the loader decided and the user should know

    def add_defect_folder(self, imgs: list[str], masks: list[str | None], defect: str,
                          normal: bool) -> None:
        """One test folder's images and their masks (None for normal ones): label 0 and type
        'good' when `normal`, else label 1 and type `defect`."""
        self.img_paths += imgs
        self.gt_paths += masks
        self.labels += [0 if normal else 1] * len(imgs)
        self.types += ["good" if normal else defect] * len(imgs)

    def read_images(self, cache_images: bool | SharedCache) -> None:
        """Once the lists are filled: the images by index (``cache_images``: decoded now;
        a ``SharedCache``: one copy per machine)."""
        self.images = _ImageSource(self.img_paths, self.transform, cache_images)

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
