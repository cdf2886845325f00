"""Dinomaly2's few-shot draw: which training images of each class a few-shot run sees.

References: the Dinomaly2 preview code (`dinomaly_fewshot.py`: per class, its
`ImageFolder(<class>/train).samples` replaced by `random.sample(samples, shot)`).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

from .errors import DatasetError
from .folders import _require_class_folder, _require_dir
from .images import load_rgb
from .mvtec import _VisibleImageFolder


def fewshot_samples(data_path: str | os.PathLike, item_list: Sequence[str], shot: int,
                    seed: int = 1) -> dict[str, list[str]]:
    """`{class: [shot image paths, in the order drawn]}`, as the preview code draws them.

    Python's global `random` is seeded with `seed` first (the preview's `setup_seed`, before
    anything else draws from it); then for each class of `item_list`, in order, one
    `random.sample` of `shot` from the sorted training images of `<data_path>/<class>/train`
    (ImageFolder's order: sub-folder, then file name; hidden files and folders skipped).
    The global `random` state afterwards is the preview's too. Pass the result to
    `mvtec_train_set(..., samples=...)`.
    """
    if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
        raise DatasetError(f"--shot must be a whole number of images, at least 1; got {shot!r}")
    root = Path(data_path)
    _require_dir(root, f"data root not found: {root} — pass --data_path pointing to the folder "
                       "that holds the class folders")
    random.seed(seed)
    drawn = {}
    for cls in item_list:
        train = root / cls / "train"
        _require_class_folder(root / cls)
        _require_dir(train, f"no train folder in {root / cls} — training images go in "
                            f"{train}/good/")
        try:
            paths = [path for path, _ in _VisibleImageFolder(str(train), None, load_rgb).samples]
        except FileNotFoundError as err:  # no class folder, or no image in them
            raise DatasetError(f"no training images in {train} ({err}) — put them in "
                               f"{train}/good/") from None
        if shot > len(paths):
            raise DatasetError(f"--shot {shot} is more than the {len(paths)} training images of "
                               f"class {cls} ({train}): pass --shot {len(paths)} or less")
        drawn[cls] = random.sample(paths, shot)
    return drawn
