"""Which runtime runs an exported model (`predict.py --onnx / --openvino / --runtime`).

    runner = open_model("model.xml")                         # OpenVINO (an IR runs nowhere else)
    runner = open_model("model.onnx")                        # ONNX Runtime
    runner = open_model("model.onnx", runtime="openvino")    # the ONNX file through OpenVINO
    maps, scores = runner(images)    # B×3×crop×crop normalised → B×1×R×R, B (numpy)

Each runner has `metadata` (the settings and thresholds stored at export). An int8 model that
failed its accuracy check at export (`quantization.accepted` false in its metadata) still
runs, with a `warning:` line on stderr every time it is opened.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from engine.checks import CheckError
from engine.onnx_export import ExportError, OnnxPipeline
from engine.openvino_export import PRECISIONS, OpenVinoPipeline, cpu_has_bf16

RUNTIMES = ("onnxruntime", "openvino")


class Runner(Protocol):
    metadata: dict[str, object]

    def __call__(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]: ...


def runtime_of(path: Path, runtime: str | None, flag: str) -> str:
    """The runtime for `path`: `runtime` when given, else OpenVINO for an IR (.xml) and
    ONNX Runtime for anything else. CheckError where they do not fit."""
    is_ir = path.suffix.lower() == ".xml"
    if runtime is not None and runtime not in RUNTIMES:
        raise CheckError(f"--runtime {runtime}: not a runtime here; one of {', '.join(RUNTIMES)}")
    if is_ir and runtime == "onnxruntime":
        raise CheckError(f"--runtime onnxruntime: {flag} {path} is an OpenVINO model; "
                         "ONNX Runtime runs the .onnx file of export.py --format onnx")
    if flag == "--openvino" and not is_ir:
        raise CheckError(f"--openvino {path}: not an OpenVINO model (.xml); for an ONNX file use "
                         "--onnx FILE --runtime openvino")
    return "openvino" if is_ir else runtime or "onnxruntime"


def open_model(path: str | Path, runtime: str | None = None, device: str = "cpu",
               threads: int | None = None, precision: str | None = None, flag: str = "--onnx") -> Runner:
    """The exported model at `path` ready to run (see the module's docstring). `precision`
    (OpenVINO only): f32 (default) or bf16; `device` (ONNX Runtime only): cuda uses its CUDA
    provider where installed."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{flag} {path}: no such file")
    chosen = runtime_of(path, runtime, flag)
    if chosen == "onnxruntime":
        if precision not in (None, "f32"):
            raise CheckError(f"--precision {precision}: goes with OpenVINO (--runtime openvino); "
                             "ONNX Runtime runs the exported fp32 model")
        runner: Runner = OnnxPipeline(path, device, threads)
    else:
        precision = precision or "f32"
        if precision not in PRECISIONS:
            raise CheckError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
        if precision == "bf16" and not cpu_has_bf16():
            raise CheckError("--precision bf16: this CPU has no native bf16 (OpenVINO's CPU "
                             "capabilities lack BF16); use f32")
        if device.startswith("cuda"):
            print("note: OpenVINO runs on the CPU here (--device is for torch and ONNX Runtime)",
                  file=sys.stderr)
        runner = OpenVinoPipeline(path, precision, threads, flag)
    warn_if_rejected(runner.metadata, path)
    return runner


def warn_if_rejected(metadata: dict[str, object], path: Path) -> None:
    """A `warning:` line for a quantized model whose export found too many changed decisions."""
    quantization = metadata.get("quantization")
    if isinstance(quantization, dict) and quantization.get("accepted") is False:
        print(f"warning: {path} is an int8 model that failed its accuracy check at export: "
              f"{quantization.get('verdict', 'decisions changed on too many images')} "
              f"(see {quantization.get('report', 'its accuracy report')})", file=sys.stderr)
