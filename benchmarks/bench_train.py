"""Training speed of the issue-5 options, in one run: iterations per second and peak memory
of the faithful path (explicit attention, fp32, images decoded at every step) and of each
option, as ratios to the first configuration measured in the same run.

    python benchmarks/bench_train.py --device cpu --encoder dinov2reg_vit_small_14 \\
        --image_size 256 --crop_size 224 --batch_size 4 --warmup 2 --iters 5
    python benchmarks/bench_train.py --device cuda --iters 30 --eval_images 100 \\
        --configs faithful,sdpa,bf16,bf16+compile,faithful+cache,bf16+cache,bf16+cache+compile

A configuration is `faithful`, `sdpa` or a `+`-joined list of options over SDPA attention
(the trainer's default): `bf16`, `fp16` (--amp), `tf32` (--tf32), `cache` (--cache_images),
`compile` (--compile), `explicit` (the reference's attention; `faithful` = `explicit` alone).
The steps are the trainer's own (`setup_training`, `make_train_loader`,
`train_step`) on synthetic MVTec-layout images (tests/synth.py, `--source_size` px PNGs,
written to a temporary folder; no download), random-init encoder, the real lr schedule.
Every configuration gets the trainer's loader (the same settings: `--num_workers`
processes kept across epochs, pinned batches on CUDA), and all its `--warmup` + `--iters`
steps come from one epoch (no epoch boundary inside the timing; checked first).
Each configuration runs in its own subprocess (its own memory peak and time limit); one
that fails, cannot compile or times out is reported as such and the others still run.
`--repeats R` runs R rounds over the list and keeps each configuration's fastest (for
shared machines). Reported: it/s over `--iters` steps after `--warmup` (which include
compilation; torch's on-disk compile cache makes later runs' shorter), the time 10,000
such iterations take (the paper's MVTec schedule), peak GPU memory
(`max_memory_allocated`) or the main process's peak RSS, the image-cache build time, and
with `--eval_images N` the evaluation throughput of the model: the anomaly maps
(`maps.collect_maps`) of about N test images spread over the classes, decoded into
memory beforehand (no PNG decoding, no loader start-up, no metrics), the second of two
passes; timed once per attention / compile / tf32 combination (amp and the training-image
cache do not change the evaluation).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
import synth  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import utils  # noqa: E402
from engine.maps import collect_maps  # noqa: E402
from recipes.dinomaly import Config  # noqa: E402
from engine.data import build_datasets, make_train_loader  # noqa: E402
from engine.step import setup_training, train_step  # noqa: E402
from recipes import recipe_of  # noqa: E402

OPTIONS = {  # configuration token -> Config fields
    "explicit": {"fused_attn": False},
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},
    "cache": {"cache_images": True},
    "compile": {"compile": True},
    "tf32": {"tf32": True},
}
ALIASES = {"faithful": "explicit", "sdpa": ""}
RESULT = "BENCH_RESULT "  # prefix of the one line a configuration's subprocess prints


def config_fields(name: str) -> dict[str, object]:
    """`bf16+cache` -> {'amp': 'bf16', 'cache_images': True}."""
    fields: dict[str, object] = {}
    for token in filter(None, ALIASES.get(name, name).split("+")):
        if token not in OPTIONS:
            raise SystemExit(f"unknown option {token!r} in configuration {name!r}; "
                             f"options: {', '.join(OPTIONS)} (or faithful / sdpa)")
        fields.update(OPTIONS[token])
    return fields


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--encoder", default="dinov2reg_vit_base_14")
    p.add_argument("--image_size", type=int, default=448)
    p.add_argument("--crop_size", type=int, default=392)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--iters", type=int, default=30, help="timed steps")
    p.add_argument("--num_workers", type=int, default=4, help="the scripts' value")
    p.add_argument("--configs", default="faithful,sdpa,bf16,cache,compile",
                   help="comma-separated; the first is the baseline of the ratios")
    p.add_argument("--classes", type=int, default=4, help="synthetic classes")
    p.add_argument("--train_per_class", type=int, default=16)
    p.add_argument("--eval_images", type=int, default=0,
                   help="test images (over all classes) to time the evaluation on (0: skip)")
    p.add_argument("--source_size", type=int, default=1024, help="PNG side (MVTec: 1024)")
    p.add_argument("--config_timeout", type=int, default=600, help="seconds per configuration")
    p.add_argument("--compile_timeout", type=int, default=0,
                   help="seconds per configuration with compile (0: --config_timeout); a cold "
                        "compile of ViT-B takes minutes")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default); 1 keeps a shared CPU from "
                        "stalling its threads")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds over the configurations; each reports its fastest (shared "
                        "machines)")
    p.add_argument("--budget", type=int, default=0,
                   help="seconds for all configurations; those past it are skipped (0: none)")
    p.add_argument("--data", help=argparse.SUPPRESS)  # set for the subprocesses
    p.add_argument("--one", help=argparse.SUPPRESS)  # measure this configuration only
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data

def _make_class(root: str, name: str, n_train: int, n_test: int, size: int) -> None:
    synth.make_mvtec(root, classes=(name,), n_train=n_train, n_good=n_test - n_test // 2,
                     defects={"crack": n_test // 2}, size=size)


def make_data(root: Path, args: argparse.Namespace) -> None:
    """`args.classes` synthetic classes in the MVTec layout (one process per class), the
    `eval_images` test images spread over them (at least 2 each)."""
    names = [f"c{i:02d}" for i in range(args.classes)]
    n_test = max(2, math.ceil(args.eval_images / args.classes))
    with ProcessPoolExecutor(min(len(names), os.cpu_count() or 1)) as pool:
        list(pool.map(_make_class, [str(root)] * len(names), names,
                      [args.train_per_class] * len(names), [n_test] * len(names),
                      [args.source_size] * len(names)))


# ----------------------------------------------------------------------------- one configuration

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Preloaded:
    """Test batches decoded once into memory, iterated like their DataLoader (for timing the
    model alone: `collect_maps` reads `.dataset` for the size and iterates the batches)."""

    def __init__(self, loader: DataLoader) -> None:
        self.batches = list(loader)
        self.dataset = loader.dataset

    def __iter__(self):
        return iter(self.batches)


def eval_rate(model: torch.nn.Module, test_sets: dict, cfg: Config, device: torch.device) -> float:
    """Test images per second through the model and the anomaly maps (the evaluation's GPU
    part), on batches decoded beforehand; the second of two passes (the first compiles)."""
    preloaded = [Preloaded(DataLoader(s, batch_size=cfg.batch_size, num_workers=cfg.num_workers))
                 for s in test_sets.values()]
    pipeline = recipe_of(cfg).pipeline(model, cfg)
    for batches in preloaded:  # warm-up (and compilation of the eval variants)
        collect_maps(pipeline, batches, device, cfg.eval_resolution)
    synchronize(device)
    start = time.perf_counter()
    for batches in preloaded:
        collect_maps(pipeline, batches, device, cfg.eval_resolution)
    synchronize(device)
    return sum(len(b.dataset) for b in preloaded) / (time.perf_counter() - start)


def measure(name: str, args: argparse.Namespace, classes: list[str]) -> dict[str, object]:
    """Train `args.warmup + args.iters` steps of configuration `name`, all from one epoch;
    times and peaks."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config(data_path=args.data, classes=tuple(classes), encoder=args.encoder,
                         encoder_weights="random", image_size=args.image_size,
                         crop_size=args.crop_size, batch_size=args.batch_size,
                         num_workers=args.num_workers, device=args.device,
                         **config_fields(name))
    utils.setup_seed(cfg.seed)
    start = time.perf_counter()
    train_set, test_sets = build_datasets(cfg, classes, cache_images=cfg.cache_images)
    cache_s = time.perf_counter() - start
    loader = make_train_loader(cfg, train_set)
    if len(loader) < args.warmup + args.iters:
        raise SystemExit(f"{len(loader)} batches per epoch: fewer than the {args.warmup} + "
                         f"{args.iters} steps to time; raise --train_per_class")
    t = setup_training(cfg, device)
    t.model.train()
    batches = (img for img, _label in loader)  # one epoch: no worker restart in the timing
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def steps(first: int, n: int) -> float:
        start = time.perf_counter()
        for it in range(first, first + n):
            train_step(t, next(batches).to(device, non_blocking=True), it, cfg)
        synchronize(device)
        return time.perf_counter() - start

    warmup_s = steps(0, args.warmup)
    timed_s = steps(args.warmup, args.iters)
    result = {"config": name, "it_s": args.iters / timed_s, "warmup_s": warmup_s,
              "cache_s": cache_s if cfg.cache_images else None, "train_images": len(train_set),
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "peak_gpu_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                               if device.type == "cuda" else None)}
    if args.eval_images:  # every class, as the trainer evaluates
        result["eval_img_s"] = eval_rate(t.model, test_sets, cfg, device)
    return result


# ----------------------------------------------------------------------------- driver

def eval_key(name: str) -> tuple[bool, bool, bool]:
    """What the evaluation's speed depends on: attention, compilation and tf32 (not amp: the
    evaluation runs without autocast; not the training-image cache): each combination is
    timed once."""
    fields = config_fields(name)
    return fields.get("fused_attn", True), fields.get("compile", False), fields.get("tf32", False)


def run_one(name: str, argv: list[str], data: Path, timeout: float, evaluate: bool) -> dict:
    """`measure(name)` in a subprocess; a failure or timeout becomes an `error` entry."""
    cmd = [sys.executable, __file__, *argv, "--one", name, "--data", str(data)]
    if not evaluate:
        cmd += ["--eval_images", "0"]
    print(f"[bench_train] {time.strftime('%H:%M:%S')} {name} (at most {timeout:.0f} s) ...",
          file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": name, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"config": name, "error": f"exit {proc.returncode}: {tail[:200]}"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: str) -> str:
    """GPU, CPU, RAM and library versions, in one line."""
    gpu = "no GPU"
    if torch.device(device).type == "cuda":  # after the runs: this process's CUDA context
        props = torch.cuda.get_device_properties(torch.device(device))
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{gpu}, {cpu_name()} ({os.cpu_count()} CPUs), {ram:.0f} GiB RAM; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown table; ratios against the first row."""
    base = rows[0].get("it_s")

    def num(v: object, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    cuda = torch.device(args.device).type == "cuda"
    memory = "peak GPU memory (GiB)" if cuda else "peak RSS (GiB)"
    lines = [f"| configuration | it/s | vs {rows[0]['config']} | 10k iters (min) | warm-up (s) "
             f"| {memory} | cache build (s) | eval img/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['error']} | | | | | | |")
            continue
        mem = r["peak_gpu_gib"] if r["peak_gpu_gib"] is not None else r["peak_rss_gib"]
        ratio = r["it_s"] / base if base else None
        lines.append(f"| {r['config']} | {r['it_s']:.3g} | {num(ratio, '.2f')}x "
                     f"| {10_000 / r['it_s'] / 60:.1f} | {r['warmup_s']:.1f} | {mem:.2f} "
                     f"| {num(r['cache_s'], '.1f')} | {num(r.get('eval_img_s'), '.1f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:  # inside a configuration's subprocess
        classes = sorted(p.name for p in Path(args.data).iterdir())
        print(RESULT + json.dumps(measure(args.one, args, classes)), flush=True)
        return
    names = args.configs.split(",")
    for name in names:
        config_fields(name)  # unknown options fail now, not after the data is written
    per_epoch = args.classes * args.train_per_class // args.batch_size
    if per_epoch < args.warmup + args.iters:
        raise SystemExit(f"{args.classes} x {args.train_per_class} training images give "
                         f"{per_epoch} batches of {args.batch_size} per epoch, fewer than the "
                         f"{args.warmup} + {args.iters} steps timed within one epoch: raise "
                         "--train_per_class or --classes")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        start = time.perf_counter()
        make_data(Path(tmp), args)
        print(f"[bench_train] {args.classes} x {args.train_per_class} training images of "
              f"{args.source_size} px written in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
        best: dict[str, dict] = {}
        evaluated: set[tuple[bool, bool]] = set()
        for name in names * args.repeats:  # rounds: a burst of load hits one round
            left = args.budget - (time.perf_counter() - start) if args.budget else math.inf
            if left < 30:
                best.setdefault(name, {"config": name, "error": "skipped: --budget spent"})
                continue
            evaluate = args.eval_images > 0 and eval_key(name) not in evaluated
            evaluated.add(eval_key(name))
            limit = (args.compile_timeout or args.config_timeout
                     if config_fields(name).get("compile") else args.config_timeout)
            row = run_one(name, argv, Path(tmp), min(limit, left), evaluate)
            print(f"[bench_train] {json.dumps(row)}", file=sys.stderr, flush=True)
            if name in best and "error" not in best[name]:
                if row.get("it_s", 0) > best[name]["it_s"]:  # keep the first round's eval
                    best[name] = {**row, "eval_img_s": best[name].get("eval_img_s")}
            else:
                best[name] = row
        rows = [best[name] for name in names]
    print(f"Machine: {machine(args.device)}. Date: {time.strftime('%Y-%m-%d')}.")
    print(f"`python benchmarks/bench_train.py {' '.join(argv)}` ({args.encoder}, "
          f"{args.image_size} -> {args.crop_size} px, batch {args.batch_size}, "
          f"{args.classes * args.train_per_class} synthetic {args.source_size} px PNGs, "
          f"{args.num_workers} loader workers, {args.iters} timed steps after {args.warmup}, "
          f"{args.threads or torch.get_num_threads()} torch threads"
          f"{f', best of {args.repeats} rounds' if args.repeats > 1 else ''}):\n")
    print(table(rows, args))


if __name__ == "__main__":
    main()
