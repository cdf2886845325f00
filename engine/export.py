"""`export.py`: a trained model's whole inference pipeline as one ONNX file
(`onnx_export.export_onnx`), with its settings and thresholds in the file's metadata.

    python export.py --checkpoint RUN_OR_MODEL --format onnx --out model.onnx [--class NAME]
    python export.py --checkpoint RUN --format openvino --out model.xml [--int8 [--calibrate DIR]]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine import checks, thresholds
from engine.deploy import check_out, export_openvino, plan_int8
from engine.model_source import inference_pipeline, resolve_source
from engine.onnx_export import export_onnx
from engine.quantize import add_int8_flags, check_int8_flags
from engine.tool_cli import add_model_flags, check_sizes, new_parser, run_tool
from recipes import recipe_of


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = new_parser("Export a trained Dinomaly model (image -> anomaly map and score) to ONNX or OpenVINO (fp32, int8).")
    add_model_flags(p)
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                   help="onnx (default: one .onnx file) or openvino (model.xml + model.bin)")
    p.add_argument("--out", required=True, metavar="FILE", help="e.g. model.onnx, or model.xml for openvino")
    add_int8_flags(p)
    return p.parse_args(argv)


def export(args: argparse.Namespace) -> None:
    check_sizes(args)
    out = Path(args.out)
    if out.is_dir():
        raise checks.CheckError(f"--out {out} is a folder: name the file, e.g. {out / 'model.onnx'}")
    checks.check_writable_folder(out.parent if str(out.parent) else Path("."), "--out")
    check_int8_flags(args)
    if args.format == "openvino":
        check_out(out)
    source = resolve_source(args.checkpoint, args.class_name, args.encoder, args.image_size, args.crop_size)
    recipe = recipe_of(source.config)
    if recipe.input_channels != 3:
        raise checks.CheckError(f"--checkpoint {args.checkpoint}: a {recipe.title} model takes "
                                f"{recipe.input_channels} input channels; export.py writes models of "
                                "RGB images (run it with predict.py --checkpoint)")
    plan = plan_int8(args, source)  # checked before the model is built
    data = None
    if source.thresholds_path is not None and source.thresholds_path.is_file():
        try:
            data = thresholds.read_thresholds(source.thresholds_path)
        except (OSError, ValueError):
            data = None  # predict --checkpoint RUN can still read them
    pipeline = inference_pipeline(source, "cpu")
    metadata = {"encoder": source.encoder, "image_size": source.image_size, "crop_size": source.crop_size,
                "eval_resolution": source.resolution, "max_ratio": source.max_ratio,
                "class": source.class_name, "separate": source.separate,
                "checkpoint": str(source.model_path), "thresholds": data}
    if args.format == "openvino":
        return export_openvino(args, source, pipeline, metadata, plan)
    size = export_onnx(pipeline, source.crop_size, out, metadata)
    print(f"{out}: {size / 2**20:.0f} MB, input image float32 batch x 3 x {source.crop_size} x "
          f"{source.crop_size} (normalised), outputs anomaly_map batch x 1 x {source.resolution} x "
          f"{source.resolution} and score batch")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run_tool(lambda: export(args))
