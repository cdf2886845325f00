"""`export.py --format openvino [--int8]`: the OpenVINO model, and for int8 its accuracy report.

    plan = plan_int8(args, source)      # every input checked: nothing slow or written yet
    export_openvino(args, source, pipeline, metadata, plan)

fp32: the ONNX export converted to OpenVINO (`engine.openvino_export`), written as
`<out>.xml` + `<out>.bin`. int8 (`plan` not None): the same model quantized by NNCF on the
calibration images (`engine.quantize`), both models run on the run's test set (or, without
one, the calibration images) and compared (`engine.int8_report`); then the int8 model, with
`precision: int8` and `quantization` (verdict, decision change, report name) in its metadata,
and `<out stem>.accuracy.json` next to it. A rejected model (decisions changed on more than
`--max_decision_change`) is written all the same, for inspection, marked, with a `warning:`
line and exit status 3.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from engine import checks
from engine.model_source import ModelSource, read_run_config
from engine.int8_report import (calibration_report, class_threshold, evaluate, run_test_sets, score_files,
                                summary_lines, test_set_report, verdict, write_report)
from engine.onnx_export import onnx_model
from engine.openvino_export import OpenVinoPipeline, from_onnx, save_ir, set_metadata
from engine.quantize import calibration_files, image_loader, model_classes, quantize, run_config, spread

BATCH = 8  # images per inference while measuring


@dataclass
class Int8Plan:
    """What an int8 export will use, resolved and checked before the export starts."""
    calibration: list[str]
    origin: str
    test_sets: dict[str, Dataset]
    no_test_set: str | None  # why there is none
    gt_threshold: float


def report_path(out: Path) -> Path:
    """`model.xml` → `model.accuracy.json`."""
    return out.with_suffix(".accuracy.json")


def check_out(out: Path) -> None:
    if out.suffix.lower() != ".xml":
        raise checks.CheckError(f"--out {out}: an OpenVINO model is an .xml file (its weights go "
                                f"in the .bin beside it), e.g. {out.with_suffix('.xml')}")


def plan_int8(args: argparse.Namespace, source: ModelSource) -> Int8Plan | None:
    """The calibration images (checked to decode) and the run's test sets, or None without
    --int8. DatasetError / CheckError when there is no usable calibration set."""
    if not args.int8:
        return None
    files, origin = calibration_files(source, args.calibrate)
    config = run_config(source)
    if config is None:
        tests, why = {}, "a bare model file comes without a test set"
    else:
        tests, why = run_test_sets(config, model_classes(source, config))
    gt_threshold = 0.0 if source.run_dir is None else float(read_run_config(source.run_dir).get("gt_threshold", 0.0))
    return Int8Plan(spread(files, args.calibration_size), origin, tests, why, gt_threshold)


def export_openvino(args: argparse.Namespace, source: ModelSource, pipeline: nn.Module,
                    metadata: dict[str, object], plan: Int8Plan | None) -> None:
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="dinomaly-export-") as tmp:
        proto = onnx_model(pipeline, source.crop_size, metadata)
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(proto.SerializeToString())
        fp32 = from_onnx(onnx_path, metadata)
        if plan is None:
            size = save_ir(fp32, out, {**metadata, "precision": "fp32"})
            print(f"{out} + {out.with_suffix('.bin').name}: {size / 2**20:.0f} MB, OpenVINO fp32; input image "
                  f"float32 batch x 3 x {source.crop_size} x {source.crop_size} (normalised), outputs "
                  f"anomaly_map batch x 1 x {source.resolution} x {source.resolution} and score batch")
            return
        int8 = quantize(fp32, proto, plan.calibration, image_loader(source.image_size, source.crop_size))
    report = measure(fp32, int8, out, source, metadata, plan)
    report.update(model=out.name, calibration={"images": len(plan.calibration), "from": plan.origin},
                  max_decision_change=args.max_decision_change)
    accepted, words = verdict(report, args.max_decision_change)
    report.update(accepted=accepted, verdict=words)
    marker = {"accepted": accepted, "verdict": words, "report": report_path(out).name,
              "decision_change": None if report["decisions"] is None else report["decisions"]["share"],
              "max_decision_change": args.max_decision_change}
    size = save_ir(int8, out, {**metadata, "precision": "int8", "quantization": marker})
    write_report(report_path(out), report)
    for line in summary_lines(report):
        print(line)
    print(f"{out} + {out.with_suffix('.bin').name}: {size / 2**20:.0f} MB, OpenVINO int8; "
          f"report {report_path(out)}")
    if accepted is None:
        print(f"warning: int8: {words}: its accuracy is unknown; pass a run folder with its test "
              "data, or check predictions before use", file=sys.stderr)
    elif not accepted:
        raise checks.stop(f"warning: int8 model rejected: {words}; it is written for inspection and "
                          "marked (predict.py warns when it runs it); calibrate on more images, or raise "
                          "--max_decision_change", 3)
    else:
        print(f"int8 accepted: {words}")


def measure(fp32, int8, out: Path, source: ModelSource, metadata: dict[str, object], plan: Int8Plan) -> dict:
    """The two models on the test sets (else the calibration images), compared."""
    set_metadata(int8, metadata)
    runners = {name: OpenVinoPipeline(out, "f32", model=model) for name, model in (("fp32", fp32), ("int8", int8))}
    if plan.test_sets:
        maps = {name: {c: evaluate(run, test, source.resolution, plan.gt_threshold, BATCH, f"{name} {c}")
                       for c, test in plan.test_sets.items()} for name, run in runners.items()}
        return test_set_report(maps["fp32"], maps["int8"], metadata.get("thresholds"))
    print(f"note: int8: {plan.no_test_set}; comparing on the calibration images", file=sys.stderr)
    scores = {name: score_files(run, plan.calibration, source.image_size, source.crop_size, name)
              for name, run in runners.items()}
    threshold = class_threshold(metadata.get("thresholds"), source.class_name)
    return {**calibration_report(scores["fp32"], scores["int8"], plan.calibration, threshold),
            "no_test_set": plan.no_test_set}
