"""What int8 costs: the fp32 and the int8 model of an export on the same images, compared
(`export.py --int8` writes it next to the model as `<model>.accuracy.json` and prints it).

- Metrics: on the run's test set (when its data is where config.json says), per class the
  seven metrics of the evaluation (`evaluation.metrics_of`: engine/metrics.py on the maps
  resized to the run's resolution, masks `gt > gt_threshold`), their mean over classes as
  results.csv's Mean, for fp32 and int8, and int8 − fp32 in points (percent).
- Decisions: the share of images whose OK/NG (`score > threshold`) differs between fp32 and
  int8, at the run's thresholds (thresholds.json: each class's; where a class has none, the
  fp32 model's F1-max threshold on that test set). Without a test set: on the calibration
  images, at the class's or pooled threshold; without any threshold: not measured.
- Verdict: accepted when the share is at most `--max_decision_change`; else rejected (a
  `warning:` line, exit status 3, `quantization.accepted: false` in the model's metadata).
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import dataset
from engine.data import build_datasets
from engine.evaluation import IMAGE_AND_PIXEL_METRICS as METRIC_NAMES
from engine.evaluation import class_metrics, metrics_of
from engine.maps import EvalMaps
from engine.fileio import atomic_write_text
from engine.predict import batches
from engine.report import mean_result

Runner = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]  # B×3×H×W → (B×1×R×R, B)
REPORT_FORMAT = 1


def run_test_sets(config, classes: list[str]) -> tuple[dict[str, Dataset], str | None]:
    """The run's test set of each class, or `({}, why not)` when its data is not there."""
    try:
        return build_datasets(config, classes)[1], None
    except (dataset.DatasetError, OSError) as err:
        return {}, f"no test set: {err}"


