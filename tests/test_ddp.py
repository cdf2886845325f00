"""torchrun with 2 gloo processes on CPU (127.0.0.1 only) against one process, through
`engine.cli.main` (tests/ddp_run.py records each process's step losses): dropout off, hard
mining at full strength from step 2, evaluation by rank 0 between epochs. The per-step
losses, the logged losses and the trained weights equal the single-process run's."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import synth

REPO = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "ddp_run.py"
MVTEC = ("aaa", "bbb")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 6 training images, global batch 4: one batch per epoch, so each of the 3 steps starts
    # an epoch, the third after rank 0's evaluation (its seed must come from rank 0)
    return synth.make_mvtec(tmp_path_factory.mktemp("ddp") / "mvtec", classes=MVTEC, n_train=3)


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


def launch(args: list[str], processes: int, out: Path) -> subprocess.CompletedProcess:
    """Run the helper alone (1) or under torchrun on this machine only (> 1)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DDP_TEST_OUT": str(out), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HELPER), *args]
    if processes > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--nnodes=1",
                    f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def losses(out: Path, rank: int) -> np.ndarray:
    return np.array(json.loads((out / f"losses_rank{rank}.json").read_text()))


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
    two = launch(trainer_args(data, tmp_path, "two"), 2, tmp_path / "out2")
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
    np.testing.assert_allclose([row[2] for row in r2], [row[2] for row in r1], atol=1e-4)


@pytest.mark.slow
def test_batch_not_divisible_by_processes(data, tmp_path):
    proc = launch(trainer_args(data, tmp_path, "bad", batch_size=3), 2, tmp_path / "out")
    assert proc.returncode != 0
    assert "--batch_size 3 (the global batch) is not divisible by the 2 processes" in proc.stderr
    assert not (tmp_path / "bad").exists()
