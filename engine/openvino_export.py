"""The exported pipeline as an OpenVINO model, and run by OpenVINO's CPU plugin.

    export.py --format openvino --out model.xml     → model.xml (graph) + model.bin (weights)
    predict.py --openvino model.xml                 → OpenVinoPipeline("model.xml")
    predict.py --onnx model.onnx --runtime openvino → OpenVinoPipeline("model.onnx")

The model is converted from the ONNX export (`engine.onnx_export.onnx_model`: the same graph,
inputs and outputs) and saved with fp32 weights (`compress_to_fp16=False`; OpenVINO would
store fp16 by default). The run's settings and thresholds, the JSON the ONNX file keeps in its
metadata, go into the model's runtime info under the key `dinomaly` (in model.xml:
`<rt_info><dinomaly value="{…}"/></rt_info>`; read with
`core.read_model("model.xml").get_rt_info(["dinomaly"]).astype(str)`).

Precision: OpenVINO's CPU plugin computes in bf16 by default on CPUs that have it (AMX);
`OpenVinoPipeline` asks for f32 unless told `bf16`, so that its outputs equal torch's within
float round-off.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from engine.fileio import atomic_write
from engine.onnx_export import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ExportError

PRECISIONS = ("f32", "bf16")  # OpenVINO's INFERENCE_PRECISION_HINT values offered


def openvino():
    """The openvino module, or ExportError saying how to install it."""
    try:
        import openvino as ov
    except ImportError as err:
        raise ExportError(f"OpenVINO is not installed ({err}); pip install -r requirements.txt") from None
    return ov


def cpu_has_bf16() -> bool:
    """True where OpenVINO's CPU plugin computes bf16 natively (AVX512-BF16, AMX)."""
    return "BF16" in openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def read_onnx_metadata(path: Path, flag: str) -> dict[str, object]:
    """The `dinomaly` metadata of an ONNX file written by export.py (ExportError otherwise)."""
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: not an ONNX file
        raise ExportError(f"{flag} {path}: not an ONNX model ({type(err).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{flag} {path}: not exported by export.py (no {METADATA_KEY!r} metadata)")
    return json.loads(props[METADATA_KEY])


def read_metadata(model, path: Path, flag: str) -> dict[str, object]:
    """The `dinomaly` runtime info of an OpenVINO model read from `path`."""
    if not model.has_rt_info([METADATA_KEY]):
        raise ExportError(f"{flag} {path}: not exported by export.py (no {METADATA_KEY!r} runtime info)")
    return json.loads(model.get_rt_info([METADATA_KEY]).astype(str))


def set_metadata(model, metadata: dict[str, object]) -> None:
    """`metadata` as JSON in the model's runtime info, key `dinomaly` (replaced if there)."""
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])


def from_onnx(onnx_path: Path, metadata: dict[str, object]):
    """The OpenVINO model (`ov.Model`) of an exported ONNX file, `metadata` in its rt_info."""
    try:
        model = openvino().convert_model(str(onnx_path))
    except Exception as err:  # OpenVINO's conversion errors run to pages
        raise ExportError(f"OpenVINO cannot convert the exported model ({short_message(err)})") from None
    set_metadata(model, metadata)
    return model


def save_ir(model, out: Path, metadata: dict[str, object]) -> int:
    """Write `model` to `out` (.xml) and its weights to `out`'s .bin, fp32, `metadata` in its
    rt_info; each file atomically, the .bin first (a reader of the .xml finds its weights).
    Returns the size of the .bin in bytes."""
    ov = openvino()
    set_metadata(model, metadata)
    out.parent.mkdir(parents=True, exist_ok=True)  # --out's folder may not exist yet
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".ir-") as tmp:
        try:
            ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        except Exception as err:  # a full disk reads as OpenVINO's RuntimeError
            raise ExportError(f"--out {out}: cannot write the OpenVINO model ({short_message(err)})") from None
        # OpenVINO finds the weights of X.xml in X.bin: the pair is renamed together
        for name, target in (("model.bin", out.with_suffix(".bin")), ("model.xml", out)):
            with open(Path(tmp) / name, "rb") as src:
                atomic_write(target, lambda f, src=src: shutil.copyfileobj(src, f, 1 << 24), binary=True)
    return out.with_suffix(".bin").stat().st_size


class OpenVinoPipeline:
    """An exported pipeline run by OpenVINO on the CPU: `pipeline(images)` with `images` a
    normalised `B×3×crop×crop` float32 array or tensor → `(maps B×1×R×R, scores B)` numpy.

    `path`: an OpenVINO model (.xml) or an ONNX file of export.py; `precision`: f32 (the
    exported values) or bf16 (faster where the CPU has it); `threads`: OpenVINO's inference
    threads (default: its own, one per core). `metadata`: the settings stored at export."""

    def __init__(self, path: str | Path, precision: str = "f32", threads: int | None = None,
                 flag: str = "--openvino", model=None) -> None:
        ov = openvino()
        path = Path(path)
        core = ov.Core()
        if model is None:  # else an `ov.Model` in memory (export.py measuring int8), `path` its name
            try:
                model = core.read_model(str(path))
            except Exception as err:  # OpenVINO raises RuntimeError subclasses for unreadable files
                raise ExportError(f"{flag} {path}: not a model OpenVINO can read "
                                  f"({type(err).__name__}: {short_message(err)})") from None
        self.metadata = (read_onnx_metadata(path, flag) if path.suffix.lower() == ".onnx"
                         else read_metadata(model, path, flag))
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as err:
            raise ExportError(f"{flag} {path}: OpenVINO cannot compile it ({short_message(err)})") from None
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        results = self.request.infer({INPUT_NAME: np.ascontiguousarray(images, np.float32)})
        maps, scores = (results[self.compiled.output(name)] for name in OUTPUT_NAMES)
        return np.array(maps, copy=True), np.array(scores, copy=True)


def short_message(err: BaseException) -> str:
    """The last informative line of an exception's message (OpenVINO's run to pages, the
    cause at the end), at most 300 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__
