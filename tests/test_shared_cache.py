"""--cache_images under torchrun, the shared array's logic (dataset/shared_cache.py): two
threads stand for two processes of a machine, a threading barrier for the engine's
`agree` (the 2-process gloo run of test_ddp.py exercises it through the trainer)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import dataset
import synth
from dataset.shared_cache import PREFIX, SharedCache, create_file


class Agreement:
    """`agree(ok)` for n threads: waits for all, returns whether all passed True."""

    def __init__(self, n: int) -> None:
        self.barrier, self.lock, self.oks, self.result = threading.Barrier(n), threading.Lock(), [], None

    def __call__(self, ok: bool) -> bool:
        with self.lock:
            self.oks.append(ok)
        if self.barrier.wait() == 0:
            self.result, self.oks = all(self.oks), []
        self.barrier.wait()
        return self.result


def in_threads(*jobs) -> list:
    """Run the jobs in parallel threads; their results (or the exception each raised)."""
    out: list = [None] * len(jobs)

    def run(i, job):
        try:
            out[i] = job()
        except BaseException as err:  # noqa: BLE001 (returned to the test)
            out[i] = err

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_one_process_fills_the_others_map(tmp_path):
    agree = Agreement(2)
    filler = SharedCache("t1", fills=True, agree=agree, folders=[str(tmp_path)])
    mapper = SharedCache("t1", fills=False, agree=agree, folders=[str(tmp_path)])
    fills = []

    def fill(array):
        fills.append(threading.get_ident())
        array[:] = np.arange(array.size, dtype=np.uint8).reshape(array.shape)

    a, b = in_threads(lambda: filler.array((3, 4, 5, 3), fill),
                      lambda: mapper.array((3, 4, 5, 3), fill))
    assert isinstance(a, np.memmap) and isinstance(b, np.memmap)
    assert np.array_equal(a, b) and b[1, 2, 3, 1] == np.uint8(1 * 60 + 2 * 15 + 3 * 3 + 1)
    assert a.filename == b.filename  # the same memory ...
    assert a.flags.writeable and not b.flags.writeable
    assert len(fills) == 1  # ... decoded once
    assert list(tmp_path.iterdir()) == []  # removed once both mapped it; the mappings live on
    a[0, 0, 0, 0] = 200
    assert b[0, 0, 0, 0] == 200


def test_shared_training_set_equals_the_uncached_one(tmp_path):
    root = synth.make_mvtec(tmp_path / "data", classes=("aaa", "bbb"), n_train=3)
    transform, _ = dataset.get_data_transforms(64, 56)
    (tmp_path / "shm").mkdir()
    agree = Agreement(2)
    caches = [SharedCache("t2", fills=rank == 0, agree=agree, folders=[str(tmp_path / "shm")])
              for rank in range(2)]
    shared = in_threads(*[lambda c=c: dataset.mvtec_train_set(root, ["aaa", "bbb"], transform,
                                                               cache_images=c) for c in caches])
    plain = dataset.mvtec_train_set(root, ["aaa", "bbb"], transform)
    for train_set in shared:
        assert [len(p.images.cache.arrays) for p in train_set.datasets] == [3, 3]
        assert all(torch.equal(train_set[i][0], plain[i][0]) and train_set[i][1] == plain[i][1]
                   for i in range(len(plain)))
    assert list((tmp_path / "shm").iterdir()) == []


def test_a_failing_filler_stops_every_process(tmp_path):
    agree = Agreement(2)

    def fill(array):
        raise dataset.DatasetError("cannot read image x.png")

    a, b = in_threads(
        lambda: SharedCache("t3", True, agree, [str(tmp_path)]).array((2, 2, 2, 3), fill),
        lambda: SharedCache("t3", False, agree, [str(tmp_path)]).array((2, 2, 2, 3), fill))
    assert isinstance(a, dataset.DatasetError) and "x.png" in str(a)
    assert isinstance(b, dataset.DatasetError) and "could not be built" in str(b)
    assert list(tmp_path.iterdir()) == []


def test_folders_without_room_or_missing(tmp_path, monkeypatch):
    path = create_file([str(tmp_path / "absent"), str(tmp_path)], "t4-0", 10)
    assert path.parent == tmp_path and path.stat().st_size == 10
    path.unlink()

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(dataset.DatasetError, match="no room for .* GiB of decoded images"):
        create_file([str(tmp_path)], "t4-1", 2**30)
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_a_killed_filler_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"{PREFIX}{dead}-old-0.u8"
    mine = tmp_path / f"{PREFIX}{os.getpid()}-other-0.u8"  # a live process's: kept
    stale.write_bytes(b"x")
    mine.write_bytes(b"x")
    create_file([str(tmp_path)], "t5-0", 4).unlink()
    assert sorted(tmp_path.iterdir()) == [mine]
