"""Benchmark of the evaluation metrics: the plain reference procedures, and ADEval's
approximate metrics, against metrics.py, on synthetic maps, with the values checked in
the same run.

    python benchmarks/bench_metrics.py [--images 100] [--pixel-images 306] [--adeval-images 1000]
    python benchmarks/bench_metrics.py --class-images 5000

- AUPRO: the reference's 200-threshold loop (relabel every mask at every threshold)
  vs `metrics.compute_pro`, on `--images` maps of 256 x 256.
- pixel metrics: scikit-learn's `roc_auc_score` + `average_precision_score` + the
  reference's `f1_score_max` vs `metrics.binary_metrics`, on `--pixel-images` maps of
  256 x 256 (306 -> 20.05 M pixels).
- the whole exact pass (image-, object- and pixel-level AUROC, AP, F1-max, and AUPRO:
  `binary_metrics` twice + `pixel_metrics`) vs ADEval's approximate
  `auroc_aupr_aupro` (1,000 histogram strips: pixel AUROC, AUPR, AUPRO) on the same
  `--adeval-images` maps, best of `--repeat` runs each, wall and CPU time, when the
  `adeval` package is installed (not a requirement: `pip install adeval`).
- `--torch-device cuda`: `metrics_torch.pixel_metrics` on that device against
  `metrics.pixel_metrics` on the same `--adeval-images` maps (times, largest difference).
- peak extra memory (tracemalloc, which sees numpy's buffers) of each fast pass, in
  units of the size of the float32 maps.
- `--class-images N`: instead, the whole metric pass of `evaluation_batch` (a class of
  5,000 images at 256 x 256 on a 24 GB machine).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from engine.evaluation import metrics_of  # noqa: E402
from engine.maps import EvalMaps  # noqa: E402
from engine.metrics import binary_metrics, compute_pro, pixel_metrics  # noqa: E402
from oracles import reference_f1_max, reference_pro  # noqa: E402

VIEWS = 5  # images per object in the object-level metrics (Real-IAD's five views)


def synthetic_maps(n: int, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masks (n x size x size bool: 0-3 elliptic defects per image, a fifth of the
    images without) and float32 maps (blurred noise, raised on the defects), about
    3 % anomalous pixels, like an MVTec class at 256 px. Built 100 images at a time
    into the final arrays, so that large sets need little more than their own size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    amaps = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        for _ in range(rng.integers(0, 4) if i % 5 else 0):
            cy, cx = rng.random(2) * size
            ry, rx = 3 + rng.random(2) * size / 7
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    for start in range(0, n, 100):
        block = slice(start, start + 100)
        noise = ndimage.uniform_filter(rng.random(amaps[block].shape, dtype=np.float32), size=(1, 5, 5))
        bump = rng.random((noise.shape[0], 1, 1), dtype=np.float32) * np.float32(0.3)
        amaps[block] = noise + masks[block] * bump
    return masks, amaps


def reference_pixel_metrics(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float, float]:
    """scikit-learn's AUROC and AP, the reference's f1_score_max."""
    return (roc_auc_score(y_true, y_score), average_precision_score(y_true, y_score),
            reference_f1_max(y_true, y_score))


def timed(fn: Callable, *args) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def best_of(repeat: int, fn: Callable, *args) -> tuple[object, float, float]:
    """(value, best wall time, best CPU time of this process) over `repeat` runs: the
    machine is shared, so the best run is the least disturbed one."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return value, min(walls), min(cpus)


