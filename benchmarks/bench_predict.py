"""Prediction throughput on the CPU: images per second of the inference pipeline
(`recipes.anomaly_map.AnomalyPipeline`: encoder, bottleneck, decoder, maps, blur, score) in torch
eager mode, exported to ONNX and run by ONNX Runtime, and converted to OpenVINO and run in
fp32, bf16 (where the CPU computes it natively) and int8 (NNCF post-training quantization,
`engine.quantize`; the operations it leaves unquantized in f32, and where the CPU has it in
bf16), in one run on the same inputs: the ratio to eager, the largest output
differences to eager and the share of OK/NG decisions that agree with eager's.

    python benchmarks/bench_predict.py                                    # ViT-B, 448 -> 392 px
    python benchmarks/bench_predict.py --encoder dinov2reg_vit_small_14 --images 32
    python benchmarks/bench_predict.py --checkpoint saved_results/demo_1   # a trained run

Default: a random-init model (`weights='random'`: no download; the speed does not depend on
the weights) on normalised random batches, int8 calibrated on `--calibration` other random
batches, decisions at the median eager score (half the images NG: the most sensitive point).
With `--checkpoint RUN`: the run's model, its test images as inputs (the first `--images`,
in order), its training images for calibration and its thresholds (pooled, or the only
class's). Decoding and resizing are the same for every backend and are timed separately, on
`--source_size` px JPEGs, as predict.py reads them. Each backend gets one warm-up batch, then
`--repeats` rounds, each one pass of `--images` images (batches of `--batch_size`) per
backend, alternated so that load from other jobs falls on all; every runtime gets as many
threads as torch. Reported: each backend's best pass, every pass, and the ratio to eager
within each round.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import openvino as ov  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import models  # noqa: E402
from engine.int8_report import class_threshold, run_test_sets  # noqa: E402
from engine.model_source import AnomalyPipeline, inference_pipeline, resolve_source  # noqa: E402
from engine.onnx_export import OnnxPipeline, onnx_model  # noqa: E402
from engine.openvino_export import OpenVinoPipeline, cpu_has_bf16, from_onnx, set_metadata  # noqa: E402
from engine.predict import batches  # noqa: E402
from engine.quantize import calibration_files, image_loader, model_classes, quantize, run_config, spread  # noqa: E402
from engine.thresholds import read_thresholds  # noqa: E402


def rate(run, inputs: list) -> tuple[float, list]:
    """Images per second of one pass of `run` over `inputs` (batches of anything with a
    length), and its outputs."""
    start = time.perf_counter()
    outputs = [run(batch) for batch in inputs]
    return sum(len(b) for b in inputs) / (time.perf_counter() - start), outputs


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="dinov2reg_vit_base_14")
    p.add_argument("--image_size", type=int, default=448)
    p.add_argument("--crop_size", type=int, default=392)
    p.add_argument("--checkpoint", help="a trained run folder (its model, test images, thresholds)")
    p.add_argument("--images", type=int, default=16, help="timed images per pass")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="rounds (each backend's best is kept)")
    p.add_argument("--calibration", type=int, default=32, help="int8 calibration images")
    p.add_argument("--source_size", type=int, default=1024, help="side of the JPEGs for the decode timing")
    return p.parse_args()


def setup(a: argparse.Namespace) -> tuple[AnomalyPipeline, list[torch.Tensor], list, float | None]:
    """The pipeline, the timed input batches, the calibration images (paths or arrays) and
    the decision threshold (None: the median eager score)."""
    if a.checkpoint is None:
        torch.manual_seed(0)
        model = models.build_dinomaly(a.encoder, "random", dropout=0.0).eval()
        sizes = [min(a.batch_size, a.images - i) for i in range(0, a.images, a.batch_size)]
        inputs = [torch.randn(n, 3, a.crop_size, a.crop_size) for n in sizes]
        calibration = [np.random.default_rng(i).standard_normal((1, 3, a.crop_size, a.crop_size), np.float32)
                       for i in range(a.calibration)]
        return AnomalyPipeline(model, 256, 0.01).eval(), inputs, calibration, None
    source = resolve_source(a.checkpoint, None, None, None, None)
    a.encoder, a.image_size, a.crop_size = source.encoder, source.image_size, source.crop_size
    pipeline = inference_pipeline(source, "cpu")
    config = run_config(source)
    test_sets, _ = run_test_sets(config, model_classes(source, config))
    tests = [Path(p) for t in test_sets.values() for p in t.img_paths][:a.images]
    inputs = [b for _, b in batches(tests, a.image_size, a.crop_size, a.batch_size)]
    files, _ = calibration_files(source, None)
    threshold = class_threshold(read_thresholds(source.thresholds_path), None)
    return pipeline, inputs, spread(files, a.calibration), threshold


def build_backends(a, pipeline, calibration, tmp: Path) -> tuple[dict, dict[str, float]]:
    """Every backend as `run(batch) -> (maps, scores)`, and the seconds each took to build."""
    threads = torch.get_num_threads()

    def eager(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            maps, scores = pipeline(batch)
        return maps.numpy(), scores.numpy()
    seconds = {}
    start = time.perf_counter()
    proto = onnx_model(pipeline, a.crop_size, {"encoder": a.encoder})
    (tmp / "model.onnx").write_bytes(proto.SerializeToString())
    seconds["ONNX export"] = time.perf_counter() - start
    fp32 = from_onnx(tmp / "model.onnx", {})
    start = time.perf_counter()
    ready = calibration and isinstance(calibration[0], np.ndarray)  # random inputs, else image files
    int8 = quantize(fp32, proto, calibration, (lambda x: x) if ready else image_loader(a.image_size, a.crop_size))
    seconds["int8 quantization"] = time.perf_counter() - start
    del proto
    gc.collect()  # NNCF's statistics and the ONNX graph: gigabytes for ViT-B
    set_metadata(int8, {})
    backends = {"torch eager (fp32)": eager,
                "ONNX Runtime (fp32)": OnnxPipeline(tmp / "model.onnx", threads=threads),
                "OpenVINO fp32": OpenVinoPipeline("model.xml", "f32", threads, model=fp32)}
    if cpu_has_bf16():
        backends["OpenVINO bf16"] = OpenVinoPipeline("model.xml", "bf16", threads, model=fp32)
    backends["OpenVINO int8"] = OpenVinoPipeline("model.xml", "f32", threads, model=int8)
    if cpu_has_bf16():  # what predict.py --precision bf16 makes of the int8 model
        backends["OpenVINO int8, rest bf16"] = OpenVinoPipeline("model.xml", "bf16", threads, model=int8)
    return backends, seconds


def decode_rate(a, tmp: Path) -> float:
    """Decoding + resizing + normalising, as predict.py reads files (16 JPEGs, best of 2)."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(16):
        files.append(tmp / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (a.source_size, a.source_size, 3), np.uint8)).save(files[-1])
    return max(rate(lambda fs: [b for _, b in batches(fs, a.image_size, a.crop_size, 8)], [files])[0]
               for _ in range(2))


