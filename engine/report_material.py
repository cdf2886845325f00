"""What an evaluation leaves beside its metrics (issue 12): per class the thresholds,
the image scores and the worst mistakes, gathered while the class's maps are in memory
(`Evaluation.add_class`, on the process that holds them: rank 0), written to the run folder
after the model (`Evaluation.write`, called by `results.report`):

    <run>/thresholds.json              per class (and pooled) thresholds, scale, checkpoint
    <run>/report/<class>/class.json    image scores, labels, worst cases (for report.html)
    <run>/report/<class>/fn_1.png …    heatmaps of the worst false negatives / positives
    <run>/report/<class>/fn_1_thumb.png   (unless --save_maps drew them: then linked there)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.config import Config
from engine.evaluation import EvalMaps
from engine.fileio import atomic_write_text
from engine.heatmaps import heatmap_path, load_view, panel_origins, render_decision, write_png_atomic
from engine.thresholds import (THRESHOLDS_NAME, PooledThresholds, Thresholds, metrics_and_thresholds,
                               update_thresholds_file)

REPORT_DIR = "report"
CASES_PER_KIND = 4  # worst false negatives and false positives shown per class
THUMB_SIDE = 128
KINDS = {"fn": "false negative", "fp": "false positive"}


@dataclass
class Case:
    """One test image the F1-max threshold gets wrong: its map `R×R` and mask `R×R`."""
    kind: str  # 'fn' (anomalous, scored <= threshold) or 'fp' (normal, scored > threshold)
    rank: int  # 1 = the worst of its kind
    path: str
    score: float
    amap: np.ndarray
    mask: np.ndarray


@dataclass
class ClassMaterial:
    """A class's report material: thresholds, every image's score, label and path, the
    worst cases; `heatmaps_dir`: the run folder whose maps/ --save_maps filled at this
    evaluation (None: the cases' heatmaps are drawn here)."""
    thresholds: Thresholds
    scores: np.ndarray  # N
    labels: np.ndarray  # N bool
    paths: list[str]
    cases: list[Case]
    heatmaps_dir: Path | None


def worst_cases(maps: EvalMaps, threshold: float | None, per_kind: int = CASES_PER_KIND) -> list[Case]:
    """The anomalous images with the lowest scores `<= threshold` and the normal ones with
    the highest scores `> threshold`, at most `per_kind` each."""
    if threshold is None:
        return []
    missed = np.flatnonzero(maps.labels & (maps.scores <= threshold))
    false_alarms = np.flatnonzero(~maps.labels & (maps.scores > threshold))
    chosen = {"fn": missed[np.argsort(maps.scores[missed], kind="stable")][:per_kind],
              "fp": false_alarms[np.argsort(-maps.scores[false_alarms], kind="stable")][:per_kind]}
    return [Case(kind, rank, maps.paths[i], float(maps.scores[i]), maps.maps[i].copy(), maps.masks[i].copy())
            for kind, indices in chosen.items() for rank, i in enumerate(indices, 1)]


class Evaluation(dict):
    """`evaluator.evaluate`'s result: the seven metrics per class (a dict, as before: it is
    logged, saved and compared as one) plus each class's `ClassMaterial` and, for a
    multi-class model, the pooled thresholds."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.material: dict[str, ClassMaterial] = {}
        self.pooled = None if cfg.separate else PooledThresholds()

    def add_class(self, name: str, maps: EvalMaps, heatmaps_dir: Path | None = None) -> list[float]:
        """The class's metrics (`evaluation.metrics_of`'s values) and its material."""
        values, thresholds = metrics_and_thresholds(maps)
        self[name] = [float(v) for v in values]
        self.material[name] = ClassMaterial(thresholds, maps.scores.copy(), maps.labels.copy(),
                                            list(maps.paths), worst_cases(maps, thresholds.image),
                                            heatmaps_dir)
        if self.pooled is not None:
            self.pooled.add(maps)
        return self[name]

    def merge(self, other: dict[str, list[float]]) -> None:
        """Take over another evaluation's classes (`--eval_only` evaluates one at a time)."""
        self.update(other)
        if isinstance(other, Evaluation):
            self.material.update(other.material)
            if self.pooled is not None and other.pooled is not None:
                self.pooled.merge(other.pooled)

    def checkpoint(self, run_dir: Path, name: str | None) -> str:
        """The model file the thresholds belong to: relative to the run folder for a trained
        run, absolute for `--eval_only`."""
        cfg = self.cfg
        if cfg.eval_only:
            path = Path(cfg.checkpoint)
            if cfg.separate and path.is_dir() and name is not None:
                path = path / name / "model.pth"
            return str(path.resolve())
        return f"{name}/model.pth" if cfg.separate and name is not None else "model.pth"

    def write(self, run_dir: Path, iteration: int | None) -> None:
        """thresholds.json and every class's report material, into `run_dir`."""
        cfg = self.cfg
        entries = {}
        for name, material in self.material.items():
            entries[name] = {"iteration": iteration, "checkpoint": self.checkpoint(run_dir, name),
                             **material.thresholds.as_json()}
            write_class_material(run_dir, name, material, cfg, iteration)
        pooled = None
        if self.pooled is not None and self.pooled.scores:
            pooled = {"iteration": iteration, "checkpoint": self.checkpoint(run_dir, None),
                      "classes": list(self.material), **self.pooled.result().as_json(),
                      "pixel_grid": "the best of the bin edges of a 2^20-bin histogram of the "
                                    "float32 map values (relative spacing 2^-11); its F1 is exact"}
        settings = {"encoder": cfg.encoder, "image_size": cfg.image_size, "crop_size": cfg.crop_size,
                    "eval_resolution": cfg.eval_resolution, "max_ratio": cfg.max_ratio,
                    "score": f"Image score: mean of the top {100 * cfg.max_ratio:g} % of the {cfg.eval_resolution}x"
                             f"{cfg.eval_resolution} anomaly map (spec §5)",
                    "separate": cfg.separate}
        update_thresholds_file(run_dir / THRESHOLDS_NAME, entries, pooled, settings)


def _thumbnail(picture: np.ndarray, h: int, w: int) -> np.ndarray:
    """The overlay panel of a heatmap picture, `THUMB_SIDE` on its longer side."""
    (y, x) = panel_origins(h, w)[1]
    scale = THUMB_SIDE / max(h, w)
    return cv2.resize(picture[y:y + h, x:x + w], (round(w * scale), round(h * scale)),
                      interpolation=cv2.INTER_AREA)


def write_class_material(run_dir: Path, name: str, material: ClassMaterial, cfg: Config,
                         iteration: int | None) -> None:
    """`report/<name>/`: the cases' heatmaps (or links to --save_maps's) and thumbnails,
    then class.json; pictures of an earlier evaluation that are not needed now are removed."""
    folder = run_dir / REPORT_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    threshold = material.thresholds.image
    low, high = material.thresholds.scale
    cases, kept = [], {"class.json"}
    for case in material.cases:
        h, w = case.amap.shape
        image = load_view(case.path, cfg.image_size, cfg.crop_size, (h, w))
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


def read_class_material(run_dir: Path, name: str) -> dict[str, object] | None:
    """`report/<name>/class.json`, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((run_dir / REPORT_DIR / name / "class.json").read_text())
    except (OSError, ValueError):
        return None
