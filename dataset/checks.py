"""Checks of a dataset's files before training: every image decodes, every mask has its
image's size."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

from torch.utils.data import ConcatDataset, Dataset, Subset

from .images import _IO_THREADS, _header_size, _size_mismatch


def _unknown(dataset: Dataset, what: str) -> TypeError:
    """A dataset type that does not say which files it reads: a programming error."""
    return TypeError(f"{what} does not know the dataset type {type(dataset).__name__}: give it "
                     "`img_paths` and `gt_paths` lists (None for an image without a mask), a "
                     "`samples` list of (path, label), or a `files()` method")


def _leaves(dataset: Dataset) -> list[Dataset]:
    """The datasets that hold files, inside ``ConcatDataset``s and ``Subset``s."""
    if isinstance(dataset, ConcatDataset):
        return [leaf for d in dataset.datasets for leaf in _leaves(d)]
    if isinstance(dataset, Subset):
        return _leaves(dataset.dataset)
    return [dataset]


def _has_lists(dataset: Dataset) -> bool:
    return hasattr(dataset, "img_paths") and hasattr(dataset, "gt_paths")


def image_paths(dataset: Dataset) -> list[str]:
    """Every image and mask file ``dataset`` reads (for ``check_images``): from an
    ``image_files()`` method (multi-view and multi-modal datasets: their depth TIFFs, meshes
    and point lists, which PIL does not decode, are in their ``files()`` only), else a
    ``files()`` method, else its ``img_paths`` and ``gt_paths`` lists (this package's
    datasets), else its ``samples`` (torchvision's ``ImageFolder``); ``ConcatDataset``s and
    ``Subset``s of them."""
    paths: list[str] = []
    for leaf in _leaves(dataset):
        if callable(getattr(leaf, "image_files", None)):
            paths += leaf.image_files()
        elif callable(getattr(leaf, "files", None)):
            paths += leaf.files()
        elif _has_lists(leaf):
            paths += list(leaf.img_paths) + [p for p in leaf.gt_paths if p is not None]
        elif hasattr(leaf, "samples"):  # ImageFolder, _CachedImages
            paths += [p for p, _ in leaf.samples]
        else:
            raise _unknown(leaf, "image_paths")
    return paths


def _mask_pairs(dataset: Dataset) -> list[tuple[str, str]]:
    """``(image, mask)`` path pairs of every anomalous item of ``dataset`` (training sets: none):
    from a ``mask_pairs()`` method, else ``img_paths`` and ``gt_paths``."""
    pairs: list[tuple[str, str]] = []
    for leaf in _leaves(dataset):
        if callable(getattr(leaf, "mask_pairs", None)):
            pairs += leaf.mask_pairs()
        elif _has_lists(leaf):
            pairs += [(i, m) for i, m in zip(leaf.img_paths, leaf.gt_paths) if m is not None]
        elif not hasattr(leaf, "samples"):  # ImageFolder, _CachedImages: no masks
            raise _unknown(leaf, "check_mask_sizes")
    return pairs


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
