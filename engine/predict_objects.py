"""`predict.py --objects`: OK/NG per object, for a model evaluated on objects made of several
images (the views of a multi-view object, the modalities of one sample).

`--objects PATH`: a folder with one sub-folder per object holding its images (in name order:
the order of the views), or a list file (`.csv`, `.txt`): one object per line,
`name,image_1,…,image_V` (paths relative to the file's folder; `#` starts a comment).

An object's score comes from its images' maps and scores as in the run's evaluation (the
rule thresholds.json records, `engine.objects.ObjectScore`); the decision is `score >
threshold` with `--threshold VALUE`, the `--quantile` of `--calibrate NORMAL_OBJECTS`'
scores (the same two forms), or the run's object threshold (thresholds.json). Writes
`objects.csv` (`object,images,score,threshold,anomalous[,class]`), `predictions.csv` per
image (`image,object,score,threshold,anomalous`, the decision where the run has an image
threshold) and with `--save_maps` one picture per object (`maps/<object>.png`).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import dataset
from engine import checks, thresholds
from engine.config import default_device
from engine.fileio import atomic_write
from engine.heatmaps import class_scale, write_png_atomic
from engine.object_pictures import ViewPicture, render_object
from engine.objects import ObjectScore
from engine.predict import Model, Pipeline, batches, list_images, load, thresholds_entry
from engine.tool_cli import check_sizes

LIST_SUFFIXES = (".csv", ".txt")


class Obj(NamedTuple):
    name: str
    images: list[Path]


def list_objects(spec: str, flag: str) -> list[Obj]:
    """The objects of `spec` (module docstring), in name / file order."""
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _listed_objects(path, flag)
    if not path.is_dir():
        raise dataset.DatasetError(f"{flag} {spec}: not a folder of objects nor a list file "
                                   f"({' or '.join(LIST_SUFFIXES)})")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not dataset.is_hidden(p.name))
    if not folders:
        raise dataset.DatasetError(f"{flag} {spec}: no object folders in it (one sub-folder per "
                                   "object, holding its images)")
    return [Obj(f.name, list_images(str(f), flag)[0]) for f in folders]


def _listed_objects(path: Path, flag: str) -> list[Obj]:
    objects = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            if len(row) < 2 or not all(row[1:]):
                raise dataset.DatasetError(f"{flag} {path}, line {line}: expected "
                                           "'name,image_1,…,image_V'")
            images = [path.parent / p for p in row[1:]]
            missing = [p for p in images if not p.is_file()]
            if missing:
                raise dataset.DatasetError(f"{flag} {path}, line {line}: no such image {missing[0]}")
            objects.append(Obj(row[0], images))
    if not objects:
        raise dataset.DatasetError(f"{flag} {path}: lists no object")
    return objects


def object_rule(model: Model) -> ObjectScore:
    """How an object's score comes from its images, as the run's thresholds.json records it."""
    record = None if model.thresholds is None else model.thresholds.get("object_score")
    if record is None:
        raise checks.CheckError(f"--objects: {model.origin} does not say how an object's score comes "
                                "from its images (a run evaluated on objects records it in its "
                                "thresholds.json): pass the run folder of such a run")
    try:
        return ObjectScore.from_json(record)
    except ValueError as err:
        raise dataset.DatasetError(f"cannot read the object score of {model.origin}: {err}") from None


class Scored(NamedTuple):
    scores: np.ndarray  # objects
    image_scores: list[np.ndarray]  # per object, V
    maps: list[np.ndarray] | None  # per object, V×R×R (kept only for pictures)


def score_objects(pipeline: Pipeline, model: Model, objects: list[Obj], rule: ObjectScore,
                  batch_size: int, desc: str, keep_maps: bool = False) -> Scored:
    """Every object's images through the pipeline (`batch_size` at a time), then its score."""
    scores, image_scores, kept = np.empty(len(objects), np.float32), [], []
    with tqdm(total=len(objects), desc=desc, unit="object", file=sys.stderr, dynamic_ncols=True) as bar:
        for k, obj in enumerate(objects):
            parts = [pipeline(images) for _, images in
                     batches(obj.images, model.image_size, model.crop_size, batch_size, model.read)]
            maps = np.concatenate([m for m, _ in parts])  # V, 1, R, R
            views = np.concatenate([s for _, s in parts])  # V
            scores[k] = float(rule(torch.from_numpy(maps)[None], torch.from_numpy(views)[None])[0])
            image_scores.append(views)
            if keep_maps:
                kept.append(maps[:, 0])
            bar.update()
    return Scored(scores, image_scores, kept if keep_maps else None)


