"""int8 post-training quantization of an exported pipeline with NNCF (`export.py --int8`).

    files, origin = calibration_files(source, args.calibrate)      # known-good images
    int8_model = quantize(fp32_model, onnx_proto, files, image_size, crop_size)

Calibration images: `--calibrate DIR` (a folder of known-good images, searched as predict.py
searches), else the run's training images (its config.json `data_path`, `dataset` and
classes; only the class's for a class-separated run). `--calibration_size` of them (default
300, NNCF's), spread evenly over the sorted list (every class of a multi-class run), go through
the test transform and the fp32 model, one image per step.

What is quantized: the detector only (encoder, bottleneck, decoder: NNCF's transformer
scheme, weights int8 per channel, activations int8 per tensor, SmoothQuant). The steps after
it (cosine maps, upsampling, resize, blur, top-1 % score) stay fp32: a map coarsened to 256
levels before the blur would move scores and thresholds for nothing. The split is read from
the ONNX export's scope of each node (`pkg.torch.onnx.name_scopes`): the pipeline's `model`
submodule and everything in it is the detector, whatever the model.
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import dataset
from engine import checks
import dataclasses

from engine.config import RunConfig
from engine.data import build_datasets
from engine.model_source import ModelSource, read_run_config
from engine.errors import ExportError
from engine.predict import list_images, read_rgb
from engine.tool_cli import finite_float, positive_int

CALIBRATION_SIZE = 300  # images (NNCF's default subset)
MAX_DECISION_CHANGE = 0.01  # share of test images whose OK/NG may change (export fails above)
DETECTOR_SCOPE = "model"  # AnomalyPipeline's attribute holding the detector


def add_int8_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", action="store_true",
                   help="with --format openvino: quantize to int8 after training (NNCF) and measure the cost")
    p.add_argument("--calibrate", metavar="DIR",
                   help="known-good images to calibrate on (default: the run's training images)")
    p.add_argument("--calibration_size", type=positive_int, default=CALIBRATION_SIZE,
                   help=f"calibration images used, spread evenly (default {CALIBRATION_SIZE})")
    p.add_argument("--max_decision_change", type=finite_float, default=MAX_DECISION_CHANGE,
                   metavar="SHARE", help="largest share of test images whose OK/NG may change "
                   f"under int8, in [0, 1] (default {MAX_DECISION_CHANGE}); above it the export "
                   "warns, marks the model and exits with status 3")


def check_int8_flags(args: argparse.Namespace) -> None:
    """The int8 flags fit the format and each other (CheckError: exit status 2)."""
    if args.int8 and args.format != "openvino":
        raise checks.CheckError("--int8 goes with --format openvino (an OpenVINO int8 model)")
    if not args.int8:
        for flag, given in (("--calibrate", args.calibrate is not None),
                            ("--calibration_size", args.calibration_size != CALIBRATION_SIZE),
                            ("--max_decision_change", args.max_decision_change != MAX_DECISION_CHANGE)):
            if given:
                raise checks.CheckError(f"{flag} goes with --int8")
    if not 0 <= args.max_decision_change <= 1:
        raise checks.CheckError(f"--max_decision_change {args.max_decision_change}: a share in [0, 1], e.g. 0.01")


def run_config(source: ModelSource) -> RunConfig | None:
    """The run's settings (its method's Config, the data path found), None for a bare model."""
    if source.run_dir is None:
        return None
    config = read_run_config(source.run_dir)
    data_path = Path(str(config.get("data_path", "")))
    # relative to where the run was started: here, or (the default --save_dir layout
    # <start>/saved_results/<run>) two folders above the run folder
    beside = source.run_dir.resolve().parent.parent / data_path
    if not data_path.is_absolute() and not data_path.is_dir() and beside.is_dir():
        data_path = beside
    return dataclasses.replace(source.config, data_path=str(data_path))


def model_classes(source: ModelSource, config: RunConfig) -> list[str]:
    """The classes the model was trained on: the class of a class-separated model, else all."""
    return [source.class_name] if source.separate else list(config.classes)


def calibration_files(source: ModelSource, calibrate: str | None) -> tuple[list[str], str]:
    """Every calibration candidate (checked to decode) and where they come from, for messages.
    DatasetError / CheckError when there is no usable set."""
    if calibrate is not None:
        files = [str(f) for f in list_images(calibrate, "--calibrate")[0]]
        origin = f"--calibrate {calibrate}"
    else:
        config = run_config(source)
        if config is None:
            raise checks.CheckError(f"--int8: {source.model_path} is a bare model file, without the "
                                    "run's training images: pass --calibrate DIR (known-good images)")
        if not os.path.isdir(config.data_path):
            raise dataset.DatasetError(
                f"--int8: the run's training images are not at {config.data_path} (data_path in "
                f"{source.run_dir / 'config.json'}): pass --calibrate DIR (known-good images)")
        try:
            train_set, _ = build_datasets(config, model_classes(source, config))
        except dataset.DatasetError as err:
            raise dataset.DatasetError(f"--int8: the run's training images: {err}; or pass "
                                       "--calibrate DIR (known-good images)") from None
        files = dataset.image_paths(train_set)
        origin = f"the run's training images in {config.data_path}"
    dataset.check_images(files)
    return files, origin


def spread(files: list[str], size: int) -> list[str]:
    """`size` of `files` (all when fewer), evenly spaced over the list, first and last included."""
    if size >= len(files):
        return list(files)
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, size).round()]


def outside_detector(onnx_proto, model) -> list[str]:
    """The names of `model`'s operations (an `ov.Model` converted from `onnx_proto`) that are
    not in the detector: the map and score steps. ONNX nodes know their scope; OpenVINO keeps
    their output tensors' names (not always the node's: the last one is named after the
    model's output), so the two meet there."""
    outside: set[str] = set()
    for node in onnx_proto.graph.node:
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        try:
            path = ast.literal_eval(scopes) if scopes else []
        except (ValueError, SyntaxError):
            path = []
        if DETECTOR_SCOPE not in path[:2]:
            outside.update(node.output)
    return [op.get_friendly_name() for op in model.get_ops()
            if any(outside & op.output(i).get_names() for i in range(op.get_output_size()))]


