"""`predict.py`: a trained model on new images → `predictions.csv` with the OK/NG
decision (`anomalous = score > threshold`), and with `--save_maps` one heatmap per image on the
class's fixed colour scale, the decision in the picture.

Thresholds: `--threshold VALUE`; else `--calibrate NORMAL_DIR` (the `--quantile` of the scores
of known-normal images); else (`auto`) the run's thresholds.json: the class's F1-max image
threshold with `--class`, the pooled one of a multi-class model without. Every input is
checked before anything is written; a bad one ends in one line (`tool_cli.run_tool`).
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from tqdm import tqdm

import dataset
from engine import checks, thresholds
from engine.config import default_device
from engine.fileio import atomic_write
from engine.heatmaps import class_scale, load_view, render_decision, write_png_atomic
from engine.model_source import inference_pipeline, resolve_source
from engine.openvino_export import PRECISIONS
from engine.runtimes import RUNTIMES, open_model
from engine.tool_cli import add_model_flags, check_sizes, finite_float, new_parser, positive_int
from recipes import recipe_of
from recipes.base import read_rgb

Pipeline = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]  # B×3×H×W → (B×1×R×R, B)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = new_parser("Dinomaly on new images: anomaly scores, OK/NG decisions (predictions.csv) and heatmaps.")
    add_model_flags(p, checkpoint_required=False)
    p.add_argument("--images", metavar="PATH",
                   help="a folder (searched recursively), one image file, or a glob ('dir/*.png')")
    p.add_argument("--objects", metavar="PATH",
                   help="instead of --images, a decision per object made of several images: a "
                        "folder of object folders, or a list file (name,image_1,…); see "
                        "engine/predict_objects.py")
    p.add_argument("--out", required=True, metavar="DIR", help="predictions.csv (and maps/) go here")
    p.add_argument("--threshold", default="auto", metavar="auto|VALUE",
                   help="auto: the run's thresholds.json (default); or a number")
    p.add_argument("--calibrate", metavar="NORMAL_DIR",
                   help="threshold = --quantile of the scores of these known-normal images")
    p.add_argument("--quantile", type=finite_float, help="with --calibrate, in (0, 1] (default 0.99)")
    p.add_argument("--save_maps", action="store_true", help="one heatmap PNG per image in DIR/maps/")
    p.add_argument("--batch_size", type=positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--onnx", metavar="MODEL.onnx", help="run the exported model with ONNX Runtime "
                   "(or OpenVINO: --runtime openvino)")
    p.add_argument("--openvino", metavar="MODEL.xml", help="run an OpenVINO model of export.py")
    p.add_argument("--runtime", choices=RUNTIMES, help="which runtime runs --onnx (default onnxruntime)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="OpenVINO's compute precision: f32 (default) or bf16 (faster where the CPU has it)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available, else cpu)")
    args = p.parse_args(argv)
    if (args.images is None) == (args.objects is None):
        p.error("pass --images PATH, or --objects PATH (one of the two)")
    if args.checkpoint is None and args.onnx is None and args.openvino is None:
        p.error("--checkpoint RUN_OR_MODEL is required (or --onnx MODEL.onnx, --openvino MODEL.xml)")
    if args.onnx is not None and args.openvino is not None:
        p.error("--onnx and --openvino: pass one exported model")
    if args.onnx is None and args.openvino is None and (args.runtime or args.precision):
        p.error(f"--{'runtime' if args.runtime else 'precision'} goes with an exported model "
                "(--onnx MODEL.onnx or --openvino MODEL.xml)")
    if args.quantile is not None and args.calibrate is None:
        p.error("--quantile goes with --calibrate NORMAL_DIR")
    if args.quantile is not None and not 0 < args.quantile <= 1:
        p.error(f"--quantile {args.quantile}: must be in (0, 1], e.g. 0.99")
    if args.threshold != "auto":
        try:
            args.threshold = finite_float(args.threshold)
        except (ValueError, argparse.ArgumentTypeError):
            p.error(f"--threshold {args.threshold}: must be auto or a number")
    return args


# ----------------------------------------------------------------------------- images

def list_images(spec: str, flag: str) -> tuple[list[Path], Path]:
    """The image files of `spec` (a folder, recursively; a file; a glob), sorted, and the
    folder their names are relative to. Hidden files and folders are skipped, as in training."""
    path = Path(spec)
    if path.is_dir():
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not dataset.is_hidden(d)]  # not walked into
            files += [Path(root, n) for n in names if dataset.is_image_name(n)]
        base = path
    elif path.is_file():
        files, base = [path], path.parent
    elif glob.has_magic(spec):
        files = [Path(f) for f in glob.glob(spec, recursive=True)
                 if os.path.isfile(f) and dataset.is_image_name(os.path.basename(f))]
        base = Path(os.path.commonpath([f.parent for f in files])) if files else Path(".")
    else:
        raise dataset.DatasetError(f"{flag} {spec}: no such file or folder")
    if not files:
        raise dataset.DatasetError(f"{flag} {spec}: no image files there (extensions: "
                                   f"{' '.join(dataset.IMAGE_EXTENSIONS)})")
    return sorted(files), base


def map_names(files: list[Path], base: Path) -> list[str]:
    """Each image's heatmap name under maps/: its path below `base`, `.png` for its extension
    (`_<ext>` added where two images would share a name, e.g. x.jpg and x.png)."""
    names = [f.relative_to(base).with_suffix(".png").as_posix() for f in files]
    taken = {n: names.count(n) for n in names}
    return [n if taken[n] == 1 else f"{n[:-4]}_{f.suffix.lstrip('.').lower()}.png"
            for n, f in zip(names, files)]


def batches(files: list[Path], image_size: int, crop_size: int, size: int,
            read: Callable[[Path, Callable], torch.Tensor] = read_rgb
            ) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, `B×C×crop×crop` normalised batch) over `files`, read as the test set is (the
    test transform; `read`: the method's reading of a file, by default `dataset.load_rgb`)."""
    transform, _ = dataset.get_data_transforms(image_size, crop_size)
    for start in range(0, len(files), size):
        yield start, torch.stack([read(f, transform) for f in files[start:start + size]])


