"""Checks of a dataset's files before training: every image decodes, every mask has its
image's size."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

from torch.utils.data import ConcatDataset, Dataset

from .base import _AnomalyDataset
from .images import _IO_THREADS, _header_size, _size_mismatch
from .mvtec import MVTecDataset
from .realiad import RealIADDataset


def image_paths(dataset: Dataset) -> list[str]:
    """Every image and mask file ``dataset`` reads (for ``check_images``).

    Understands this module's datasets, torchvision ``ImageFolder`` and ``ConcatDataset``s of them.
    Multi-view and multi-modal datasets give theirs by ``image_files()`` (depth TIFFs, meshes and
    point lists, which PIL does not decode, are in their ``files()`` only).
    """
    if isinstance(dataset, ConcatDataset):
        return [p for d in dataset.datasets for p in image_paths(d)]
    if hasattr(dataset, "image_files"):  # multi-view and multi-modal datasets (their files(): all)
        return dataset.image_files()
    if isinstance(dataset, (MVTecDataset, RealIADDataset)):
        return list(dataset.img_paths) + [p for p in dataset.gt_paths if p is not None]
    if hasattr(dataset, "samples"):  # ImageFolder, _CachedImages
        return [p for p, _ in dataset.samples]
    raise TypeError(f"image_paths does not know the dataset type {type(dataset).__name__}")


def _mask_pairs(dataset: Dataset) -> list[tuple[str, str]]:
    """``(image, mask)`` path pairs of every anomalous item of ``dataset`` (training sets: none)."""
    if isinstance(dataset, ConcatDataset):
        return [pair for d in dataset.datasets for pair in _mask_pairs(d)]
    if hasattr(dataset, "mask_pairs"):  # multi-view and multi-modal datasets
        return dataset.mask_pairs()
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
