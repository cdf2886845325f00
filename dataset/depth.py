"""MVTec 3D-AD depth as an image: the z channel turned into a 3-channel heat map, the Dinomaly2
preview code's ``MVTec3DDataset`` recipe."""
from __future__ import annotations

import os

import cv2
import numpy as np

from .errors import DatasetError


def read_depth(path: str | os.PathLike) -> np.ndarray:
    """The z image of a TIFF file, ``H × W`` in the file's dtype (float32 as the preparation
    writes it; 16-bit and float64 files read as they are). ``H × W × 1`` is squeezed. Errors name
    the file."""
    import tifffile  # imported here: only the 3D datasets need it

    try:
        depth = tifffile.imread(str(path))
    except FileNotFoundError as e:
        raise DatasetError(f"depth file not found: {path} — every rgb/<name>.png needs z/<name>.tiff: "
                           "run prepare_data/prepare_mvtec3d.py on the dataset") from e
    except Exception as e:  # tifffile raises many types for a damaged file
        raise DatasetError(f"cannot read depth file {path}: {type(e).__name__}: {e} — replace it, "
                           "or run prepare_data/prepare_mvtec3d.py again") from e
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or depth.dtype.kind not in "uif":
        raise DatasetError(f"depth file {path} holds a {depth.dtype} array of shape {depth.shape}, not one "
                           "channel of depth — the z/ files come from prepare_data/prepare_mvtec3d.py "
                           "(an xyz point cloud is not a z image)")
    return depth


def depth_foreground(depth: np.ndarray) -> np.ndarray:
    """``H × W`` bool: the pixels with a depth (``z > 0``; NaN and infinities are no depth)."""
    return np.isfinite(depth) & (depth > 0)


def depth_to_image(depth: np.ndarray) -> np.ndarray:
    """``H × W`` depth -> ``H × W × 3`` uint8 RGB heat map, as the preview code makes it.

    With ``fg = z > 0``: ``d = (z - min(z[fg])) / (max(z) - min(z[fg]))``, then ``1 - 0.8 d`` (the
    nearest point 1, the farthest 0.2), background 0; ``(d * 255)`` truncated to uint8,
    ``cv2.COLORMAP_HOT``, BGR -> RGB. Float files are computed in their own precision (float32
    as the preview), integer files in float64 (what numpy gives the preview for them).

    Where the preview fails, ours defines: NaN and infinite values are background; a depth
    without foreground (all 0) is a black image; a foreground of one single depth value is
    all 1 (the preview divides 0 by 0 there).
    """
    if depth.dtype.kind in "iub":
        depth = depth.astype(np.float64)
    fg = depth_foreground(depth)
    if not fg.all():
        depth = np.where(fg, depth, depth.dtype.type(0))
    d = np.zeros_like(depth)
    if fg.any():
        low, high = depth[fg].min(), depth.max()
        if high > low:
            d = (depth - low) / (high - low)
            d = 1 - d * 0.8
        else:
            d = np.ones_like(depth)
        d[~fg] = 0
    heat = cv2.applyColorMap((d * 255).astype(np.uint8), cv2.COLORMAP_HOT)  # H × W × 3, BGR
    return np.ascontiguousarray(heat[:, :, ::-1])