def object_threshold(args: argparse.Namespace, model: Model, entry: dict | None, pipeline: Pipeline,
                     rule: ObjectScore, normal: list[Obj]) -> tuple[float, str]:
    """`--threshold VALUE`, the calibration on normal objects, or the run's object threshold."""
    if args.threshold != "auto":
        return args.threshold, "--threshold"
    if args.calibrate is not None:
        quantile = args.quantile or 0.99
        normal_scores = score_objects(pipeline, model, normal, rule, args.batch_size, "calibrate").scores
        return (thresholds.calibrated_threshold(normal_scores, quantile),
                f"the {quantile} quantile of {len(normal)} normal objects in {args.calibrate}")
    if entry is None or entry.get("object") is None:
        raise dataset.DatasetError(f"--threshold auto: no object threshold in {model.origin}; pass "
                                   "--threshold VALUE, or --calibrate NORMAL_OBJECTS")
    return float(entry["object"]), model.origin


def predict_objects(args: argparse.Namespace) -> None:
    """Check every input, then score (and draw) the objects and write the two tables."""
    device = checks.check_device(args.device or default_device())
    check_sizes(args)
    objects = list_objects(args.objects, "--objects")
    normal = list_objects(args.calibrate, "--calibrate") if args.calibrate is not None else []
    out = Path(args.out)
    checks.check_writable_folder(out, "--out")
    make_pipeline, model = load(args, device)
    entry = thresholds_entry(model)
    rule = object_rule(model)
    if args.threshold == "auto" and args.calibrate is None and (entry is None or entry.get("object") is None):
        object_threshold(args, model, entry, None, rule, [])  # the error, before any image is read
    dataset.check_images([f for obj in objects + normal for f in obj.images])
    pipeline = make_pipeline()
    threshold, origin = object_threshold(args, model, entry, pipeline, rule, normal)
    scored = score_objects(pipeline, model, objects, rule, args.batch_size, "predict", args.save_maps)
    anomalous = scored.scores.astype(np.float64) > threshold
    image_threshold = None if entry is None else entry.get("image")
    write_objects(out / "objects.csv", objects, scored.scores, threshold, anomalous, model.class_name)
    write_images(out / "predictions.csv", objects, scored.image_scores, image_threshold)
    if args.save_maps:
        draw_objects(out, model, objects, scored, threshold, entry)
    print(f"{len(objects)} objects: {int(anomalous.sum())} anomalous (object score > {threshold:.6g}, "
          f"threshold from {origin}); {out / 'objects.csv'}, {out / 'predictions.csv'}"
          + (f", pictures in {out / 'maps'}" if args.save_maps else ""))


def draw_objects(out: Path, model: Model, objects: list[Obj], scored: Scored, threshold: float,
                 entry: dict | None) -> None:
    """maps/<object>.png: the object's images, maps and decision, on the run's colour scale."""
    if entry is not None and entry.get("scale"):
        low, high = entry["scale"]
    else:
        low, high = class_scale(np.array([min(m.min() for m in scored.maps), max(m.max() for m in scored.maps)]))
    for obj, score, views, maps in zip(objects, scored.scores, scored.image_scores, scored.maps):
        pictures = [ViewPicture(str(p), None, m, None, float(s)) for p, m, s in zip(obj.images, maps, views)]
        picture = render_object(pictures, float(score), threshold, low, high, obj.name,
                                model.image_size, model.crop_size)
        write_png_atomic(out / "maps" / f"{obj.name}.png", picture)


def write_objects(path: Path, objects: list[Obj], scores: np.ndarray, threshold: float,
                  anomalous: np.ndarray, class_name: str | None) -> None:
    def write(f: IO[str]) -> None:
        w = csv.writer(f)
        w.writerow(["object", "images", "score", "threshold", "anomalous", *(["class"] if class_name else [])])
        for obj, score, flag in zip(objects, scores, anomalous):
            w.writerow([obj.name, len(obj.images), repr(float(score)), repr(float(threshold)), int(flag),
                        *([class_name] if class_name else [])])
    atomic_write(path, write)


def write_images(path: Path, objects: list[Obj], image_scores: list[np.ndarray],
                 threshold: float | None) -> None:
    """Every image's score, and its decision where the run has an image threshold."""
    def write(f: IO[str]) -> None:
        w = csv.writer(f)
        w.writerow(["image", "object", "score", "threshold", "anomalous"])
        for obj, scores in zip(objects, image_scores):
            for image, score in zip(obj.images, scores):
                decided = [] if threshold is None else [repr(float(threshold)), int(float(score) > threshold)]
                w.writerow([str(image), obj.name, repr(float(score)), *(decided or ["", ""])])
    atomic_write(path, write)
