"""torchrun with 2 gloo processes on CPU (127.0.0.1 only) against one process, through
`engine.cli.main` (tests/ddp_run.py records each process's step losses): dropout off, hard
mining at full strength from step 2, an evaluation split over the ranks between epochs.
The per-step losses, the logged losses, the trained weights and the metrics equal the
single-process run's (to rounding; the split evaluation of given weights exactly); rank 0
alone checks the image files; --cache_images keeps one copy for both ranks."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import synth
from engine import maps

REPO = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "ddp_run.py"
MVTEC = ("aaa", "bbb")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 6 training images, global batch 4: one batch per epoch, so each of the 3 steps starts
    # an epoch, the third after an evaluation. 5 test images per class: batches of 4 and 1
    return synth.make_mvtec(tmp_path_factory.mktemp("ddp") / "mvtec", classes=MVTEC, n_train=3,
                            n_good=3)


def trainer_args(data: Path, save_dir: Path, name: str, batch_size: int = 4) -> list[str]:
    return ["--data_path", str(data), "--classes", ",".join(MVTEC), "--save_dir", str(save_dir),
            "--save_name", name, "--encoder", "dinov2reg_vit_small_14", "--encoder_weights",
            "random", "--image_size", "64", "--crop_size", "56", "--total_iters", "3",
            "--batch_size", str(batch_size), "--eval_every", "2", "--eval_resolution", "64",
            "--num_workers", "0", "--device", "cpu", "--dropout", "0", "--log_every", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int, out: Path,
           gather_images: int | None = None) -> subprocess.CompletedProcess:
    """Run the helper alone (1) or under torchrun on this machine only (> 1);
    `gather_images`: images per message of the split evaluation."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DDP_TEST_OUT": str(out), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}
    if gather_images is not None:
        env["DDP_GATHER_IMAGES"] = str(gather_images)
    cmd = [sys.executable, str(HELPER), *args]
    if processes > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--nnodes=1",
                    f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def losses(out: Path, rank: int) -> np.ndarray:
    return np.array(json.loads((out / f"losses_rank{rank}.json").read_text()))


def stats(out: Path, rank: int) -> dict[str, int]:
    return json.loads((out / f"stats_rank{rank}.json").read_text())


def trainable(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if not k.startswith("encoder.")}


def results(path: Path) -> list[tuple[str, str, list[float]]]:
    with open(path, newline="") as f:
        return [(r["iteration"], r["class"], [float(v) for k, v in r.items()
                                              if k not in ("iteration", "class")])
                for r in csv.DictReader(f)]


