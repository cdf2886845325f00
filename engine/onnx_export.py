"""The inference pipeline as one ONNX model (`export.py`), and running it with ONNX Runtime
(`predict.py --onnx`).

The whole pipeline of the method is exported (Dinomaly: `recipes.anomaly_map.AnomalyPipeline`): encoder (its position embeddings
resized for the run's fixed crop), bottleneck, linear-attention decoder, the cosine maps,
upsampling, resize, Gaussian blur and the top-1 % mean score.

    input   image        float32  batch × 3 × crop × crop   (normalised, as the test transform gives)
    output  anomaly_map  float32  batch × 1 × R × R          (R = the evaluation's 256)
    output  score        float32  batch

The graph is one that OpenVINO, ONNX Runtime and TensorRT all take: ONNX opset 18 (GELU as
Erf, LayerNormalization native), no Einsum (the decoder's linear attention is traced in its
matmul form, `models.vision_transformer.linear_attention_matmul`), and every subgraph that
depends on the weights alone (the encoder's resized position embeddings) folded into a
constant, so no bicubic Resize is left to run.

Exporter: torch's `torch.export`-based one (`torch.onnx.export(..., dynamo=True)`, the default
since torch 2.9; it needs `onnxscript`), which runs offline; the legacy TorchScript exporter
is deprecated there, and it cannot trace the encoder's position-embedding resize (its scale
becomes a tensor). The batch axis is dynamic, the weights are stored inside the one file
(`external_data=False`: under protobuf's 2 GB for every encoder here). The run's settings
and thresholds travel in the model's metadata (`METADATA_KEY`, JSON), so that
`predict.py --onnx model.onnx` needs nothing else.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from torch import nn

from engine.errors import ExportError
from engine.fileio import atomic_write_bytes

METADATA_KEY = "dinomaly"
INPUT_NAME, OUTPUT_NAMES = "image", ("anomaly_map", "score")
OPSET = 18  # TensorRT 10, OpenVINO and ONNX Runtime all read it
FOLD_LIMIT = 2**26  # elements: fold weight-only subgraphs of any size (position embeddings)


def export_onnx(pipeline: nn.Module, crop_size: int, out: Path, metadata: dict[str, object]) -> int:
    """Export `pipeline` (eval mode, on the CPU) for `crop_size` inputs to `out`, atomically,
    with `metadata` as JSON under `METADATA_KEY`. Returns the file's size in bytes."""
    data = onnx_model(pipeline, crop_size, metadata).SerializeToString()
    atomic_write_bytes(out, data)
    return len(data)


def onnx_model(pipeline: nn.Module, crop_size: int, metadata: dict[str, object]):
    """`pipeline` as an `onnx.ModelProto` (see the module's docstring), `metadata` in it."""
    try:
        import onnx  # noqa: F401  (the exporter needs both; say so in one line if missing)
        import onnxscript
        import onnxscript.optimizer
    except ImportError as err:
        raise ExportError(f"the ONNX export needs the packages onnx and onnxscript ({err}); "
                          "pip install -r requirements.txt") from None
    example = torch.zeros(2, 3, crop_size, crop_size)  # batch 2: 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter
        try:
            program = torch.onnx.export(pipeline.eval(), (example,), dynamo=True, external_data=False,
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes={"x": {0: batch}}, optimize=True, verbose=False,
                                        opset_version=OPSET)
        except TypeError as err:  # older torch: no external_data / optimize arguments
            raise ExportError(f"the ONNX export needs torch >= 2.6 (this is {torch.__version__}): {err}") from None
        model = onnxscript.optimizer.optimize(program.model_proto, input_size_limit=FOLD_LIMIT,
                                              output_size_limit=FOLD_LIMIT)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return model


class OnnxPipeline:
    """An exported pipeline run by ONNX Runtime: `pipeline(images)` with `images` a
    normalised `B×3×crop×crop` float32 array or tensor → `(maps B×1×R×R, scores B)` numpy.
    `metadata`: the settings stored at export; `threads`: ONNX Runtime's intra-op threads."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise ExportError(f"--onnx needs the package onnxruntime ({err}); "
                              "pip install -r requirements.txt") from None
        available = onnxruntime.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device.startswith("cuda"):
            print("note: this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu): "
                  "running on the CPU", file=sys.stderr)
        try:
            options = onnxruntime.SessionOptions()
            if threads is not None:  # else ONNX Runtime's default: one per physical core
                options.intra_op_num_threads = threads
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own types for unreadable models
            raise ExportError(f"--onnx {path}: not an ONNX model ONNX Runtime can load "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ExportError(f"--onnx {path}: not exported by export.py (no {METADATA_KEY!r} metadata)")
        self.metadata: dict[str, object] = json.loads(props[METADATA_KEY])

    def __call__(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        maps, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
        return maps, scores
