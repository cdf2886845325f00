"""The picture of an object made of several images (views, modalities), with its decision:
each image's heatmap (`heatmaps.render_heatmap`: input and map over it, on the class's
colour scale, its own score) side by side, under one header line that gives the object's
decision (`NG` where `object score > threshold`), name, score and threshold, in a frame of
the decision's colour (red NG, green OK). Used by report.html's worst objects and by
predict.py's per-object heatmaps.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from engine.heatmaps import (HEADER_H, NG_BGR, OK_BGR, PAD, _draw_texts, canvas_size, load_view,
                             panel_origins, render_heatmap)


class ViewPicture(NamedTuple):
    """One image of an object, to draw: its file (and part of it, for views side by side
    in one file), map `H×W`, ground truth `H×W` (or None) and score."""
    path: str
    part: int | None
    amap: np.ndarray
    mask: np.ndarray | None
    score: float


def render_object(views: Sequence[ViewPicture], score: float, threshold: float | None,
                  vmin: float, vmax: float, title: str, image_size: int,
                  crop_size: int) -> np.ndarray:
    """The object's picture (module docstring), BGR uint8. Without a threshold (none
    defined) the header gives the score alone and the frame is grey."""
    panels = []
    for k, view in enumerate(views):
        image = load_view(view.path, image_size, crop_size, view.amap.shape, view.part)
        mask = np.zeros(view.amap.shape, bool) if view.mask is None else view.mask
        panels.append(render_heatmap(image, view.amap, mask, view.score, vmin, vmax, f"image {k}"))
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + PAD * (len(panels) - 1)
    canvas = np.full((HEADER_H + height, width, 3), 255, np.uint8)
    x = 0
    for panel in panels:
        canvas[HEADER_H:HEADER_H + panel.shape[0], x:x + panel.shape[1]] = panel
        x += panel.shape[1] + PAD
    if threshold is None:
        head, colour = f"{title}   object score {score:.4f}", (128, 128, 128)
    else:
        anomalous = score > threshold
        head = (f"{'NG' if anomalous else 'OK'}  {title}   object score {score:.4f}  "
                f"threshold {threshold:.4f}")
        colour = NG_BGR if anomalous else OK_BGR
    canvas = _draw_texts(canvas, [((PAD, HEADER_H // 2), head, 13, (0, 0, 0), "lm", width - 2 * PAD)])
    canvas[:2], canvas[-2:], canvas[:, :2], canvas[:, -2:] = colour, colour, colour, colour
    return canvas


def thumbnail_strip(picture: np.ndarray, map_shape: tuple[int, int], n_views: int,
                    side: int) -> np.ndarray:
    """The overlay panels of an object's picture (`render_object` of `n_views` maps of
    `map_shape`), each `side` px on its longer side, side by side: the report's thumbnail."""
    h, w = map_shape
    y, x = panel_origins(h, w)[1]
    width = canvas_size(h, w)[1]
    scale = side / max(h, w)
    parts = [cv2.resize(picture[HEADER_H + y:HEADER_H + y + h, k * (width + PAD) + x:k * (width + PAD) + x + w],
                        (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
             for k in range(n_views)]
    return np.concatenate(parts, axis=1)
