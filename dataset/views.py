"""Several views of an object stored side by side in one image file (MANTA-Tiny: five views
per PNG): one view of such a file, for display (heatmaps, reports, predictions)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import DatasetError
from .images import load_rgb
from .manta import N_VIEWS, VIEW_WIDTH, split_views


def load_view_part(path: str | os.PathLike, view: int) -> Image.Image:
    """View `view` (0-based) of an image holding an object's views side by side, as RGB: the
    columns `[256·view, 256·(view + 1))`, the last view every column from 1024 on (MANTA-Tiny's
    split, `manta.split_views`)."""
    if not 0 <= view < N_VIEWS:
        raise DatasetError(f"{path}: view {view} of a file of {N_VIEWS} views side by side")
    img = np.asarray(load_rgb(path))
    if img.shape[1] <= (N_VIEWS - 1) * VIEW_WIDTH:
        raise DatasetError(f"image {path} is {img.shape[1]} px wide: not {N_VIEWS} views of "
                           f"{VIEW_WIDTH} px side by side")
    return Image.fromarray(np.ascontiguousarray(split_views(img)[view]))
