"""`--cache_images`: each image decoded and resized once, kept in RAM as uint8 (issue 5)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .images import _IO_THREADS, load_rgb
from .transforms import split_resize


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


class _CachedImages(Dataset):
    """An ImageFolder's ``samples`` served from the resize cache: items ``(img, label)``."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable) -> None:
        self.samples = samples
        self.images = _ImageSource([p for p, _ in samples], transform, cache_images=True)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.images(idx), self.samples[idx][1]
