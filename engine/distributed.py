"""Multi-process training through torch.distributed, launched by torchrun.

    torchrun --nproc_per_node=N dinomaly_mvtec_uni.py ...

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `launched` joins
the process group (NCCL for CUDA, gloo for CPU) when WORLD_SIZE > 1 and does nothing
otherwise. The global batch is split into N equal contiguous shares (`GlobalBatchSampler`),
so a step sees the same 16 images as a single-process step and, with the hard-mining
threshold taken over the global batch (`utils.all_gather_cat`) and DDP averaging the gradients,
computes the same update (to float round-off).
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from engine.checks import CheckError

T = TypeVar("T")

# The other ranks wait while rank 0 alone checks every image file before training, and while
# it computes a class's metrics; on a large dataset (Real-IAD) either can take longer than
# NCCL's default 10-minute collective timeout.
TIMEOUT = datetime.timedelta(hours=4)


def world_size() -> int:
    """Number of processes of the run (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun); rank 0 checks the data, computes the
    metrics, saves and logs."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextmanager
def launched(device: str) -> Iterator[str]:
    """Inside torchrun (WORLD_SIZE > 1): join the process group for the time of the block and
    yield this process's device, `cuda:<LOCAL_RANK>` for a CUDA `device`, else `cpu`.
    Outside torchrun: yield `device` unchanged. A CUDA device becomes the current one (else
    `cuda:1` would still create a context, and pin memory, on GPU 0)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        if torch.device(device).type == "cuda" and torch.device(device).index is not None:
            torch.cuda.set_device(device)
        yield device
        return
    kind = torch.device(device).type
    if kind == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise CheckError(f"torchrun started process {local_rank} on a machine with "
                             f"{torch.cuda.device_count()} GPUs: pass --nproc_per_node "
                             f"{torch.cuda.device_count()} or fewer (one process per GPU)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    elif kind != "cpu":
        raise CheckError(f"--device {device}: torchrun runs on CUDA (NCCL) or CPU (gloo)")
    dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def local_batch_size(batch_size: int, processes: int) -> int:
    """Each process's share of the global batch; it must divide evenly (equal shares make
    DDP's gradient average the gradient of the global mean loss)."""
    if batch_size % processes:
        divisors = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        raise ValueError(f"--batch_size {batch_size} (the global batch) is not divisible by the "
                         f"{processes} processes of torchrun --nproc_per_node; use a number of "
                         f"processes that divides it ({', '.join(map(str, divisors))})")
    return batch_size // processes


def _comm_device() -> torch.device:
    """Where collective tensors live: NCCL needs CUDA tensors, gloo takes CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_from_main(value: int) -> int:
    """Rank 0's `value` on every rank (unchanged with one process)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.broadcast(t, src=0)
    return int(t.item())


def mean_over_ranks(value: torch.Tensor) -> float:
    """Mean over the ranks of the 0-dim `value` (its value with one process), as a Python
    float: the global batch's loss from the per-rank means of equal shares. The detached
    tensor is summed in float64 where it is and read once (`.item()`: the step's one wait
    for the GPU)."""
    if world_size() == 1:
        return value.item()
    t = value.detach().reshape(1).to(device=_comm_device(), dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world_size()


def main_rank_first(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 alone while the other ranks wait; its result on every rank (it must
    pickle). If it fails on rank 0 (which reports why), the others stop quietly with exit
    status 1. One process: `fn()`."""
    if world_size() == 1:
        return fn()
    if rank() == 0:
        try:
            result = fn()
        except BaseException:
            dist.broadcast_object_list([(False, None)], src=0)
            raise
        dist.broadcast_object_list([(True, result)], src=0)
        return result
    message: list[object] = [None]
    dist.broadcast_object_list(message, src=0)
    ok, result = message[0]
    if not ok:
        raise SystemExit(1)  # rank 0 said why
    return result


def local_rank() -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if world_size() > 1 else 0


def all_ok(ok: bool) -> bool:
    """Whether every rank passed True (a barrier that carries a failure; True alone)."""
    if world_size() == 1:
        return ok
    t = torch.tensor([int(ok)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if world_size() > 1:
        dist.barrier()


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffled global batches of `batch_size`, last partial batch dropped; this rank yields
    its contiguous share `[rank·b, (rank+1)·b)` of each (b = batch_size / processes).

    Each epoch's order is `torch.randperm(n)` under a seed drawn from the default CPU
    generator when the epoch's first batch is requested, as `RandomSampler` draws it: with
    one process, the batches and the generator's consumption are those of
    `DataLoader(dataset, batch_size, shuffle=True, drop_last=True)`. Every rank draws and
    then takes rank 0's seed, so ranks stay in step after rank 0 alone drew numbers
    (evaluation creates DataLoader iterators and a Conv2d).

    Args:
        persistent_loader: the DataLoader keeps its workers between epochs, so it draws its
            worker seed only before the first epoch; the sampler makes that draw itself
            before each later epoch, keeping the generator (and the shuffles) as with fresh
            iterators.
        tag: yield `(index, worker_seed, batch, place)` instead of each index (a training
            set whose augmentation replays a fresh iterator's workers:
            `dataset.WorkerStreams`): the sampler draws every epoch's worker seed itself
            (rank 0's on every rank), where a fresh iterator would have; the loader then
            draws its own from a private generator.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, processes: int = 1,
                 persistent_loader: bool = False, tag: bool = False) -> None:
        self.n = n
        self.batch_size = batch_size
        self.share = local_batch_size(batch_size, processes)
        self.offset = rank * self.share
        self.persistent_loader = persistent_loader
        self.tag = tag
        self.epochs_started = 0
        self.order: list[int] | None = None  # the current epoch's global order
        self.worker_seed: int | None = None  # with `tag`: the current epoch's
        self._pending: tuple[list[int], int, int | None] | None = None

    def __len__(self) -> int:
        return self.n // self.batch_size

    def resume(self, order: Sequence[int], start: int, worker_seed: int | None = None) -> None:
        """Make the next epoch the rest of `order` from sample `start` on (a multiple of
        `batch_size`; with `tag`, under that epoch's `worker_seed`), drawing nothing."""
        if sorted(order) != list(range(self.n)) or start % self.batch_size:
            raise ValueError(f"cannot resume at sample {start} of an order of {len(order)} "
                             f"samples with {self.n} images and batches of {self.batch_size}")
        if self.tag and worker_seed is None:
            raise ValueError("cannot resume a tagged epoch without its worker seed")
        self._pending = (list(order), start, worker_seed)

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: nothing below runs before the first batch is requested
        if self._pending is not None:
            self.order, start, self.worker_seed = self._pending
            self._pending = None
        else:
            if self.tag or (self.persistent_loader and self.epochs_started > 0):
                # a fresh iterator's worker seed
                worker_seed = torch.empty((), dtype=torch.int64).random_()
                if self.tag:
                    self.worker_seed = broadcast_from_main(int(worker_seed.item()))
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator()
            generator.manual_seed(broadcast_from_main(seed))
            self.order = torch.randperm(self.n, generator=generator).tolist()
            start = 0
        self.epochs_started += 1
        for first in range(start, self.n - self.batch_size + 1, self.batch_size):
            share = self.order[first + self.offset: first + self.offset + self.share]
            if self.tag:
                batch = first // self.batch_size
                share = [(i, self.worker_seed, batch, self.offset + j) for j, i in enumerate(share)]
            yield share
