"""MVTec AD and prepared VisA: one class folder per dataset, and the multi-class training set."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

from torch.utils.data import ConcatDataset, Dataset
from torchvision.datasets import ImageFolder

from .base import _AnomalyDataset
from .cache import _CachedImages
from .errors import DatasetError
from .folders import (IMAGE_EXTENSIONS, NORMAL_FOLDERS, _files, is_hidden, is_image_name,
                      _pair_masks, _require_class_folder, _require_dir, _subfolders,
                      normal_train_folders)
from .images import load_rgb
from .shared_cache import SharedCache


class MVTecDataset(_AnomalyDataset):
    """One class folder ``root = <data>/<class>`` in the MVTec AD layout.

    phase ``'test'``: items ``(img, gt, label, img_path)`` from ``test/<defect>/`` in sorted defect
    order; ``good`` (and BTAD's ``ok``: ``NORMAL_FOLDERS``) is label 0 with ``gt`` all zeros
    ``1 × H × W`` (H, W of the transformed image), every other folder label 1, image
    ``X.<ext>`` paired with ``ground_truth/<defect>/X_mask.png`` or ``X.png`` by name, else
    (with a line in ``notes``) the i-th image (sorted) with the i-th mask (sorted), the
    reference's rule (identical on MVTec AD).
    phase ``'train'``: the same 4-tuples, from ``train/good/`` (BTAD: ``train/ok/``; label 0,
    all-zero ``gt``), as the reference's. (The scripts train on ``mvtec_train_set``, the
    reference's ImageFolder.)

    Args:
        cache_images: decode and resize every image once, at construction (see ``mvtec_train_set``).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable, gt_transform: Callable,
                 phase: str, cache_images: bool | SharedCache = False) -> None:
        super().__init__(transform, gt_transform, phase)
        root = Path(root)
        _require_class_folder(root)
        if phase == "train":
            self._load_train(root)
        else:
            self._load_test(root)
        self.read_images(cache_images)

    def _load_train(self, root: Path) -> None:
        folders = normal_train_folders(root)
        good = root / "train" / "good"
        if not folders:
            raise DatasetError(f"no train/good folder in {root} — training images go in "
                               f"{good}/ (the MVTec AD layout; BTAD's train/ok also works)")
        paths = [path for folder in folders for path in _files(folder)]
        if not paths:
            raise DatasetError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) in {folders[0]} — put the "
                               "training images there")
        self.img_paths = paths
        self.gt_paths = [None] * len(paths)
        self.labels = [0] * len(paths)
        self.types = [folder.name for folder in folders for _ in _files(folder)]

    def _load_test(self, root: Path) -> None:
        test_dir = root / "test"
        gt_dir = root / "ground_truth"
        _require_dir(test_dir, f"no test folder in {root} — test images go in {test_dir}/<defect>/ "
                               "(good/ for normal ones), masks in ground_truth/<defect>/")
        # Sorted, not the reference's os.listdir order: deterministic, and no metric depends on order.
        for defect in _subfolders(test_dir):
            imgs = _files(test_dir / defect)
            masks: list[str | None] = [None] * len(imgs)
            if defect not in NORMAL_FOLDERS:
                paired, notes = _pair_masks(imgs, test_dir / defect, gt_dir / defect,
                                            f"ground_truth/{defect} of {root}")
                masks = list(paired)
                self.notes += notes
            self.img_paths += imgs
            self.gt_paths += masks
            self.labels += [0 if defect in NORMAL_FOLDERS else 1] * len(imgs)
            self.types += [defect] * len(imgs)
        if not self.img_paths:
            raise DatasetError(f"no test images found in {test_dir}/<defect>/ — expected image files "
                               f"({' '.join(IMAGE_EXTENSIONS)})")

    def __getitem__(self, idx: int) -> tuple:
        return self.test_item(idx)  # the reference's 4-tuple in both phases


def _visible_image(path: str, root: str) -> bool:
    """ImageFolder's ``is_valid_file``: an image name (``is_image_name``) with no hidden folder
    between ``root`` and it (ImageFolder walks sub-folders)."""
    parts = os.path.relpath(path, root).split(os.sep)
    return is_image_name(parts[-1]) and not any(is_hidden(part) for part in parts[:-1])


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
                    cache_images: bool | SharedCache = False,
                    samples: Mapping[str, Sequence[str]] | None = None) -> ConcatDataset:
    """The reference's multi-class training set: for class ``i``, ``ImageFolder(root/<class>/train)``
    with every sample relabelled ``i``, concatenated in class order. Items ``(img, i)``.

    The sample order within a class is ImageFolder's (sorted sub-folders, then sorted files),
    so shuffled indices pick the same images as in the reference.

    Args:
        cache_images: decode and ``Resize`` every image once, now (uint8 in RAM, about
            ``3 * size**2`` bytes per image), then apply only ToTensor -> CenterCrop -> Normalize
            per sample; the tensors are exactly the uncached ones. A ``SharedCache``:
            one copy per machine (torchrun).
        samples: per class, the image paths to keep, in this order (Dinomaly2's few-shot
            draw, ``fewshot_samples``); None: every image.
    """
    root = Path(root)
    _require_dir(root, f"data root not found: {root} — pass --data_path pointing to the folder "
                       "that holds the class folders")
    parts: list[Dataset] = []
    for i, cls in enumerate(classes):
        class_dir = root / cls
        _require_class_folder(class_dir)
        good = class_dir / "train" / "good"
        if not normal_train_folders(class_dir):
            raise DatasetError(f"no train/good folder in {class_dir} — training images go in "
                               f"{good}/ (BTAD's train/ok also works)")
        # ImageFolder's loader is pil_loader; load_rgb is the same for 8-bit images, scales 16-bit
        # ones, and its errors name the file.
        try:
            folder = _VisibleImageFolder(str(class_dir / "train"), transform=transform, loader=load_rgb)
        except FileNotFoundError as e:  # ImageFolder's "Found no valid file for the classes ..."
            raise DatasetError(f"no images in a folder of {class_dir / 'train'} ({e}) — put the training "
                               f"images in {good}/") from e
        folder.classes = [cls]
        folder.class_to_idx = {cls: i}
        paths = [path for path, _ in folder.samples] if samples is None else list(samples[cls])
        folder.samples = [(path, i) for path in paths]
        folder.imgs = folder.samples
        folder.targets = [i] * len(folder.samples)
        parts.append(_CachedImages(folder.samples, transform, cache_images) if cache_images
                     else folder)
    if not parts:
        raise DatasetError("no classes given to build the training set from")
    return ConcatDataset(parts)