def evaluate(run: Runner, test_set: Dataset, resolution: int, gt_threshold: float,
             batch_size: int, desc: str) -> EvalMaps:
    """`run` over a test set of `(img, gt, label, path)` items, kept as the evaluation keeps
    them (`evaluation.collect_maps`): maps N×R×R, masks `gt > gt_threshold` after a nearest
    resize to R, image scores, labels, paths."""
    n = len(test_set)
    maps = np.empty((n, resolution, resolution), np.float32)
    masks = np.empty((n, resolution, resolution), bool)
    scores, labels, paths, seen = np.empty(n, np.float32), np.empty(n, bool), [], 0
    with tqdm(total=n, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for img, gt, label, path in DataLoader(test_set, batch_size=batch_size):
            batch_maps, batch_scores = run(img)
            gt = F.interpolate(gt, size=resolution, mode="nearest")
            part = slice(seen, seen + len(img))
            maps[part], scores[part] = batch_maps[:, 0], batch_scores
            masks[part] = (gt > gt_threshold).any(dim=1).numpy()
            labels[part] = label.flatten().numpy() != 0
            paths += list(path)
            seen += len(img)
            bar.update(len(img))
    return EvalMaps(maps, masks, scores, labels, paths)


def score_files(run: Runner, files: list[str], image_size: int, crop_size: int, desc: str) -> np.ndarray:
    """The image scores of `files` (N), read as predict.py reads them."""
    scores = np.empty(len(files), np.float32)
    with tqdm(total=len(files), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for start, images in batches([Path(f) for f in files], image_size, crop_size, 8):
            scores[start:start + len(images)] = run(images)[1]
            bar.update(len(images))
    return scores


def class_threshold(thresholds: dict | None, name: str | None) -> float | None:
    """The image threshold of class `name` in thresholds.json's data (the pooled one for
    None, or the only class's), None where there is none."""
    if thresholds is None:
        return None
    classes = thresholds.get("classes", {})
    entry = classes.get(name) if name is not None else thresholds.get("pooled") or (
        next(iter(classes.values())) if len(classes) == 1 else None)
    value = None if entry is None else entry.get("image")
    return None if value is None else float(value)


def _points(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else round(100 * v, 4) for v in values]


def _plain(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def changed(fp32: np.ndarray, int8: np.ndarray, threshold: float) -> np.ndarray:
    """Which images' OK/NG differ (`score > threshold`, compared as predict.py compares)."""
    return (fp32.astype(np.float64) > threshold) != (int8.astype(np.float64) > threshold)


def test_set_report(fp32: dict[str, EvalMaps], int8: dict[str, EvalMaps], thresholds: dict | None) -> dict:
    """Metrics and decision changes of the two models on every class's test set."""
    metrics: dict[str, dict[str, list[float]]] = {"fp32": {}, "int8": {}}
    decided: dict[str, dict[str, object]] = {}
    flips: list[str] = []
    for name in fp32:
        metrics["fp32"][name], own = class_metrics(fp32[name])
        metrics["int8"][name] = metrics_of(int8[name])
        threshold, origin = class_threshold(thresholds, name), "the run's thresholds.json"
        if threshold is None:
            threshold, origin = own.image, "the fp32 model's F1-max threshold on the test set"
        if threshold is None:
            continue
        moved = changed(fp32[name].scores, int8[name].scores, threshold)
        flips += [p for p, m in zip(fp32[name].paths, moved) if m]
        decided[name] = {"threshold": threshold, "from": origin, "images": len(moved), "changed": int(moved.sum())}
    means = {k: mean_result(v)[0] for k, v in metrics.items()}
    n_decided = sum(int(d["images"]) for d in decided.values())
    return {
        "test_set": {"classes": list(fp32), "images": sum(len(m.scores) for m in fp32.values())},
        "metric_names": list(METRIC_NAMES),
        "fp32": {"mean": _plain(means["fp32"]), "classes": {k: _plain(v) for k, v in metrics["fp32"].items()}},
        "int8": {"mean": _plain(means["int8"]), "classes": {k: _plain(v) for k, v in metrics["int8"].items()}},
        "int8_minus_fp32_points": _points([b - a for a, b in zip(means["fp32"], means["int8"])]),
        "outputs": output_differences(fp32, int8),
        "decisions": None if not decided else {
            "on": "test images", "images": n_decided, "changed": len(flips), "share": len(flips) / n_decided,
            "classes": decided, "changed_images": flips},
    }


def output_differences(fp32: dict[str, EvalMaps], int8: dict[str, EvalMaps]) -> dict[str, float]:
    """The largest and mean absolute differences of maps and scores, int8 vs fp32."""
    maps = [np.abs(int8[k].maps - fp32[k].maps) for k in fp32]
    scores = np.concatenate([np.abs(int8[k].scores - fp32[k].scores) for k in fp32])
    return {"max_map_difference": float(max(m.max() for m in maps)),
            "mean_map_difference": float(np.mean([m.mean() for m in maps])),
            "max_score_difference": float(scores.max()), "mean_score_difference": float(scores.mean())}


def calibration_report(fp32: np.ndarray, int8: np.ndarray, files: list[str], threshold: float | None) -> dict:
    """Without a test set: the two models' scores on the calibration images."""
    diff = np.abs(int8 - fp32)
    report: dict[str, object] = {
        "test_set": None, "outputs": {"max_score_difference": float(diff.max()),
                                      "mean_score_difference": float(diff.mean())}, "decisions": None}
    if threshold is not None:
        moved = changed(fp32, int8, threshold)
        report["decisions"] = {"on": "calibration images", "images": len(files), "changed": int(moved.sum()),
                               "share": float(moved.mean()), "threshold": threshold,
                               "changed_images": [f for f, m in zip(files, moved) if m]}
    return report


def verdict(report: dict, limit: float) -> tuple[bool | None, str]:
    """(accepted, one line): accepted when the decisions that change are at most `limit`;
    None when they could not be measured."""
    decisions = report.get("decisions")
    if decisions is None:
        return None, "decision changes not measured (no test set and no threshold)"
    share, on = float(decisions["share"]), decisions["on"]
    words = (f"OK/NG changed on {decisions['changed']} of {decisions['images']} {on} "
             f"({100 * share:.2f} %, limit {100 * limit:.2f} %)")
    return share <= limit, words


def write_report(path: Path, report: dict) -> None:
    atomic_write_text(path, json.dumps({"format": REPORT_FORMAT, **report}, indent=2, allow_nan=False) + "\n")


def summary_lines(report: dict) -> list[str]:
    """The report as a few printed lines: the mean metrics (percent) and the decisions."""
    lines = []
    if report.get("test_set"):
        width = max(len(n) for n in METRIC_NAMES) + 1
        head = "".join(f"{n:>{width}}" for n in METRIC_NAMES)
        cells = lambda values: "".join(f"{'nan' if v is None else f'{v:.2f}':>{width}}" for v in values)  # noqa: E731
        test = report["test_set"]
        lines.append(f"test set: {test['images']} images, {len(test['classes'])} classes; mean metrics (%):")
        lines.append(f"{'':14}{head}")
        for key in ("fp32", "int8"):
            lines.append(f"{key:14}{cells(_points([math.nan if v is None else v for v in report[key]['mean']]))}")
        lines.append(f"{'int8 - fp32':14}{cells(report['int8_minus_fp32_points'])}")
    out = report["outputs"]
    lines.append(f"largest difference int8 vs fp32: score {out['max_score_difference']:.3g}"
                 + (f", map {out['max_map_difference']:.3g}" if "max_map_difference" in out else ""))
    return lines
