"""Anomaly heatmaps and score histograms as PNG files (``--save_maps``).

For one class, ``save_class_heatmaps`` writes::

    <out_dir>/maps/<class>/<defect>/<stem>_score<0.1234>.png   one per test image
    <out_dir>/maps/<class>/_histogram.png                      image scores, normal vs anomalous
    <out_dir>/maps/<class>/_objects_histogram.png              object scores (test sets of objects)

An image of an object whose name (folder and stem) another image of the class shares (views
side by side in one file, modalities in parallel folders) is named
``<stem>_view<k>_score<…>.png``; a view of a shared file is shown by its part of the file.

A heatmap picture is, top to bottom: a header line (class/defect/file, score,
label); two panels of the map's size ``H × W`` side by side,
``[input + ground-truth outline | anomaly map over the input + outline]``; a
footer with the class's colour scale in numbers ("scale 0.012 to 0.341") and a
colour bar that marks the image score. One colour scale per class (by default
the min / max over all its maps), so pictures of one class compare directly.

Drawing uses OpenCV and Pillow only (no matplotlib). Every PNG is written
atomically (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dataset import load_rgb
from dataset.views import load_view_part
from engine.fileio import atomic_write_bytes
from engine.objects import shared_file_views, shared_name_views

__all__ = [
    "save_class_heatmaps", "class_scale", "format_scale", "format_number", "colorize",
    "load_view", "render_heatmap", "render_decision", "render_histogram", "heatmap_path", "defect_folder",
    "panel_origins",
    "canvas_size", "write_png_atomic", "OUTLINE_BGR", "HISTOGRAM_NAME", "OBJECTS_HISTOGRAM_NAME",
]

# layout of a heatmap picture, in pixels
PAD = 4            # margin around and between the panels
HEADER_H = 20      # one text line above the panels
FOOTER_H = 34      # scale text (left) and colour bar with its numbers (right) below the panels
BAR_H = 10         # height of the colour bar in the footer

# colours (BGR). Magenta occurs neither in the JET colour map nor in most
# photographs, so the ground-truth outline stays visible on both panels.
OUTLINE_BGR = (255, 0, 255)
NORMAL_BGR = (200, 140, 40)     # histogram: normal images (blue)
ANOMALOUS_BGR = (40, 60, 220)   # histogram: anomalous images (red)
NG_BGR = (40, 40, 220)          # decision frame: anomalous (red)
OK_BGR = (60, 160, 60)          # decision frame: normal (green)
ALPHA = 0.5                     # weight of the colour map in the overlay
COLORMAP = cv2.COLORMAP_JET

HISTOGRAM_NAME = "_histogram.png"   # leading underscore: sorts before the defect folders
OBJECTS_HISTOGRAM_NAME = "_objects_histogram.png"
_SCORE_NAME = re.compile(r"^(?P<stem>.+)_score[^/]*\.png$")
_WORKERS = min(4, os.cpu_count() or 1)  # PIL decoding and OpenCV drawing release the GIL


# ----------------------------------------------------------------------------- scale and colour

def class_scale(maps: np.ndarray, vmin: float | None = None,
                vmax: float | None = None) -> tuple[float, float]:
    """The class's colour scale: ``vmin`` / ``vmax`` where given, else the min / max
    over all finite values of ``maps`` (any shape). Always returns ``vmin < vmax``
    so that normalising never divides by zero (a constant class gets a tiny span)."""
    values = np.asarray(maps, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if vmin is not None:
        lo = float(vmin)
    else:
        lo = float(finite.min()) if finite.size else 0.0
    if vmax is not None:
        hi = float(vmax)
    else:
        hi = float(finite.max()) if finite.size else 1.0
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-12)
    return lo, hi


def format_number(value: float, span: float) -> str:
    """``value`` with enough decimals to show two significant digits of ``span``
    (at least 3): 0.012 and 0.341 -> ``0.012``, ``0.341``; 0.00012 -> ``0.00012``."""
    if not math.isfinite(value):
        return str(value)
    decimals = 3
    if span > 0 and math.isfinite(span):
        decimals = min(max(3, 1 - math.floor(math.log10(span))), 9)
    return f"{value:.{decimals}f}"


def format_scale(vmin: float, vmax: float) -> str:
    """The scale as stated in every picture of a class: ``scale 0.012 to 0.341``
    ("to", not a dash: Pillow's bundled font has no en dash, and a hyphen would read
    as a minus sign next to negative numbers)."""
    span = vmax - vmin
    return f"scale {format_number(vmin, span)} to {format_number(vmax, span)}"


def colorize(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """``H × W`` float map -> ``H × W × 3`` uint8 BGR JET colours, ``vmin`` blue, ``vmax`` red
    (values outside the scale are clipped, NaN counts as ``vmin``)."""
    norm = (np.asarray(amap, dtype=np.float32) - vmin) / (vmax - vmin)
    norm = np.nan_to_num(norm, nan=0.0, posinf=1.0, neginf=0.0)
    levels = np.clip(norm * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(levels, COLORMAP)


# ----------------------------------------------------------------------------- input image

def load_view(path: str | os.PathLike, image_size: int, crop_size: int,
              out_hw: tuple[int, int], view: int | None = None) -> np.ndarray:
    """The input as the model saw it, for display: open as RGB (``dataset.load_rgb``, the
    training's reader; ``view``: that view of a file of views side by side), resize to
    ``image_size²`` (bilinear), centre-crop ``crop_size`` (torchvision's rounding), resize to
    ``out_hw = (H, W)`` (bilinear). Returns ``H × W × 3`` uint8 BGR."""
    img = load_rgb(path) if view is None else load_view_part(path, view)
    img = img.resize((image_size, image_size), Image.BILINEAR)
    top = int(round((image_size - crop_size) / 2.0))
    img = img.crop((top, top, top + crop_size, top + crop_size))
    img = img.resize((out_hw[1], out_hw[0]), Image.BILINEAR)
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)


# ----------------------------------------------------------------------------- text

def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (needs Pillow >= 10.1 with FreeType;
    older builds fall back to the fixed bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _fitted_font(text: str, size: int, max_width: int) -> ImageFont.ImageFont:
    """The largest font of at most ``size`` px (down to 8) in which ``text`` fits ``max_width``."""
    font = _font(size)
    while size > 8 and font.getlength(text) > max_width:
        size -= 1
        font = _font(size)
    return font


_Text = tuple[tuple[int, int], str, int, tuple[int, int, int], str, int]


def _draw_texts(canvas: np.ndarray, items: Sequence[_Text]) -> np.ndarray:
    """Draw ``(xy, text, size, bgr, anchor, max_width)`` items onto a BGR canvas in one
    Pillow pass (OpenCV's Hershey fonts have no en dash and look rough when small)."""
    pil = Image.fromarray(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB))
    draw = ImageDraw.Draw(pil)
    for xy, text, size, bgr, anchor, max_width in items:
        draw.text(xy, text, fill=bgr[::-1], font=_fitted_font(text, size, max_width), anchor=anchor)
    return cv2.cvtColor(np.asarray(pil), cv2.COLOR_RGB2BGR)


# ----------------------------------------------------------------------------- one picture

def canvas_size(h: int, w: int) -> tuple[int, int]:
    """``(height, width)`` of the heatmap picture for maps of ``h × w``."""
    return HEADER_H + h + FOOTER_H, 3 * PAD + 2 * w


def panel_origins(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left ``(y, x)`` of the input panel and of the overlay panel, each ``h × w``."""
    return (HEADER_H, PAD), (HEADER_H, 2 * PAD + w)


def _outline(panel: np.ndarray, mask: np.ndarray) -> None:
    """Draw the ground-truth contours (outer and hole boundaries) onto ``panel`` in place."""
    if not mask.any():
        return
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(panel, contours, -1, OUTLINE_BGR, thickness=1)


def render_heatmap(image: np.ndarray, amap: np.ndarray, mask: np.ndarray, score: float,
                   vmin: float, vmax: float, title: str) -> np.ndarray:
    """One heatmap picture (BGR uint8, ``canvas_size(H, W)``).

    Args:
        image: ``H × W × 3`` uint8 BGR input, already at the map's size (``load_view``).
        amap: ``H × W`` anomaly map; coloured on the class scale ``[vmin, vmax]``.
        mask: ``H × W`` bool ground truth; its outline is drawn on both panels.
        score: the image score, written in the header and marked on the colour bar.
        title: header text before the score (``class/defect/stem``).
    """
    h, w = amap.shape
    canvas = np.full((*canvas_size(h, w), 3), 255, np.uint8)
    (y0, x0), (y1, x1) = panel_origins(h, w)

    # panels: input | JET map alpha-blended over the input; outline on both
    left = image.copy()
    right = cv2.addWeighted(image, 1.0 - ALPHA, colorize(amap, vmin, vmax), ALPHA, 0.0)
    _outline(left, mask)
    _outline(right, mask)
    canvas[y0:y0 + h, x0:x0 + w] = left
    canvas[y1:y1 + h, x1:x1 + w] = right

    # colour bar under the overlay panel, with a black tick at the image score
    bar_y = HEADER_H + h + 4
    ramp = np.linspace(vmin, vmax, w, dtype=np.float64)[None, :].repeat(BAR_H, 0)
    canvas[bar_y:bar_y + BAR_H, x1:x1 + w] = colorize(ramp, vmin, vmax)
    if math.isfinite(score):
        tick = x1 + int(round(np.clip((score - vmin) / (vmax - vmin), 0, 1) * (w - 1)))
        cv2.line(canvas, (tick, bar_y - 3), (tick, bar_y + BAR_H + 2), (0, 0, 0), 2)

    span = vmax - vmin
    low, high = format_number(vmin, span), format_number(vmax, span)
    text_y = bar_y + BAR_H + 3
    return _draw_texts(canvas, [
        ((PAD, HEADER_H // 2), f"{title}   score {score:.4f}", 13, (0, 0, 0), "lm", 2 * w + PAD),
        ((PAD, bar_y + BAR_H // 2 + 2), format_scale(vmin, vmax), 12, (0, 0, 0), "lm", w),
        ((x1, text_y), low, 10, (60, 60, 60), "la", w // 2),
        ((x1 + w, text_y), high, 10, (60, 60, 60), "ra", w // 2),
    ])


def render_decision(image: np.ndarray, amap: np.ndarray, score: float, threshold: float,
                    vmin: float, vmax: float, title: str, mask: np.ndarray | None = None) -> np.ndarray:
    """``render_heatmap`` with the decision in the header (``NG  <title>  threshold 0.1234``
    before the score; NG where ``score > threshold``) and a frame in its colour (red NG,
    green OK). ``amap``: ``H × W`` on the fixed scale ``[vmin, vmax]``; ``mask``: ``H × W``
    ground truth to outline, if known."""
    anomalous = score > threshold
    mask = np.zeros(amap.shape, bool) if mask is None else mask
    head = f"{'NG' if anomalous else 'OK'}  {title}  threshold {threshold:.4f}"
    picture = render_heatmap(image, amap, mask, score, vmin, vmax, head)
    height, width = picture.shape[:2]
    cv2.rectangle(picture, (0, 0), (width - 1, height - 1), NG_BGR if anomalous else OK_BGR, 2)
    return picture


# ----------------------------------------------------------------------------- histogram

def _nice_step(span: float, target: int) -> float:
    """A 1-2-5 step giving about ``target`` ticks over ``span``."""
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def render_histogram(scores: np.ndarray, labels: np.ndarray, title: str, bins: int = 20,
                     size: tuple[int, int] = (360, 560)) -> np.ndarray:
    """Histogram of image scores, normal (blue) vs anomalous (red), shared bins, with
    axes, tick numbers and a legend. ``scores``, ``labels``: ``N``. Returns BGR uint8 ``size``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    height, width = size
    left, right, top, bottom = 52, 16, 50, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    canvas = np.full((height, width, 3), 255, np.uint8)

    finite = np.isfinite(scores)
    lo, hi = class_scale(scores[finite]) if finite.any() else (0.0, 1.0)
    edges = np.linspace(lo, hi, bins + 1)
    margin = 0.04 * (hi - lo)  # the axis extends a little past the outer bars
    ax_lo, ax_hi = lo - margin, hi + margin
    counts = [np.histogram(scores[finite & (labels == k)], bins=edges)[0] for k in (False, True)]
    y_max = max(1, int(max(c.max() for c in counts)))
    y_step = max(1, int(_nice_step(y_max, 5)))
    y_top = y_step * math.ceil(y_max / y_step)

    def px(x: float) -> int:
        return left + int(round((x - ax_lo) / (ax_hi - ax_lo) * plot_w))

    def py(y: float) -> int:
        return top + plot_h - int(round(y / y_top * plot_h))

    # bars: each group blended at 55 % so that overlaps stay readable
    for count, colour in zip(counts, (NORMAL_BGR, ANOMALOUS_BGR)):
        layer = canvas.copy()
        for i, c in enumerate(count):
            if c:
                cv2.rectangle(layer, (px(edges[i]), py(c)), (px(edges[i + 1]) - 1, py(0)), colour, -1)
        canvas = cv2.addWeighted(layer, 0.55, canvas, 0.45, 0.0)

    # axes and ticks
    texts = []
    cv2.line(canvas, (left, top + plot_h), (left + plot_w, top + plot_h), (0, 0, 0), 1)
    cv2.line(canvas, (left, top), (left, top + plot_h), (0, 0, 0), 1)
    x_step = _nice_step(ax_hi - ax_lo, 6)
    for k in range(math.ceil(ax_lo / x_step), math.floor(ax_hi / x_step) + 1):
        x = k * x_step
        cv2.line(canvas, (px(x), top + plot_h), (px(x), top + plot_h + 4), (0, 0, 0), 1)
        texts.append(((px(x), top + plot_h + 6), format_number(x, x_step * 10), 11, (0, 0, 0), "ma", 80))
    for y in range(0, y_top + 1, y_step):
        cv2.line(canvas, (left - 4, py(y)), (left, py(y)), (0, 0, 0), 1)
        texts.append(((left - 6, py(y)), str(y), 11, (0, 0, 0), "rm", left))
    texts.append(((left + plot_w // 2, height - 6), "image score", 12, (0, 0, 0), "md", plot_w))
    texts.append(((6, top - 8), "images", 12, (0, 0, 0), "ls", left + 40))
    texts.append(((left, 6), title, 14, (0, 0, 0), "la", plot_w - 270))

    # legend: one row between the title and the plot, so it never hides a bar
    x = left + plot_w - 260
    for name, colour, count in (("normal", NORMAL_BGR, counts[0]), ("anomalous", ANOMALOUS_BGR, counts[1])):
        cv2.rectangle(canvas, (x, 24), (x + 12, 36), colour, -1)
        texts.append(((x + 18, 30), f"{name} (n={int(count.sum())})", 12, (0, 0, 0), "lm", 110))
        x += 130
    return _draw_texts(canvas, texts)


# ----------------------------------------------------------------------------- files

def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` (BGR or grey uint8) as PNG and put it at ``path`` atomically."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode PNG for {path}")
    atomic_write_bytes(path, data.tobytes())


# folders that hold one kind of image of the samples rather than a defect's images (MVTec
# 3D-AD: <defect>/rgb/ beside <defect>/xyz/): the defect is the folder above
KIND_FOLDERS = frozenset({"rgb", "xyz", "z"})


def defect_folder(img_path: str | os.PathLike) -> str:
    """The name of the folder that says an image's defect: its parent (MVTec
    ``<class>/test/<defect>/<file>``), or the one above a `KIND_FOLDERS` parent."""
    parent = Path(img_path).parent
    return parent.parent.name if parent.name in KIND_FOLDERS else parent.name


def heatmap_path(out_dir: str | os.PathLike, class_name: str, img_path: str | os.PathLike,
                 score: float, view: int | None = None) -> Path:
    """``<out_dir>/maps/<class>/<defect>/<stem>_score<score:.4f>.png`` (``defect_folder``);
    ``view``: the image is that view of its file, ``<stem>_view<view>_score…``."""
    img_path = Path(img_path)
    stem = img_path.stem if view is None else f"{img_path.stem}_view{view}"
    return Path(out_dir) / "maps" / class_name / defect_folder(img_path) / f"{stem}_score{score:.4f}.png"


def _remove_stale(paths: Sequence[Path]) -> None:
    """Delete earlier pictures of the same images (another evaluation gave another score,
    so another file name): one picture per test image stays in each folder."""
    by_folder: dict[Path, set[str]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, set()).add(p.name)
    for folder, names in by_folder.items():
        stems = {_SCORE_NAME.match(n)["stem"] for n in names}
        for old in folder.iterdir():
            match = _SCORE_NAME.match(old.name)
            if match and match["stem"] in stems and old.name not in names:
                old.unlink(missing_ok=True)


def _squeeze(array: np.ndarray, name: str, n: int) -> np.ndarray:
    """``N × H × W`` (a singleton channel ``N × 1 × H × W`` is accepted)."""
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[0] != n:
        raise ValueError(f"{name} must be N × H × W with N = {n} images, got shape {array.shape}")
    return array


def save_class_heatmaps(out_dir: str | os.PathLike, class_name: str, img_paths: Sequence[str],
                        maps: np.ndarray, masks: np.ndarray, scores: Sequence[float],
                        labels: Sequence[int], image_size: int, crop_size: int,
                        vmin: float | None = None, vmax: float | None = None,
                        views: Sequence[int] | None = None, objects=None) -> list[Path]:
    """Write one heatmap PNG per test image of a class and the class's score histogram.

    Args:
        out_dir: run folder; pictures go to ``<out_dir>/maps/<class_name>/``.
        img_paths: ``N`` image files; ``<defect>`` is each file's parent folder name.
        maps: ``N × H × W`` float anomaly maps (the evaluation's, e.g. 256 × 256).
        masks: ``N × H × W`` ground truth, bool (numbers: anomalous where > 0).
        scores: ``N`` image scores; labels: ``N``, 0 good / 1 anomalous.
        image_size, crop_size: the test transform's resize and centre crop, to show
            the input as the model saw it.
        vmin, vmax: the class's colour scale; default min / max over all ``maps``.
        views: ``N`` places of the images in their objects (a test set of objects): an
            image whose file holds other images too is that view of it.
        objects: the class's ``evaluation.ObjectResult``: its object scores' histogram too.

    Returns:
        The ``N`` heatmap paths, in input order (the histogram is
        ``<out_dir>/maps/<class_name>/_histogram.png``). Earlier pictures of the same
        images (other scores) in those folders are removed.
    """
    n = len(img_paths)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"{n} images but {scores.shape[0]} scores and {labels.shape[0]} labels")
    maps = _squeeze(maps, "maps", n)
    masks = _squeeze(masks, "masks", n)
    masks = masks if masks.dtype == bool else masks > 0
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    if n == 0:
        return []

    lo, hi = class_scale(maps, vmin, vmax)  # once per class, not per image
    h, w = maps.shape[1:]
    parts, named = shared_file_views(img_paths, views), shared_name_views(img_paths, views)
    paths = [heatmap_path(out_dir, class_name, p, s, v) for p, s, v in zip(img_paths, scores, named)]
    for folder in sorted({p.parent for p in paths}):
        folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        image = load_view(img_paths[i], image_size, crop_size, (h, w), parts[i])
        title = f"{class_name}/{paths[i].parent.name}/{Path(img_paths[i]).stem}"
        title += "" if named[i] is None else f" view {named[i]}"
        title += "  (anomalous)" if labels[i] else "  (good)"
        write_png_atomic(paths[i], render_heatmap(image, maps[i], masks[i], scores[i], lo, hi, title))

    with ThreadPoolExecutor(_WORKERS) as pool:
        list(pool.map(one, range(n)))  # list(): re-raises the first worker error here
    _remove_stale(paths)

    _write_histograms(Path(out_dir) / "maps" / class_name, class_name, scores, labels, objects)
    return paths


def _write_histograms(class_dir: Path, class_name: str, scores: np.ndarray, labels: np.ndarray,
                      objects=None) -> None:
    """The class's image scores' histogram (and, for objects, the object scores')."""
    write_png_atomic(class_dir / HISTOGRAM_NAME,
                     render_histogram(scores, labels, f"{class_name}: image scores"))
    if objects is not None:
        write_png_atomic(class_dir / OBJECTS_HISTOGRAM_NAME,
                         render_histogram(objects.scores, objects.labels, f"{class_name}: object scores"))
