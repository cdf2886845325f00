"""Prediction throughput on the CPU (issue 12): images per second of the inference pipeline
(`engine.inference.AnomalyPipeline`: encoder, bottleneck, decoder, maps, blur, score) in torch
eager mode and exported to ONNX (`engine.onnx_export`) run by ONNX Runtime, in one run, with
the ratio to eager; the outputs of the two are compared in the same run.

    python benchmarks/bench_predict.py                                    # ViT-B, 448 -> 392 px
    python benchmarks/bench_predict.py --encoder dinov2reg_vit_small_14 --images 32

Random-init model (`weights='random'`: no download; the speed does not depend on the
weights), normalised random batches (the pipeline's input: decoding and resizing are the
same for both and are timed separately, on `--source_size` px JPEGs, as predict.py reads
them). Each backend gets one warm-up batch, then `--repeats` rounds, each one pass of
`--images` images (batches of `--batch_size`) per backend, alternated so that load from
other jobs falls on both; ONNX Runtime gets as many threads as torch. Reported: each
backend's best pass and every pass, and the ratio within each round.
"""
from __future__ import annotations

import argparse
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
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import models  # noqa: E402
from engine.model_source import AnomalyPipeline  # noqa: E402
from engine.onnx_export import OnnxPipeline, export_onnx  # noqa: E402
from engine.predict import batches  # noqa: E402


def rate(run, inputs: list) -> tuple[float, list]:
    """Images per second of one pass of `run` over `inputs` (batches of anything with a
    length), and its outputs."""
    start = time.perf_counter()
    outputs = [run(batch) for batch in inputs]
    return sum(len(b) for b in inputs) / (time.perf_counter() - start), outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="dinov2reg_vit_base_14")
    p.add_argument("--image_size", type=int, default=448)
    p.add_argument("--crop_size", type=int, default=392)
    p.add_argument("--images", type=int, default=16, help="timed images per pass")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="rounds (each backend's best is kept)")
    p.add_argument("--source_size", type=int, default=1024, help="side of the JPEGs for the decode timing")
    a = p.parse_args()

    torch.manual_seed(0)
    model = models.build_dinomaly(a.encoder, "random", dropout=0.0).eval()
    pipeline = AnomalyPipeline(model, 256, 0.01).eval()
    batch_sizes = [min(a.batch_size, a.images - i) for i in range(0, a.images, a.batch_size)]
    inputs = [torch.randn(n, 3, a.crop_size, a.crop_size) for n in batch_sizes]

    def eager(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            maps, scores = pipeline(batch)
        return maps.numpy(), scores.numpy()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        size = export_onnx(pipeline, a.crop_size, Path(tmp) / "model.onnx", {"encoder": a.encoder})
        export_s = time.perf_counter() - start
        runner = OnnxPipeline(Path(tmp) / "model.onnx", threads=torch.get_num_threads())
        backends = {"eager": eager, "onnx": runner}
        for run in backends.values():  # warm-up: one batch each
            run(inputs[0])
        rates: dict[str, list[float]] = {name: [] for name in backends}
        last: dict[str, list] = {}  # each backend's outputs of its last pass
        for _ in range(a.repeats):  # alternated, so that a busy spell slows both alike
            for name, run in backends.items():
                value, last[name] = rate(run, inputs)
                rates[name].append(value)
        # decoding + resizing + normalising, as predict.py reads files
        rng = np.random.default_rng(0)
        files = []
        for i in range(16):
            files.append(Path(tmp) / f"{i}.jpg")
            Image.fromarray(rng.integers(0, 255, (a.source_size, a.source_size, 3), np.uint8)).save(files[-1])
        decode_rate = max(rate(lambda fs: [b for _, b in batches(fs, a.image_size, a.crop_size, 8)], [files])[0]
                          for _ in range(2))

    map_diff = max(float(np.abs(e[0] - o[0]).max()) for e, o in zip(last["eager"], last["onnx"]))
    score_diff = max(float(np.abs(e[1] - o[1]).max()) for e, o in zip(last["eager"], last["onnx"]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python "
          f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {onnxruntime.__version__}")
    print(f"{a.encoder}, {a.image_size} -> {a.crop_size} px, batch {a.batch_size}, {a.images} images "
          f"per pass, {a.repeats} rounds; ONNX export {export_s:.0f} s, {size / 2**20:.0f} MB")
    eager_rate, onnx_rate = max(rates["eager"]), max(rates["onnx"])
    ratios = sorted(o / e for e, o in zip(rates["eager"], rates["onnx"]))
    print("| backend | images/s (best) | vs eager | every pass |")
    print("|---|---|---|---|")
    print(f"| torch eager (fp32) | {eager_rate:.2f} | 1.00x | {', '.join(f'{r:.2f}' for r in rates['eager'])} |")
    print(f"| ONNX Runtime, CPU (fp32) | {onnx_rate:.2f} | {onnx_rate / eager_rate:.2f}x | "
          f"{', '.join(f'{r:.2f}' for r in rates['onnx'])} |")
    print(f"ratio ONNX / eager within each round: median {ratios[len(ratios) // 2]:.2f}x "
          f"({', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"decode + resize + normalise of {a.source_size} px JPEGs (16, best of 2): "
          f"{decode_rate:.1f} images/s")
    print(f"largest difference ONNX vs eager: map {map_diff:.2e}, score {score_diff:.2e}")


if __name__ == "__main__":
    main()