def image_loader(image_size: int, crop_size: int) -> Callable[[str], np.ndarray]:
    """path → `1×3×crop×crop` float32, read as predict.py reads an image."""
    transform, _ = dataset.get_data_transforms(image_size, crop_size)
    return lambda path: read_rgb(path, transform).unsqueeze(0).numpy()


def quantize(fp32_model, onnx_proto, samples: Sequence[Any], load: Callable[[Any], np.ndarray]):
    """`fp32_model` (an `ov.Model` of `onnx_proto`) quantized to int8 by NNCF, calibrated on
    `load(s)` (a `1×3×crop×crop` input) of each of `samples` (see the module's docstring).
    ExportError when NNCF is missing or fails."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # nncf's import: "no CUDA"
    try:
        import nncf
    except ImportError as err:
        raise ExportError(f"--int8 needs the package nncf ({err}); pip install -r requirements.txt") from None
    nncf.set_log_level(logging.WARNING)  # not its per-layer INFO lines
    print(f"int8: calibrating on {len(samples)} images (NNCF post-training quantization)", file=sys.stderr)
    try:
        return nncf.quantize(fp32_model, nncf.Dataset(samples, load), subset_size=len(samples),
                             model_type=nncf.ModelType.TRANSFORMER,
                             ignored_scope=nncf.IgnoredScope(names=outside_detector(onnx_proto, fp32_model),
                                                             validate=False))
    except Exception as err:  # NNCF's own error types: one line, not its traceback
        raise ExportError(f"--int8: NNCF could not quantize the model ({type(err).__name__}: {err})") from None
