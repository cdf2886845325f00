"""Real-IAD and Real-IAD Variety as multi-view objects: the Dinomaly2 preview code's
``RealIADDatasetv2``, and the multi-view script's choice of layout and classes."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import _ImageSource
from .classes import MANTA_CLASSES
from .errors import DatasetError
from .folders import _require_dir
from .images import _header_size, _size_mismatch, load_mask, load_rgb
from .shared_cache import SharedCache

# (split, version) of the multi-view script: Real-IAD Variety when 'Variety' is in --data_path
VARIETY_LAYOUT = ("realiadvariety_jsons", "realiadvariety_raw")
REALIAD_LAYOUT = ("realiad_jsons/realiad_jsons", "realiad_1024")

_Record = tuple[str, "str | None", str]  # image_path, mask_path (None if absent), anomaly_class


def object_key(image_path: str) -> str:
    """The object a view belongs to: the folders of ``image_path`` joined without separators
    (``'NG/AK/S0101/x_C1.jpg'`` -> ``'NGAKS0101'``), as the preview groups them."""
    return "".join(image_path.split("/")[:-1])


def multiview_layout(data_path: str | os.PathLike) -> tuple[str, str]:
    """``(split, version)`` for ``RealIADDatasetv2``, the multi-view script's rule: Real-IAD Variety
    (``realiadvariety_jsons``, ``realiadvariety_raw``) if ``'Variety'`` is in the path, else
    Real-IAD (``realiad_jsons/realiad_jsons``, ``realiad_1024``)."""
    return VARIETY_LAYOUT if "Variety" in str(data_path) else REALIAD_LAYOUT


def multiview_classes(data_path: str | os.PathLike) -> list[str]:
    """The multi-view script's classes: MANTA-Tiny's 38 ``group/class`` folders if ``'MANTA'`` is
    in the path, else the sorted json names of the layout's split folder.

    The preview always lists ``<data_path>/realiadvariety_jsons``, which plain Real-IAD does not
    have (it stops there); ours lists the split folder of the layout it reads.
    """
    if "MANTA" in str(data_path):
        return list(MANTA_CLASSES)
    split_dir = Path(data_path) / multiview_layout(data_path)[0]
    _require_dir(split_dir, f"split folder not found: {split_dir} — unpack the dataset's json files there "
                            "(one <class>.json per class)")
    classes = sorted(name[:-len(".json")] for name in os.listdir(split_dir)
                     if name.endswith(".json") and not name.startswith("."))
    if not classes:
        raise DatasetError(f"no <class>.json files in {split_dir}")
    return classes


def _read_records(json_path: Path, phase: str) -> list[_Record]:
    """The ``phase`` records of a split file as ``(image_path, mask_path or None, anomaly_class)``."""
    if not json_path.is_file():
        raise DatasetError(f"split file not found: {json_path} — check the class name and the split folder")
    try:
        with open(json_path) as f:
            records = json.load(f)[phase]
        if not isinstance(records, list):
            raise TypeError(f"'{phase}' is a {type(records).__name__}, not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"split file {json_path} has no readable '{phase}' list ({e!r}) — re-extract it") from e
    parsed = []
    for index, rec in enumerate(records):
        where = f"split file {json_path}: record {index} of '{phase}'"
        if not isinstance(rec, dict):
            raise DatasetError(f"{where} is a {type(rec).__name__}, not an object — fix or re-extract the file")
        for name in ("image_path", "anomaly_class"):
            if not isinstance(rec.get(name), str) or not rec[name]:
                raise DatasetError(f"{where} has no string {name!r} — fix or re-extract the file")
        mask = rec.get("mask_path")
        if mask is not None and not isinstance(mask, str):
            raise DatasetError(f"{where} has a {type(mask).__name__} 'mask_path' — fix or re-extract the file")
        parsed.append((rec["image_path"], mask or None, rec["anomaly_class"]))
    if not parsed:
        raise DatasetError(f"the '{phase}' list in {json_path} is empty")
    return parsed


def _group(records: list[_Record], json_path: Path) -> list[list[_Record]]:
    """Records grouped by ``object_key``, objects in sorted key order, views in file order. Every
    object must have the same number of views (the preview's numpy arrays need it too)."""
    objects: dict[str, list[_Record]] = {}
    for rec in records:
        objects.setdefault(object_key(rec[0]), []).append(rec)
    counts = Counter(len(views) for views in objects.values())
    if len(counts) > 1:
        common = counts.most_common(1)[0][0]
        odd = next(key for key in sorted(objects) if len(objects[key]) != common)
        raise DatasetError(f"split file {json_path}: object {odd!r} has {len(objects[odd])} views but "
                           f"{counts[common]} other objects have {common} — a multi-view batch needs the same "
                           "number of views per object: fix the file or remove that object's records")
    return [objects[key] for key in sorted(objects)]


class RealIADDatasetv2(Dataset):
    """One Real-IAD (or Real-IAD Variety) class as the preview's ``RealIADDatasetv2`` reads it.

    Images in ``<root>/<version>/<category>/`` (or ``…/<category>/<category>/`` if that folder
    exists), split from ``<root>/<split>/<category>.json``; records ``{image_path, mask_path,
    anomaly_class}`` with paths relative to the image folder.

    Items:
    - ``'train'``: ``(img 3 × H × W, label)``, one per record in file order, ``label`` a numpy
      bool ``anomaly_class != 'OK'`` (a labelled record without ``mask_path`` is fine here: the
      preview crashed on it, no training item reads a mask);
    - ``'train'`` with ``five_view_train``: per object ``(imgs V × 3 × H × W, ones(V) uint8)``;
    - ``'test'``: per object ``(imgs V × 3 × H × W, gts V × 1 × H × W, labels bool [V], [V paths])``;
      a view is anomalous if ``anomaly_class != 'OK'`` and it has a ``mask_path`` (an NG view
      without mask counts as normal, as in the preview); normal views get zero masks.

    Objects are grouped by ``object_key``, in sorted key order, views in file order; an object
    whose view count differs from the others' stops with a ``DatasetError`` naming it.
    ``img_paths``/``gt_paths``/``labels`` are flat per record for single-view training, else
    per object (lists of V). ``cache_images`` (single-view training only; see
    ``mvtec_train_set``): every image decoded and resized once, now.
    """

    def __init__(self, root: str | os.PathLike, category: str, transform: Callable,
                 gt_transform: Callable, phase: str, five_view_train: bool = False,
                 split: str = "realiad_jsons", version: str = "realiad_1024",
                 cache_images: bool | SharedCache = False) -> None:
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        self.transform, self.gt_transform, self.phase = transform, gt_transform, phase
        self.five_view_train, self.version = five_view_train, version
        self.notes: list[str] = []
        root = Path(root)
        _require_dir(root, f"data root not found: {root} — pass the folder that holds {version}/ and {split}/")
        img_dir = root / version / category
        _require_dir(img_dir, f"class folder not found: {img_dir} — check the class name and that the "
                              f"images are unpacked under {version}/")
        if (img_dir / category).is_dir():  # archives that unpack into <category>/<category>/
            img_dir = img_dir / category
        self.img_root = str(img_dir)
        json_path = root / split / f"{category}.json"
        records = _read_records(json_path, phase)
        if phase == "train" and not five_view_train:
            self.img_paths = [os.path.join(img_dir, r[0]) for r in records]
            self.labels = [r[2] != "OK" for r in records]
            self.gt_paths = [os.path.join(img_dir, r[1]) if label and r[1] else None
                             for r, label in zip(records, self.labels)]
            self.images = _ImageSource(self.img_paths, transform, cache_images)
            return
        objects = _group(records, json_path)
        self.img_paths = [[os.path.join(img_dir, r[0]) for r in views] for views in objects]
        if phase == "train":
            self.labels = [[False] * len(views) for views in objects]
        else:
            self.labels = [[r[2] != "OK" and r[1] is not None for r in views] for views in objects]
        self.gt_paths = [[os.path.join(img_dir, r[1]) if label else None for r, label in zip(views, labels)]
                         for views, labels in zip(objects, self.labels)]

    @property
    def grouped(self) -> bool:
        """True if items are objects (test, five-view training), False for single views."""
        return self.phase == "test" or self.five_view_train

    def __len__(self) -> int:
        return len(self.img_paths)

    def _flat(self, lists: list) -> list:
        return [p for views in lists for p in views] if self.grouped else list(lists)

    def files(self) -> list[str]:
        """Every file the items read: the views' images, then the masks of anomalous views."""
        masks = [m for m in self._flat(self.gt_paths) if m is not None] if self.phase == "test" else []
        return self._flat(self.img_paths) + masks

    def image_files(self) -> list[str]:
        return self.files()

    def mask_pairs(self) -> list[tuple[str, str]]:
        """``(image, mask)`` of every anomalous test view."""
        if self.phase != "test":
            return []
        return [(i, m) for i, m in zip(self._flat(self.img_paths), self._flat(self.gt_paths)) if m is not None]

    def _view(self, img_path: str, gt_path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.transform(load_rgb(img_path))
        if gt_path is None:
            return img, torch.zeros([1, img.shape[-2], img.shape[-1]])
        mask = load_mask(gt_path)
        if mask.size != _header_size(img_path):
            raise _size_mismatch(gt_path, mask.size, img_path, _header_size(img_path))
        return img, self.gt_transform(mask)

    def __getitem__(self, idx: int) -> tuple:
        if self.phase == "train" and not self.five_view_train:
            return self.images(idx), np.bool_(self.labels[idx])
        paths = self.img_paths[idx]
        if self.phase == "train":
            imgs = torch.stack([self.transform(load_rgb(p)) for p in paths])
            return imgs, torch.ones(len(paths), dtype=torch.uint8)
        views = [self._view(p, m) for p, m in zip(paths, self.gt_paths[idx])]
        imgs = torch.stack([img for img, _ in views])
        gts = torch.stack([gt for _, gt in views])
        return imgs, gts, torch.tensor(self.labels[idx], dtype=torch.bool), list(paths)
