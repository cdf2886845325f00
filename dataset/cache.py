"""`--cache_images`: each image decoded and resized once, kept in RAM as uint8;
under torchrun one copy per machine (`shared_cache.SharedCache`, passed as `cache_images`)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .errors import DatasetError
from .images import _IO_THREADS, load_rgb
from .shared_cache import SharedCache
from .transforms import split_resize


class _ResizedCache:
    """Each image decoded and resized once, kept as uint8 ``H × W × 3`` arrays:
    this process's own list, or with `shared` one ``N × H × W × 3`` array per machine."""

    def __init__(self, paths: Sequence[str], resize: transforms.Resize,
                 shared: SharedCache | None = None) -> None:
        def load(path: str) -> np.ndarray:
            return np.asarray(resize(load_rgb(path)))

        # Decoded eagerly in the main process, so DataLoader workers share it (fork).
        if shared is None:
            with ThreadPoolExecutor(_IO_THREADS) as pool:
                self.arrays = list(pool.map(load, paths))
            return
        size = resize.size if isinstance(resize.size, (list, tuple)) else ()
        if len(size) != 2:
            raise DatasetError("a shared image cache needs a fixed Resize((height, width)), "
                               f"not Resize({resize.size})")

        def fill(array: np.ndarray) -> None:
            def put(i: int) -> None:
                array[i] = load(paths[i])  # a size other than (height, width) raises here
            with ThreadPoolExecutor(_IO_THREADS) as pool:
                list(pool.map(put, range(len(paths))))

        self.arrays = shared.array((len(paths), *size, 3), fill)

    def __getitem__(self, idx: int) -> Image.Image:
        return Image.fromarray(self.arrays[idx])


class _ImageSource:
    """Produces transformed images by index: decode + full transform, or cache + remaining steps."""

    def __init__(self, paths: Sequence[str], transform: Callable,
                 cache_images: bool | SharedCache) -> None:
        self.paths = paths
        self.transform = transform
        self.cache: _ResizedCache | None = None
        if cache_images:
            resize, self.rest = split_resize(transform)
            shared = cache_images if isinstance(cache_images, SharedCache) else None
            self.cache = _ResizedCache(paths, resize, shared)

    def __call__(self, idx: int) -> torch.Tensor:
        if self.cache is not None:
            return self.rest(self.cache[idx])
        return self.transform(load_rgb(self.paths[idx]))


class _CachedImages(Dataset):
    """An ImageFolder's ``samples`` served from the resize cache: items ``(img, label)``."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable,
                 cache_images: bool | SharedCache = True) -> None:
        self.samples = samples
        self.images = _ImageSource([p for p, _ in samples], transform, cache_images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.images(idx), self.samples[idx][1]
