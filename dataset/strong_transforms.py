"""Dinomaly2's few-shot training augmentation (the preview code's `get_strong_transforms`).

References: the Dinomaly2 preview code (`dataset.py`: `get_strong_transforms`,
`RandomRotate90`); torchvision `RandomResizedCrop` (10 attempts, then a fallback crop).
"""
from __future__ import annotations

import random
from typing import Sequence

import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

from .transforms import IMAGENET_MEAN, IMAGENET_STD

ANGLES = [0, 90, 180, 270]
ASPECT = (0.95, 1.05)  # the crop's aspect-ratio range


class RandomRotate90:
    """Rotate a PIL image by a multiple of 90° (counter-clockwise), chosen with Python's
    `random.choice([0, 90, 180, 270])` (in a DataLoader worker: the worker's Python state).
    A square image is rotated exactly (nearest, `expand=False`)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        angle = random.choice(ANGLES)
        return TF.rotate(img, angle)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def get_strong_transforms(size: int, isize: int, mean_train: Sequence[float] | None = None,
                          std_train: Sequence[float] | None = None) -> transforms.Compose:
    """The few-shot training transform, PIL image -> tensor `3 × isize × isize`:

    `Resize((size, size))` -> `RandomResizedCrop((isize, isize), scale=(s, s),
    ratio=(0.95, 1.05))` with `s = (isize / size)²` (a window of isize² pixels on average,
    at a random place, resized to isize) -> `RandomRotate90` -> horizontal flip -> vertical
    flip (p = 0.5 each) -> `ToTensor` -> `Normalize` (ImageNet statistics by default).

    Random draws per image, in this order: per crop attempt two torch uniforms (area, log
    aspect), then two torch `randint`s (top, left) when the window fits — up to 10 attempts,
    else the whole image; Python's `random.choice` for the angle; one `torch.rand` per flip.
    With `size == isize` the crop is always the whole image (an attempt fits only when its
    aspect ratio is within about 1/size of 1; after 10 misses the fallback takes it all):
    only the number of draws varies.
    """
    mean_train = IMAGENET_MEAN if mean_train is None else list(mean_train)
    std_train = IMAGENET_STD if std_train is None else list(std_train)
    scale = (isize / size) ** 2
    return transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomResizedCrop((isize, isize), scale=(scale, scale), ratio=ASPECT),
        RandomRotate90(),
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=mean_train, std=std_train),
    ])
