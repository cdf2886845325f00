"""Launch overhead and host waits of one training step, measured on any machine:
profiler counts of aten operators (each one at least one kernel launch on a GPU) and of the
operators that make the host wait for the GPU, for the optimizer step and for a whole
training step, before (per-tensor StableAdamW, the reference's boolean-indexing hook) and
after (flat StableAdamW, `torch.where` hook), plus the step times of both, alternated in one
process (a ratio of one run).

    python benchmarks/bench_step_ops.py                  # ViT-S, 224 px, batch 4, CPU
    python benchmarks/bench_step_ops.py --device cuda --encoder dinov2reg_vit_base_14 \\
        --crop_size 392 --image_size 448 --batch_size 16
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import utils  # noqa: E402
from recipes.dinomaly import Config  # noqa: E402
from engine.step import setup_training, train_step  # noqa: E402
from engine.flat_buffers import FlatGroup  # noqa: E402

HOST = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__"}


def reference_hook(grad: torch.Tensor, inds: torch.Tensor, factor: float = 0.0) -> torch.Tensor:
    """The reference's hook: boolean indexing (two nonzero per call)."""
    inds = inds.expand_as(grad)
    grad = grad.clone()
    grad[inds] *= factor
    return grad


class HostReads(TorchFunctionMode):
    """Counts the tensor methods that read values on the host (on a GPU: a wait). The
    profiler misses `.tolist()` on CPU tensors; this misses gradient hooks: both are used."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in HOST:
            self.calls[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def ops(fn) -> tuple[int, Counter]:
    """aten operators `fn()` calls (nested ones included) and its waits for the device."""
    with profile(activities=[ProfilerActivity.CPU]) as prof, HostReads() as reads:
        fn()
    names = Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    waits = Counter({"nonzero": names["aten::nonzero"], **reads.calls})
    return sum(names.values()), +waits


def summary(result: tuple[int, Counter]) -> str:
    count, waits = result
    said = ", ".join(f"{name} {n}" for name, n in sorted(waits.items()))
    return f"{count:,} aten ops; waits: {sum(waits.values())}" + (f" ({said})" if said else "")


def best_times(device: torch.device, rounds: int, calls: dict) -> dict[str, float]:
    """The best wall time in seconds of each call over `rounds` rounds, the calls alternated
    within a round (a burst of load hits them all)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="dinov2reg_vit_small_14")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--crop_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant, alternated")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = Config(encoder=args.encoder, encoder_weights="random", image_size=args.image_size,
                 crop_size=args.crop_size, batch_size=args.batch_size, device=args.device)
    img = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size, device=device)
    variants = {}
    for name, flat in (("before", False), ("after", True)):
        torch.manual_seed(0)
        flattenable = FlatGroup.flattenable
        if not flat:  # the per-tensor form, on separate tensors as before
            FlatGroup.flattenable = staticmethod(lambda params: False)
        try:
            variants[name] = setup_training(cfg, device)
        finally:
            FlatGroup.flattenable = flattenable
        variants[name].optimizer.flat = flat
    hooks = {"before": reference_hook, "after": utils.modify_grad}

    def step(name: str, it: int) -> None:
        utils.modify_grad = hooks[name]
        train_step(variants[name], img, it, cfg)

    for name in variants:  # warm-up: optimizer state made
        step(name, 2000)
    print(f"{cfg.encoder}, {args.crop_size} px, batch {args.batch_size}, {args.device}, "
          f"{sum(p.numel() for p in variants['after'].trainable) / 1e6:.1f} M trainable "
          f"parameters in {len(variants['after'].trainable)} tensors\n")
    print("| | before (per-tensor StableAdamW, boolean-index hook) | after (flat, torch.where) |")
    print("|---|---|---|")
    opt = {n: ops(variants[n].optimizer.step) for n in variants}
    print(f"| optimizer step | {summary(opt['before'])} | {summary(opt['after'])} |")
    whole = {n: ops(lambda n=n: step(n, 2000)) for n in variants}
    print(f"| training step | {summary(whole['before'])} | {summary(whole['after'])} |")
    steps = best_times(device, args.steps, {n: lambda n=n: step(n, 2000) for n in variants})
    print(f"| training step time (best of {args.steps}) | {steps['before'] * 1e3:.0f} ms | "
          f"{steps['after'] * 1e3:.0f} ms ({steps['before'] / steps['after']:.2f}x) |")
    opt_steps = best_times(device, args.steps, {n: variants[n].optimizer.step for n in variants})
    print(f"| optimizer step time (best of {args.steps}) | {opt_steps['before'] * 1e3:.1f} ms | "
          f"{opt_steps['after'] * 1e3:.1f} ms ({opt_steps['before'] / opt_steps['after']:.2f}x) |")
    utils.modify_grad = hooks["after"]


if __name__ == "__main__":
    main()