# ----------------------------------------------------------------------------- model and thresholds

@dataclass
class Model:
    """A model's input settings and the thresholds it was evaluated with (or None)."""
    image_size: int
    crop_size: int
    thresholds: dict[str, object] | None
    origin: str  # where the thresholds come from, for messages
    class_name: str | None
    read: Callable[[Path, Callable], torch.Tensor] = read_rgb  # a file -> the model's input


def load(args: argparse.Namespace, device: str) -> tuple[Callable[[], Pipeline], Model]:
    """The model's settings and thresholds now (cheap), and a loader of its pipeline for later."""
    source = None
    if args.checkpoint is not None:
        source = resolve_source(args.checkpoint, args.class_name, args.encoder, args.image_size, args.crop_size)
    if args.onnx is not None or args.openvino is not None:
        flag, path = ("--onnx", args.onnx) if args.onnx is not None else ("--openvino", args.openvino)
        onnx = open_model(path, args.runtime, device, precision=args.precision, flag=flag)
        meta = onnx.metadata
        if source is not None and (source.encoder, source.crop_size) != (meta["encoder"], meta["crop_size"]):
            raise checks.CheckError(f"{flag} {path} was exported for {meta['encoder']} at "
                                    f"{meta['crop_size']} px, --checkpoint is {source.encoder} at {source.crop_size}")
        if meta.get("separate") and args.class_name not in (None, meta.get("class")):
            raise checks.CheckError(f"--class {args.class_name}: {path} is the model of class "
                                    f"{meta.get('class')} (a class-separated run): export that class's model")
        data, origin = meta.get("thresholds"), f"the thresholds stored in {path}"
        if source is not None and source.thresholds_path is not None:
            data, origin = read_run_thresholds(source.thresholds_path)
        model = Model(int(meta["image_size"]), int(meta["crop_size"]), data, origin,
                      args.class_name or meta.get("class"))
        return (lambda: onnx), model
    data, origin = (None, f"{args.checkpoint} (a bare model file)")
    if source.thresholds_path is not None:
        data, origin = read_run_thresholds(source.thresholds_path)

    def pipeline() -> Pipeline:
        torch_pipeline = inference_pipeline(source, device)

        def run(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                maps, scores = torch_pipeline(images.to(device))
            return maps.cpu().numpy(), scores.cpu().numpy()
        return run
    return pipeline, Model(source.image_size, source.crop_size, data, origin, args.class_name,
                           recipe_of(source.config).read_image)


def read_run_thresholds(path: Path) -> tuple[dict[str, object] | None, str]:
    if not path.is_file():
        return None, f"{path.parent} (it has no {path.name}: a run evaluated before this version)"
    try:
        return thresholds.read_thresholds(path), str(path)
    except (OSError, ValueError) as err:
        raise dataset.DatasetError(f"cannot read {path}: {err}") from None


def thresholds_entry(model: Model) -> dict[str, object] | None:
    """The class's entry of the thresholds (`--class`), else the pooled one (or the only
    class's); None without thresholds. CheckError for a class that has none."""
    data = model.thresholds
    if data is None:
        return None
    classes = data["classes"]
    if model.class_name is not None:
        if model.class_name not in classes:
            raise checks.CheckError(f"--class {model.class_name}: no thresholds for it in {model.origin}; "
                                    f"its classes: {', '.join(classes)}")
        return classes[model.class_name]
    if "pooled" in data:
        return data["pooled"]
    if len(classes) == 1:
        return next(iter(classes.values()))
    raise checks.CheckError(f"{model.origin} has one threshold per class and none for all: pass "
                            f"--class NAME, one of {', '.join(classes)}")


def auto_threshold(model: Model, entry: dict[str, object] | None) -> float:
    if entry is None:
        raise dataset.DatasetError(f"--threshold auto: no thresholds in {model.origin}; pass "
                                   "--threshold VALUE, or --calibrate NORMAL_DIR (known-normal images)")
    if entry.get("image") is None and entry.get("object") is not None:
        raise dataset.DatasetError(f"--threshold auto: {model.origin} decides per object (its images "
                                   "have no threshold of their own): pass --objects PATH")
    if entry.get("image") is None:
        raise dataset.DatasetError(f"--threshold auto: the F1-max threshold is not defined in "
                                   f"{model.origin} (its test set lacks normal or anomalous images); "
                                   "pass --threshold VALUE or --calibrate NORMAL_DIR")
    return float(entry["image"])


# ----------------------------------------------------------------------------- predict

def score_images(pipeline: Pipeline, model: Model, files: list[Path], batch_size: int, desc: str,
                 on_batch: Callable[[int, np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
    """The image scores of `files` (N); `on_batch(start, maps, scores)` after every batch."""
    scores = np.empty(len(files), dtype=np.float32)
    with tqdm(total=len(files), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True) as bar:
        for start, images in batches(files, model.image_size, model.crop_size, batch_size, model.read):
            maps, batch_scores = pipeline(images)
            scores[start:start + len(images)] = batch_scores
            if on_batch is not None:
                on_batch(start, maps, batch_scores)
            bar.update(len(images))
    return scores


def choose_threshold(args: argparse.Namespace, model: Model, entry: dict[str, object] | None,
                     pipeline: Pipeline, normal_files: list[Path]) -> tuple[float, str, tuple[float, float]]:
    """(threshold, where it comes from, colour scale): `--threshold VALUE`, else the
    calibration on `normal_files`, else thresholds.json's `entry`. The scale is the entry's
    (the class's fixed scale) when there is one; else that of the normal images' maps;
    else `[0, 2 × threshold]` (the threshold mid-scale)."""
    scale = None if entry is None else tuple(entry["scale"])
    if args.threshold != "auto":
        if args.calibrate is not None:
            print("note: --threshold VALUE overrides --calibrate: no calibration run", file=sys.stderr)
        threshold, origin = args.threshold, "--threshold"
    elif args.calibrate is not None:
        low, high = np.inf, -np.inf

        def track(_: int, maps: np.ndarray, __: np.ndarray) -> None:
            nonlocal low, high
            low, high = min(low, float(maps.min())), max(high, float(maps.max()))
        quantile = args.quantile or 0.99
        normal_scores = score_images(pipeline, model, normal_files, args.batch_size, "calibrate", track)
        threshold = thresholds.calibrated_threshold(normal_scores, quantile)
        origin = f"the {quantile} quantile of {len(normal_files)} normal images in {args.calibrate}"
        scale = scale or class_scale(np.array([low, high]))
    else:
        threshold, origin = auto_threshold(model, entry), model.origin
    return threshold, origin, scale or class_scale(np.array([0.0, 2 * threshold]))


def predict(args: argparse.Namespace) -> None:
    """Check every input, then score (and draw) the images and write predictions.csv."""
    device = checks.check_device(args.device or default_device())
    check_sizes(args)
    files, base = list_images(args.images, "--images")
    normal_files = list_images(args.calibrate, "--calibrate")[0] if args.calibrate is not None else []
    out = Path(args.out)
    checks.check_writable_folder(out, "--out")
    make_pipeline, model = load(args, device)
    entry = thresholds_entry(model)
    if args.threshold == "auto" and args.calibrate is None:
        auto_threshold(model, entry)  # checked now: before any image is read
    dataset.check_images([*files, *normal_files])  # every file decodes: nothing half-written
    pipeline = make_pipeline()
    threshold, origin, scale = choose_threshold(args, model, entry, pipeline, normal_files)

    names = map_names(files, base)

    def draw(start: int, maps: np.ndarray, scores: np.ndarray) -> None:
        for i, (amap, score) in enumerate(zip(maps[:, 0], scores)):
            image = load_view(files[start + i], model.image_size, model.crop_size, amap.shape)
            picture = render_decision(image, amap, float(score), threshold, *scale, names[start + i][:-4])
            write_png_atomic(out / "maps" / names[start + i], picture)

    scores = score_images(pipeline, model, files, args.batch_size, "predict", draw if args.save_maps else None)
    anomalous = scores.astype(np.float64) > threshold
    write_predictions(out / "predictions.csv", files, scores, threshold, anomalous, model.class_name)
    print(f"{len(files)} images: {int(anomalous.sum())} anomalous (score > {threshold:.6g}, threshold from "
          f"{origin}); {out / 'predictions.csv'}" + (f", heatmaps in {out / 'maps'}" if args.save_maps else ""))


def write_predictions(path: Path, files: list[Path], scores: np.ndarray, threshold: float,
                      anomalous: np.ndarray, class_name: str | None) -> None:
    """predictions.csv: `image,score,threshold,anomalous[,class]`, one row per image; the
    score written exactly (float32 → repr of its float64 value), anomalous 1 or 0."""
    def write(f: IO[str]) -> None:
        w = csv.writer(f)
        w.writerow(["image", "score", "threshold", "anomalous", *(["class"] if class_name else [])])
        for file, score, flag in zip(files, scores, anomalous):
            w.writerow([str(file), repr(float(score)), repr(float(threshold)), int(flag),
                        *([class_name] if class_name else [])])
    atomic_write(path, write)