def main() -> None:
    a = parse_args()
    pipeline, inputs, calibration, threshold = setup(a)
    with tempfile.TemporaryDirectory() as tmp:
        backends, seconds = build_backends(a, pipeline, calibration, Path(tmp))
        for run in backends.values():  # warm-up: one batch each
            run(inputs[0])
        rates: dict[str, list[float]] = {name: [] for name in backends}
        last: dict[str, list] = {}  # each backend's outputs of its last pass
        for _ in range(a.repeats):  # alternated, so that a busy spell slows all alike
            for name, run in backends.items():
                value, last[name] = rate(run, inputs)
                rates[name].append(value)
        decode = decode_rate(a, Path(tmp))
    report(a, rates, last, seconds, decode, threshold)


def report(a, rates: dict[str, list[float]], last: dict[str, list], seconds: dict[str, float],
           decode: float, threshold: float | None) -> None:
    eager_name = next(iter(rates))
    eager_maps = np.concatenate([m for m, _ in last[eager_name]])
    eager_scores = np.concatenate([s for _, s in last[eager_name]]).astype(np.float64)
    where = "the run's threshold" if threshold is not None else "the median eager score"
    threshold = float(np.median(eager_scores)) if threshold is None else threshold
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"(OpenVINO CPU capabilities: {' '.join(ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}); "
          f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {onnxruntime.__version__}, openvino {ov.__version__}")
    print(f"{a.encoder}, {a.image_size} -> {a.crop_size} px, batch {a.batch_size}, {a.images} images per pass, "
          f"{a.repeats} rounds; {a.checkpoint or 'random weights, random inputs'}; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"| backend | images/s (best) | vs eager (median of rounds) | every pass | max map diff | "
          f"max score diff | decisions = eager's ({where}) |")
    print("|---|---|---|---|---|---|---|")
    for name, values in rates.items():
        maps = np.concatenate([m for m, _ in last[name]])
        scores = np.concatenate([s for _, s in last[name]]).astype(np.float64)
        ratios = sorted(v / e for v, e in zip(values, rates[eager_name]))
        agree = np.mean((scores > threshold) == (eager_scores > threshold))
        print(f"| {name} | {max(values):.2f} | {ratios[len(ratios) // 2]:.2f}x | "
              f"{', '.join(f'{r:.2f}' for r in values)} | {np.abs(maps - eager_maps).max():.1e} | "
              f"{np.abs(scores - eager_scores).max():.1e} | {100 * agree:.1f} % |")
    print(f"decode + resize + normalise of {a.source_size} px JPEGs: {decode:.1f} images/s")


if __name__ == "__main__":
    main()
