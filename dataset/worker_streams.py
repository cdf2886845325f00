"""A training set whose random augmentation draws as in the preview code's data loader,
whoever loads it here (`WorkerStreams`).

The Dinomaly2 preview code loads its few-shot training set with `DataLoader(shuffle=True,
num_workers=4)`, a fresh iterator (fresh worker processes) every epoch. Worker `w` seeds
torch and Python's `random` with `base + w` (`base`: one int64 drawn from the main
process's generator when the epoch's iterator is made) and loads the batches `w, w + 4,
w + 8, …` of the epoch, sample by sample: the augmentation of a sample is fixed by the
epoch's `base`, its batch and its place in the batch. Loaded any other way (loader
processes kept across epochs, none, another number of them, several ranks, a run resumed
in the middle of an epoch) the same sample would draw other numbers.

`WorkerStreams` makes those draws explicitly. The batch sampler tags every index with
`(base, batch, place)` (`engine.distributed.GlobalBatchSampler(tag=True)`, chosen when the
training set has `tagged_samples`); the sample is then transformed with the generator
states of its stream `base + batch % workers`, at its place in that stream, and the
states of the process that loads it are left as they were. A stream asked for a later
place than the one it reached (a resumed epoch, another rank's share, another loader
process) is first advanced by running the transform on a blank image once per sample in
between: the draws do not depend on the image (the transform's first step resizes every
image to one size).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.utils.data import ConcatDataset, Dataset

PREVIEW_WORKERS = 4  # the preview's DataLoader(num_workers=4): the epoch's augmentation streams

Tag = tuple[int, int, int, int]  # (index, base seed of the epoch, batch of the epoch, place in it)


def fresh_states(seed: int) -> tuple[torch.Tensor, tuple]:
    """The CPU generator's and Python `random`'s states after `torch.manual_seed(seed)` and
    `random.seed(seed)` (what a DataLoader worker does), without touching either (nor
    CUDA's generators, which `torch.manual_seed` would reseed)."""
    return torch.Generator().manual_seed(seed).get_state(), random.Random(seed).getstate()


class WorkerStreams(ConcatDataset):
    """`ConcatDataset(parts)` whose items, asked for by a `Tag`, are transformed with the
    random draws of the preview's loader (module docstring); asked for by a plain index,
    they draw from the current generators like any dataset.

    Args:
        parts: the per-class datasets, items `(img, label)`, whose transform draws.
        batch_size: the global batch size (places in a stream count whole batches).
        blank: runs the transform once on a blank image (its draws, no decoding).
        workers: the preview's number of loader processes.
    """

    tagged_samples = True  # make_train_loader: tag the indices (engine.distributed)

    def __init__(self, parts: Sequence[Dataset], batch_size: int, blank: Callable[[], object],
                 workers: int = PREVIEW_WORKERS) -> None:
        super().__init__(parts)
        self.batch_size, self.blank, self.workers = batch_size, blank, workers
        # per stream seed: (CPU generator state, Python random state, next place); the
        # streams of one epoch only (a new base forgets the last epoch's)
        self._streams: dict[int, tuple[torch.Tensor, tuple, int]] = {}
        self._base: int | None = None

    def stream_of(self, base: int, batch: int, place: int) -> tuple[int, int]:
        """The stream seed and the position in it of the sample at `place` of `batch`."""
        return (base + batch % self.workers,
                (batch // self.workers) * self.batch_size + place)

    def __getitem__(self, key: int | Tag) -> tuple:
        if not isinstance(key, tuple):
            return super().__getitem__(key)
        index, base, batch, place = key
        if base != self._base:
            self._streams.clear()
            self._base = base
        seed, position = self.stream_of(base, batch, place)
        with self._drawing_from(seed, position):
            return super().__getitem__(index)

    @contextmanager
    def _drawing_from(self, seed: int, position: int) -> Iterator[None]:
        """The generators set to the stream `seed` at `position` (advanced there with
        `blank`; restarted when it is already past it) inside; put back afterwards."""
        cpu, py, reached = self._streams.get(seed) or (*fresh_states(seed), 0)
        if reached > position:
            cpu, py, reached = (*fresh_states(seed), 0)
        outer = torch.get_rng_state(), random.getstate()
        torch.set_rng_state(cpu)
        random.setstate(py)
        try:
            for _ in range(position - reached):
                self.blank()
            yield
        finally:
            self._streams[seed] = (torch.get_rng_state(), random.getstate(), position + 1)
            torch.set_rng_state(outer[0])
            random.setstate(outer[1])
