"""Real-IAD: one category per dataset, its split from the category's json file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .base import _AnomalyDataset
from .errors import DatasetError
from .folders import _require_dir
from .shared_cache import SharedCache


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
    """One Real-IAD category: items ``(img, label)`` for ``'train'``,
    ``(img, gt, label, img_path)`` for ``'test'``; ``anomaly_class == 'OK'`` is label 0 with an
    all-zero ``1 × H × W`` gt, anything else label 1 with the mask at ``mask_path``.
    """

    def __init__(self, root: str | os.PathLike, category: str, transform: Callable,
                 gt_transform: Callable, phase: str,
                 cache_images: bool | SharedCache = False) -> None:
        super().__init__(transform, gt_transform, phase)
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
        for index, rec in enumerate(records):
            image_path, mask_path, anomaly_class = _realiad_record(rec, index, phase, json_path)
            self.img_paths.append(os.path.join(img_root, image_path))
            self.gt_paths.append(None if mask_path is None else os.path.join(img_root, mask_path))
            self.labels.append(int(mask_path is not None))
            self.types.append(anomaly_class)
        if not self.img_paths:
            raise DatasetError(f"the '{phase}' list in {json_path} is empty")
        self.read_images(cache_images)

    def __getitem__(self, idx: int) -> tuple:
        if self.phase == "train":
            return self.images(idx), self.labels[idx]
        return self.test_item(idx)