def peak_extra_bytes(fn: Callable, *args) -> int:
    """Peak of the memory allocated during fn (inputs not counted)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def class_metric_pass(n: int) -> None:
    """The whole metric pass of evaluation_batch (image + pixel metrics + AUPRO) on one
    class of n maps of 256 x 256."""
    masks, amaps = synthetic_maps(n, seed=2)
    rng = np.random.default_rng(3)
    result = EvalMaps(amaps, masks, rng.random(n, dtype=np.float32), masks.any(axis=(1, 2)),
                      [f"{i:05d}.png" for i in range(n)])
    print(f"metric pass of one class, {n} x 256 x 256: maps {amaps.nbytes / 2**30:.2f} GiB, "
          f"masks {masks.nbytes / 2**30:.2f} GiB")
    values, seconds = timed(metrics_of, result)
    peak = peak_extra_bytes(metrics_of, result)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"  metrics_of      {seconds:8.3f} s   " + "  ".join(f"{v:.6f}" for v in values))
    print(f"  peak extra memory {peak / 2**30:.2f} GiB = {peak / amaps.nbytes:.2f}x the maps; "
          f"process peak RSS {rss:.2f} GiB")


def image_and_object_scores(masks: np.ndarray, amaps: np.ndarray) -> tuple[np.ndarray, ...]:
    """(image labels, image scores = map max, object labels, object scores): VIEWS images
    per object, normal images with normal ones (the maps are independent draws), an
    object's score the max over its views. An evaluation has these from its collection
    step, so they are not timed."""
    labels = masks.reshape(len(masks), -1).any(axis=1)
    scores = amaps.reshape(len(amaps), -1).max(axis=1)
    order = np.argsort(labels, kind="stable")[:len(labels) // VIEWS * VIEWS].reshape(-1, VIEWS)
    return labels, scores, labels[order].any(axis=1), scores[order].max(axis=1)


def exact_pass(masks: np.ndarray, amaps: np.ndarray, scores: tuple[np.ndarray, ...]) -> tuple[float, ...]:
    """Every metric of a multi-view evaluation, exact: image level, object level and pixel
    level (AUROC, AP, F1-max, AUPRO)."""
    labels, image_scores, object_labels, object_scores = scores
    return (*binary_metrics(labels, image_scores), *binary_metrics(object_labels, object_scores),
            *pixel_metrics(masks, amaps))


def adeval_comparison(n: int, repeat: int) -> None:
    """The exact pass against ADEval's approximate auroc_aupr_aupro on the same maps."""
    try:
        import adeval
    except ImportError:
        print(f"ADEval: not installed (pip install adeval), comparison on {n} maps skipped")
        return
    if not hasattr(np, "trapz"):  # ADEval 1.1 calls numpy.trapz, which numpy 2.4 removed
        np.trapz = np.trapezoid
    masks, amaps = synthetic_maps(n, seed=4)
    masks_u8 = masks.view(np.uint8)  # ADEval labels them with OpenCV: uint8
    print(f"exact pass vs ADEval, {n} x 256 x 256 = {amaps.size / 1e6:.1f} M pixels "
          f"({masks.mean():.1%} anomalous), best of {repeat}")
    ours, ours_wall, ours_cpu = best_of(repeat, exact_pass, masks, amaps, image_and_object_scores(masks, amaps))
    theirs, theirs_wall, theirs_cpu = best_of(repeat, adeval.auroc_aupr_aupro, amaps, masks_u8)
    print(f"  ADEval auroc_aupr_aupro  wall {theirs_wall:6.3f} s  cpu {theirs_cpu:6.3f} s   "
          f"P-AUROC {theirs[0]:.6f}  P-AUPR {theirs[1]:.6f}  AUPRO {float(theirs[2]):.6f}")
    print(f"  exact pass               wall {ours_wall:6.3f} s  cpu {ours_cpu:6.3f} s   "
          f"P-AUROC {ours[6]:.6f}  P-AP {ours[7]:.6f}  P-F1 {ours[8]:.6f}  AUPRO {ours[9]:.6f}")
    print(f"  ADEval / exact: wall {theirs_wall / ours_wall:.2f}x, cpu {theirs_cpu / ours_cpu:.2f}x; "
          f"image AUROC/AP/F1 {ours[0]:.4f}/{ours[1]:.4f}/{ours[2]:.4f}, "
          f"object {ours[3]:.4f}/{ours[4]:.4f}/{ours[5]:.4f}")
    peak = peak_extra_bytes(pixel_metrics, masks, amaps)
    print(f"  pixel_metrics peak extra memory {peak / 2**20:.1f} MiB = {peak / amaps.nbytes:.2f}x the maps")


