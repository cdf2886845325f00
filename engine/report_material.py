"""A class's report material, written beside its metrics (`report.Report`): the pictures
of its worst mistakes and what report.html shows of it.

    <run>/report/<class>/class.json    image scores, labels, worst cases (for report.html)
    <run>/report/<class>/fn_1.png …    heatmaps of the worst false negatives / positives
    <run>/report/<class>/fn_1_thumb.png   (unless --save_maps drew them: then linked there)
    <run>/report/<class>/object_fn_1.png …   a test set of objects: the worst objects, each
                                       with all its images (`object_pictures`)

The pictures can be drawn as soon as the class is evaluated (`draw_class_cases`, so that
no class's maps wait for the others'), class.json with the results (`write_class_material`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from engine.evaluation import Case, ClassResult, ObjectCase
from engine.fileio import atomic_write_text
from engine.heatmaps import defect_folder, heatmap_path, load_view, panel_origins, render_decision, write_png_atomic
from engine.object_pictures import ViewPicture, render_object, thumbnail_strip

REPORT_DIR = "report"
THUMB_SIDE = 128
KINDS = {"fn": "false negative", "fp": "false positive"}


def _thumbnail(picture: np.ndarray, h: int, w: int) -> np.ndarray:
    """The overlay panel of a heatmap picture, `THUMB_SIDE` on its longer side."""
    (y, x) = panel_origins(h, w)[1]
    scale = THUMB_SIDE / max(h, w)
    return cv2.resize(picture[y:y + h, x:x + w], (round(w * scale), round(h * scale)),
                      interpolation=cv2.INTER_AREA)


def _draw_case(run_dir: Path, folder: Path, material: ClassResult, case: Case,
               image_size: int, crop_size: int) -> dict[str, object]:
    """One worst image's heatmap (or the link to --save_maps's) and thumbnail."""
    name, (low, high) = material.name, material.thresholds.scale
    h, w = case.amap.shape
    image = load_view(case.path, image_size, crop_size, (h, w), case.part)
    source = Path(case.path)
    part = "" if case.view is None else f" view {case.view}"
    title = f"{name}/{defect_folder(source)}/{source.stem}{part}: {KINDS[case.kind]}"
    picture = render_decision(image, case.amap, case.score, material.thresholds.image, low, high,
                              title, case.mask)
    stem = f"{case.kind}_{case.rank}"
    heatmap = folder / f"{stem}.png"
    if material.heatmaps_dir is not None:  # --save_maps drew every image: link to it
        drawn = heatmap_path(material.heatmaps_dir, name, case.path, case.score, case.view)
        heatmap = drawn if drawn.is_file() else heatmap
    if heatmap.parent == folder:
        write_png_atomic(heatmap, picture)
    write_png_atomic(folder / f"{stem}_thumb.png", _thumbnail(picture, h, w))
    return {"kind": case.kind, "rank": case.rank, "image": case.path, "score": case.score,
            "heatmap": Path(os.path.relpath(heatmap, run_dir)).as_posix(),
            "thumbnail": (folder / f"{stem}_thumb.png").relative_to(run_dir).as_posix()}


def _draw_object(run_dir: Path, folder: Path, material: ClassResult, case: ObjectCase,
                 image_size: int, crop_size: int) -> dict[str, object]:
    """One worst object's picture (all its images) and thumbnail."""
    low, high = material.thresholds.scale
    views = [ViewPicture(v.path, v.part, v.amap, v.mask, v.score) for v in case.views]
    source = Path(case.name)
    title = f"{material.name}/{defect_folder(source)}/{source.stem}: {KINDS[case.kind]}"
    picture = render_object(views, case.score, material.objects.threshold, low, high, title,
                            image_size, crop_size)
    stem = f"object_{case.kind}_{case.rank}"
    write_png_atomic(folder / f"{stem}.png", picture)
    write_png_atomic(folder / f"{stem}_thumb.png",
                     thumbnail_strip(picture, views[0].amap.shape, len(views), THUMB_SIDE))
    return {"kind": case.kind, "rank": case.rank, "image": case.name, "score": case.score,
            "views": [{"image": v.path, "part": v.part, "score": v.score} for v in case.views],
            "heatmap": (folder / f"{stem}.png").relative_to(run_dir).as_posix(),
            "thumbnail": (folder / f"{stem}_thumb.png").relative_to(run_dir).as_posix()}


def draw_class_cases(run_dir: Path, material: ClassResult, image_size: int,
                     crop_size: int) -> dict[str, list]:
    """`report/<name>/`: the worst cases' heatmaps (or links to --save_maps's) and
    thumbnails, and the worst objects' pictures; the cases' maps are released. Returns (and
    keeps as `material.drawn`) class.json's entries of the cases."""
    folder = run_dir / REPORT_DIR / material.name
    folder.mkdir(parents=True, exist_ok=True)
    cases = [_draw_case(run_dir, folder, material, c, image_size, crop_size) for c in material.cases]
    objects = [] if material.objects is None else [
        _draw_object(run_dir, folder, material, c, image_size, crop_size) for c in material.objects.cases]
    for case in material.cases + [v for c in (material.objects.cases if material.objects else []) for v in c.views]:
        case.amap = case.mask = None  # drawn: the maps are not needed any more
    material.drawn = {"cases": cases, "object_cases": objects}
    return material.drawn


def write_class_material(run_dir: Path, material: ClassResult, image_size: int, crop_size: int,
                         iteration: int | None) -> dict[str, object]:
    """`report/<name>/class.json` (the cases drawn first, unless `draw_class_cases` did
    already); pictures of an earlier evaluation that are not needed now are removed.
    Returns class.json's content."""
    drawn = material.drawn or draw_class_cases(run_dir, material, image_size, crop_size)
    folder = run_dir / REPORT_DIR / material.name
    kept = {Path(e[k]).name for e in drawn["cases"] + drawn["object_cases"] for k in ("heatmap", "thumbnail")}
    for old in folder.iterdir():
        if old.name not in kept and old.suffix == ".png":
            old.unlink(missing_ok=True)
    info = {"iteration": iteration, "threshold": material.thresholds.image,
            "scores": [float(s) for s in material.scores], "labels": [bool(v) for v in material.labels],
            "images": material.paths, "cases": drawn["cases"]}
    if material.objects is not None:
        o = material.objects
        info["objects"] = {"threshold": o.threshold, "scores": [float(s) for s in o.scores],
                           "labels": [bool(v) for v in o.labels], "names": o.names,
                           "cases": drawn["object_cases"]}
    atomic_write_text(folder / "class.json", json.dumps(info, allow_nan=False) + "\n")
    return info


def read_class_material(run_dir: Path, name: str) -> dict[str, object] | None:
    """`report/<name>/class.json`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / REPORT_DIR / name / "class.json").read_text())
    except (OSError, ValueError):
        return None
