"""The random generators a training run draws from: seeded at the start of a model's
training (`setup_seed`, the reference's), captured for a resume checkpoint and restored from
it: torch's CPU generator, the generator of the run's CUDA device (dropout masks), numpy and
random. (`training_state` stores them; see its docstring.)

One process's state is a plain dict that `torch.load(..., weights_only=True)` reads:

    torch         the CPU generator (data order, worker seeds, evaluation's Conv2d)
    cuda          the generator of the run's CUDA device, or None on the CPU
    cuda_device   {'index', 'name'} of that device, or None
    numpy, random their generators

Checkpoints written before this format keep, under `cuda`, the list of every device's state.
"""
from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed as dist


def setup_seed(seed: int, cudnn_benchmark: bool = False) -> None:
    """Seed torch (CPU and CUDA), numpy and random; cuDNN deterministic unless benchmark."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.backends.cudnn.deterministic = not cudnn_benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def rng_state(device: torch.device | str | None = None) -> dict[str, object]:
    """The generators' states; `device`: the run's device (for CUDA, its generator too)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    np_state = np.random.get_state(legacy=False)
    cuda = cuda_device = None
    if device.type == "cuda":
        index = _cuda_index(device)
        cuda = torch.cuda.get_rng_state(index)
        cuda_device = {"index": index, "name": torch.cuda.get_device_name(index)}
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "cuda_device": cuda_device,
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "random": random.getstate(),
    }


def cuda_generator_plan(state: Mapping[str, object], device: torch.device | str | None
                        ) -> tuple[torch.Tensor | None, str | None]:
    """What to restore into the generator of the run's `device` from a saved `state`, and,
    where the continuation cannot draw the unstopped run's numbers, why (for the log).

    The saved generator goes into whichever GPU the run now uses: another index of the same
    model continues exactly. Another GPU model gets the same generator state, but CUDA's
    dropout kernel spreads the numbers over a grid sized by the GPU's multiprocessors, so
    its masks may differ. CPU to GPU or back: the run continues from the seeded generator."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    saved = state.get("cuda")
    if isinstance(saved, (list, tuple)):  # older checkpoints: every device's generator
        saved_device = None
        if device.type == "cuda" and saved:
            index = _cuda_index(device)
            if index < len(saved):
                return saved[index], None
            return None, (f"the checkpoint holds the generators of {len(saved)} GPUs, none for "
                          f"{device}: its dropout masks start from the seed")
        saved = saved[0] if saved else None
    else:
        saved_device = state.get("cuda_device") or {}
    on_cuda = device.type == "cuda"
    if saved is None:
        return None, ("the checkpoint was saved on the CPU: the GPU's dropout masks start from "
                      "the seed, not bit-identical to an unstopped run") if on_cuda else None
    if not on_cuda:
        return None, ("the checkpoint was saved on a GPU: continuing on the CPU draws other "
                      "dropout masks, not bit-identical to an unstopped run")
    now = torch.cuda.get_device_name(_cuda_index(device))
    if saved_device and saved_device.get("name") not in (None, now):
        return saved, (f"the checkpoint was saved on a {saved_device['name']}, this is a {now}: "
                       "the generator is restored, but CUDA's dropout masks depend on the GPU "
                       "model, so the run may differ from an unstopped one")
    return saved, None


def set_rng_state(state: Mapping[str, object], device: torch.device | str | None = None) -> None:
    """Restore what `rng_state` captured; the CUDA generator into `device`'s as
    `cuda_generator_plan` decides."""
    torch.set_rng_state(state["torch"])
    cuda, _ = cuda_generator_plan(state, device)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, _cuda_index(torch.device(device)))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))


def all_rng_states(device: torch.device | str | None = None) -> list[dict[str, object]]:
    """`rng_state(device)` of every process of a torch.distributed run, in rank order (each
    rank draws its own dropout masks, on its own GPU); `[rng_state(device)]` with one process.
    Collective: every rank must call it."""
    state = rng_state(device)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states  # type: ignore[return-value]
