"""A class's report material, written beside its metrics (`report.Report`): the pictures
of its worst mistakes and what report.html shows of it.

    <run>/report/<class>/class.json    image scores, labels, worst cases (for report.html)
    <run>/report/<class>/fn_1.png …    heatmaps of the worst false negatives / positives
    <run>/report/<class>/fn_1_thumb.png   (unless --save_maps drew them: then linked there)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from engine.evaluation import ClassResult
from engine.fileio import atomic_write_text
from engine.heatmaps import heatmap_path, load_view, panel_origins, render_decision, write_png_atomic

REPORT_DIR = "report"
THUMB_SIDE = 128
KINDS = {"fn": "false negative", "fp": "false positive"}


def _thumbnail(picture: np.ndarray, h: int, w: int) -> np.ndarray:
    """The overlay panel of a heatmap picture, `THUMB_SIDE` on its longer side."""
    (y, x) = panel_origins(h, w)[1]
    scale = THUMB_SIDE / max(h, w)
    return cv2.resize(picture[y:y + h, x:x + w], (round(w * scale), round(h * scale)),
                      interpolation=cv2.INTER_AREA)


def write_class_material(run_dir: Path, material: ClassResult, image_size: int, crop_size: int,
                         iteration: int | None) -> dict[str, object]:
    """`report/<name>/`: the cases' heatmaps (or links to --save_maps's) and thumbnails,
    then class.json; pictures of an earlier evaluation that are not needed now are removed.
    Returns class.json's content."""
    name = material.name
    folder = run_dir / REPORT_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    threshold = material.thresholds.image
    low, high = material.thresholds.scale
    cases, kept = [], {"class.json"}
    for case in material.cases:
        h, w = case.amap.shape
        image = load_view(case.path, image_size, crop_size, (h, w))
        source = Path(case.path)
        title = f"{name}/{source.parent.name}/{source.stem}: {KINDS[case.kind]}"
        picture = render_decision(image, case.amap, case.score, threshold, low, high, title, case.mask)
        stem = f"{case.kind}_{case.rank}"
        heatmap = folder / f"{stem}.png"
        if material.heatmaps_dir is not None:  # --save_maps drew every image: link to it
            drawn = heatmap_path(material.heatmaps_dir, name, case.path, case.score)
            heatmap = drawn if drawn.is_file() else heatmap
        if heatmap.parent == folder:
            write_png_atomic(heatmap, picture)
        write_png_atomic(folder / f"{stem}_thumb.png", _thumbnail(picture, h, w))
        kept.update({heatmap.name, f"{stem}_thumb.png"})
        cases.append({"kind": case.kind, "rank": case.rank, "image": case.path, "score": case.score,
                      "heatmap": Path(os.path.relpath(heatmap, run_dir)).as_posix(),
                      "thumbnail": (folder / f"{stem}_thumb.png").relative_to(run_dir).as_posix()})
    for old in folder.iterdir():
        if old.name not in kept and old.suffix == ".png":
            old.unlink(missing_ok=True)
    info = {"iteration": iteration, "threshold": threshold,
            "scores": [float(s) for s in material.scores], "labels": [bool(v) for v in material.labels],
            "images": material.paths, "cases": cases}
    atomic_write_text(folder / "class.json", json.dumps(info, allow_nan=False) + "\n")
    return info


def read_class_material(run_dir: Path, name: str) -> dict[str, object] | None:
    """`report/<name>/class.json`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / REPORT_DIR / name / "class.json").read_text())
    except (OSError, ValueError):
        return None
