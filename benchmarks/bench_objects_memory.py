"""Memory of the evaluation of a multi-view run, class after class, as the engine does it:
each class's maps (synthetic, `bench_metrics.synthetic_maps`) evaluated as objects of views
(the seven metrics over every view with ADEval's histogram pixel metrics, the object level),
pooled into the multi-class thresholds, its worst images and objects drawn at once, then
the report (results.csv, thresholds.json, class.json, report.html) written at the end.

    python benchmarks/bench_objects_memory.py --classes 160 --objects 40 --views 5 --side 64
    python benchmarks/bench_objects_memory.py --classes 2 --objects 200 --views 5 --side 256

Prints, per class and at the end: the Python heap kept between classes (tracemalloc, which
sees numpy's buffers) and the process's peak RSS. What is kept per class (scores, labels,
paths, the cases' entries) does not depend on the maps' size: the peak is one class's maps
and their metric pass, whatever the number of classes.
"""
from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from bench_metrics import synthetic_maps  # noqa: E402

from engine.eval_spec import MULTIVIEW_METRICS, EvalSpec  # noqa: E402
from engine.evaluation import Evaluation  # noqa: E402
from engine.maps import EvalMaps  # noqa: E402
from engine.objects import ObjectScore, ObjectSpec  # noqa: E402
from engine.report import Report, ReportSettings  # noqa: E402
from engine.thresholds import PooledThresholds  # noqa: E402


def class_maps(seed: int, n_objects: int, views: int, side: int, files: list[str]) -> EvalMaps:
    n = n_objects * views
    masks, amaps = synthetic_maps(n, side, seed)
    rng = np.random.default_rng(seed)
    labels = masks.any(axis=(1, 2))
    scores = amaps.reshape(n, -1).max(axis=1) + rng.random(n, dtype=np.float32) * 0.1
    objects = np.repeat(np.arange(n_objects), views)
    return EvalMaps(amaps, masks, scores.astype(np.float32), labels, files[:n], objects,
                    np.tile(np.arange(views), n_objects),
                    scores.reshape(n_objects, views).max(axis=1), labels.reshape(n_objects, views).any(axis=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=160)
    p.add_argument("--objects", type=int, default=40)
    p.add_argument("--views", type=int, default=5)
    p.add_argument("--side", type=int, default=64)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_objects_"))
    files = []
    for i in range(args.objects * args.views):  # one small picture per view, shared by the classes
        path = work / "data" / f"o{i // args.views:04d}" / f"v{i % args.views}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), i % 255, np.uint8)).save(path)
        files.append(str(path))
    spec = EvalSpec(MULTIVIEW_METRICS, ObjectSpec(ObjectScore("top_ratio", 0.01)), "histogram")
    run_dir = work / "run"
    run_dir.mkdir()
    settings = ReportSettings("bench", None, {"object_score": spec.objects.score.as_json()}, 32, 28,
                              lambda name: "model.pth", spec.metrics, spec.note())
    report = Report(run_dir, lambda line: None, settings)
    evaluation = Evaluation(pooled=PooledThresholds(), spec=spec)
    size = args.objects * args.views * args.side ** 2 * 5 / 2 ** 20
    print(f"peak RSS after the imports {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.1f} MiB")
    print(f"{args.classes} classes of {args.objects} objects x {args.views} views at {args.side}^2: "
          f"maps and masks {size:.1f} MiB per class")
    tracemalloc.start()
    start = time.perf_counter()
    kept = []
    for c in range(args.classes):
        maps = class_maps(c, args.objects, args.views, args.side, files)
        report.draw(evaluation.add(f"c{c:03d}", maps))
        del maps
        gc.collect()
        kept.append(tracemalloc.get_traced_memory()[0])
        if c in (0, 1) or (c + 1) % 40 == 0:
            print(f"  after class {c + 1:3d}: kept {kept[-1] / 2**20:7.2f} MiB, "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:8.1f} MiB")
    report.evaluation(evaluation, 1, with_mean=True)
    peak = tracemalloc.get_traced_memory()[1]
    per_class = (kept[-1] - kept[0]) / max(args.classes - 1, 1)
    print(f"kept per class {per_class / 2**10:.1f} KiB; Python heap peak {peak / 2**20:.1f} MiB; "
          f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.1f} MiB; "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