@pytest.mark.slow
def test_two_processes_equal_one(data, tmp_path):
    one = launch(trainer_args(data, tmp_path, "one"), 1, tmp_path / "out1")
    assert one.returncode == 0, one.stdout + one.stderr
    # 2 images per message: rank 0's batch of 4 in 2 rounds, rank 1's 1 image in 1 (then none);
    # the image cache (the same tensors) one copy for both ranks
    two = launch([*trainer_args(data, tmp_path, "two"), "--cache_images"], 2, tmp_path / "out2",
                 gather_images=2)
    assert two.returncode == 0, two.stdout + two.stderr

    # the loss of every step: the mean of the two shares' losses is the whole batch's
    single, rank0, rank1 = losses(tmp_path / "out1", 0), losses(tmp_path / "out2", 0), \
        losses(tmp_path / "out2", 1)
    assert len(single) == len(rank0) == len(rank1) == 3
    assert not np.allclose(rank0, rank1)  # the ranks saw different images
    np.testing.assert_allclose((rank0 + rank1) / 2, single, rtol=0, atol=1e-6)

    # the weights after 3 steps (hard mining acting at steps 2 and 3)
    a, b = trainable(tmp_path / "one" / "model.pth"), trainable(tmp_path / "two" / "model.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)

    # rank 0 alone logs and writes: the logged (global) losses and the evaluations agree
    log1 = (tmp_path / "one" / "log.txt").read_text().splitlines()
    log2 = (tmp_path / "two" / "log.txt").read_text().splitlines()
    assert [ln for ln in log2 if ln.startswith("iter [")] == \
           [ln for ln in log1 if ln.startswith("iter [")]
    assert ", 2 processes," in log2[0] and "processes," not in log1[0]
    assert two.stdout.count("train image number:6") == 1
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2
    r1, r2 = results(tmp_path / "one" / "results.csv"), results(tmp_path / "two" / "results.csv")
    assert [row[:2] for row in r1] == [row[:2] for row in r2] and len(r1) == 6
    # the weights differ by the rounding of DDP's average, AUPRO's 200 thresholds follow the
    # maps' range: the runs' metrics agree to 1e-4
    np.testing.assert_allclose([row[2] for row in r2], [row[2] for row in r1], atol=1e-4)
    # the split evaluation itself: the 2-process run's final model evaluated by one process
    # gives its final metrics exactly (the same batches, the same maps, gathered in order)
    alone = launch([*trainer_args(data, tmp_path, "alone"), "--eval_only", "--checkpoint",
                    str(tmp_path / "two" / "model.pth")], 1, tmp_path / "out3")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    r3 = results(tmp_path / "alone" / "results.csv")
    assert [row[1] for row in r3] == ["aaa", "bbb", "Mean"]
    assert [row[2] for row in r3] == [row[2] for row in r2[3:]]

    # the split evaluation: 2 evaluations × 2 classes × 5 test images, 4 + 1 per class
    one_stats, rank0, rank1 = stats(tmp_path / "out1", 0), stats(tmp_path / "out2", 0), \
        stats(tmp_path / "out2", 1)
    assert one_stats["eval_images"] == 20
    assert (rank0["eval_images"], rank1["eval_images"]) == (16, 4)
    # rank 0 alone checks the files (6 training and 10 test images, 4 masks) before training
    assert one_stats["image_checks"] == rank0["image_checks"] == 20
    assert rank1["image_checks"] == 0
    # --cache_images: rank 0 decodes each class's training images into shared memory, rank 1
    # maps them read-only; no file is left behind
    assert rank0["cache"] == [{"fills": True, "images": 3, "writeable": True, "mapped": True}] * 2
    assert rank1["cache"] == [{"fills": False, "images": 3, "writeable": False, "mapped": True}] * 2
    assert rank0["cache_files_left"] == rank1["cache_files_left"] == []


@pytest.mark.slow
def test_batch_not_divisible_by_processes(data, tmp_path):
    proc = launch(trainer_args(data, tmp_path, "bad", batch_size=3), 2, tmp_path / "out")
    assert proc.returncode != 0
    assert "--batch_size 3 (the global batch) is not divisible by the 2 processes" in proc.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_bad_file_found_by_rank_0_stops_every_rank(data, tmp_path):
    """Rank 0 alone checks the files; its error is printed once and the other rank, waiting
    for its verdict, stops too (no hang until the collective timeout), nothing written."""
    broken = tmp_path / "mvtec"
    shutil.copytree(data, broken)
    (broken / "bbb" / "train" / "good" / "001.png").write_bytes(b"not a png")
    proc = launch(trainer_args(broken, tmp_path, "bad"), 2, tmp_path / "out")
    assert proc.returncode != 0
    assert proc.stderr.count("error: cannot read image") == 1, proc.stderr
    assert "engine/" not in proc.stderr  # no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("n,batch,processes", [(5, 4, 2), (100, 16, 8), (3, 16, 4), (17, 2, 3),
                                               (64, 16, 4), (1, 1, 2)])
def test_evaluation_shares_are_whole_batches_in_order(n, batch, processes):
    """Each rank's share is a contiguous run of the batches one process forms (the same
    batches: the same maps bit for bit), numbers of batches differing by at most one, rank 0
    holding the first; together, in rank order, every image once."""
    shares = [maps.share(n, r, processes, batch) for r in range(processes)]
    assert [i for s in shares for i in s] == list(range(n))
    assert len(shares[0]) > 0
    assert all(s.start % batch == 0 for s in shares if len(s))
    batches = [math.ceil(len(s) / batch) for s in shares]
    assert max(batches) - min(batches) <= 1 and batches == sorted(batches, reverse=True)