def torch_comparison(n: int, device: str, repeat: int) -> None:
    """metrics_torch.pixel_metrics on `device` against metrics.pixel_metrics (numpy)."""
    import torch

    from engine import metrics_torch
    masks, amaps = synthetic_maps(n, seed=4)
    t_masks, t_maps = torch.from_numpy(masks).to(device), torch.from_numpy(amaps).to(device)

    def on_device():
        values = metrics_torch.pixel_metrics(t_masks, t_maps)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return values
    ours, wall, cpu = best_of(repeat, on_device)
    expected, np_wall, np_cpu = best_of(repeat, pixel_metrics, masks, amaps)
    difference = max(abs(a - b) for a, b in zip(ours, expected))
    print(f"pixel metrics on {device}, {n} x 256 x 256, best of {repeat}")
    print(f"  metrics.pixel_metrics (numpy)  wall {np_wall:6.3f} s  cpu {np_cpu:6.3f} s")
    print(f"  metrics_torch.pixel_metrics    wall {wall:6.3f} s  cpu {cpu:6.3f} s   "
          + "  ".join(f"{v:.12f}" for v in ours) + f"   max |difference| {difference:.1e}")


def reference_comparisons(images: int, pixel_images: int) -> None:
    """compute_pro and binary_metrics against the reference procedures."""
    masks, amaps = synthetic_maps(images)
    print(f"AUPRO, {images} x 256 x 256 ({masks.mean():.1%} anomalous pixels)")
    fast, t_fast = timed(compute_pro, masks, amaps)
    ref, t_ref = timed(reference_pro, masks, amaps)
    peak = peak_extra_bytes(compute_pro, masks, amaps)
    print(f"  reference loop  {t_ref:8.3f} s   {ref:.15f}")
    print(f"  compute_pro     {t_fast:8.3f} s   {fast:.15f}")
    print(f"  speed-up {t_ref / t_fast:.0f}x, |difference| {abs(fast - ref):.1e}, "
          f"peak extra memory {peak / 2**20:.1f} MiB = {peak / amaps.nbytes:.2f}x the maps")

    masks, amaps = synthetic_maps(pixel_images, seed=1)
    y_true, y_score = masks.ravel(), amaps.ravel()
    print(f"pixel AUROC + AP + F1-max, {y_score.size / 1e6:.2f} M pixels "
          f"({y_true.mean():.1%} anomalous), maps {amaps.nbytes / 2**20:.0f} MiB")
    fast, t_fast = timed(binary_metrics, y_true, y_score)
    ref, t_ref = timed(reference_pixel_metrics, y_true, y_score)
    peak = peak_extra_bytes(binary_metrics, y_true, y_score)
    print(f"  scikit-learn    {t_ref:8.3f} s   " + "  ".join(f"{v:.15f}" for v in ref))
    print(f"  binary_metrics  {t_fast:8.3f} s   " + "  ".join(f"{v:.15f}" for v in fast))
    difference = max(abs(a - b) for a, b in zip(fast, ref))
    print(f"  speed-up {t_ref / t_fast:.1f}x, max |difference| {difference:.1e}, "
          f"peak extra memory {peak / 2**20:.1f} MiB = {peak / amaps.nbytes:.2f}x the maps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="maps for AUPRO (256 x 256)")
    parser.add_argument("--pixel-images", type=int, default=306, help="maps for the pixel metrics")
    parser.add_argument("--adeval-images", type=int, default=1000,
                        help="maps for the comparison with ADEval (0: skip it)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side of that comparison")
    parser.add_argument("--skip-reference", action="store_true",
                        help="only the ADEval comparison (the reference procedures take a minute)")
    parser.add_argument("--torch-device", default="",
                        help="also time metrics_torch on this device (e.g. cuda) against the numpy path")
    parser.add_argument("--class-images", type=int, default=0,
                        help="instead, time the whole metric pass on one class of this many maps (e.g. 5000)")
    args = parser.parse_args()
    if args.class_images:
        class_metric_pass(args.class_images)
        return
    if not args.skip_reference:
        reference_comparisons(args.images, args.pixel_images)
    if args.adeval_images:
        adeval_comparison(args.adeval_images, args.repeat)
    if args.torch_device:
        torch_comparison(args.adeval_images or 1000, args.torch_device, args.repeat)


if __name__ == "__main__":
    main()
