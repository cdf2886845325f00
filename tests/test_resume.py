"""Resume and the loss guard, end to end through the trainer (tiny random ViT-S, CPU,
dropout on): a run stopped and resumed equals the run that never stopped; a kill during a
checkpoint write keeps the previous checkpoint; nan stops the run, spikes are logged,
--spike_restart goes back to the last checkpoint with a new seed."""
from __future__ import annotations

import csv
import dataclasses
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import synth
from engine.cli import main
from recipes.dinomaly import Config
from engine.run import run
from engine import training_state
import utils

ENCODER = "dinov2reg_vit_small_14"
CLASSES = ("aaa", "bbb")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 3 training images per class: 6 in all = 3 batches of 2 per epoch, so the checkpoint
    # at iteration 4 falls in the middle of the second epoch
    return synth.make_mvtec(tmp_path_factory.mktemp("data") / "mvtec", classes=CLASSES, n_train=3)


def config(data: Path, save_dir: Path, **changes: object) -> Config:
    """8 iterations of batch 2, evaluated (and checkpointed) at 4 and 8, 112 -> 98 px."""
    base = Config(data_path=str(data), classes=CLASSES, save_dir=str(save_dir),
                          save_name="run", encoder=ENCODER, encoder_weights="random",
                          image_size=112, crop_size=98, total_iters=8, batch_size=2,
                          eval_every=4, num_workers=0, device="cpu", log_every=3)
    return dataclasses.replace(base, **changes)


def state(run_dir: Path) -> dict:
    return training_state.load_training_state(run_dir / training_state.CHECKPOINT_NAME)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def rows(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.reader(f))


def training_lines(run_dir: Path) -> list[str]:
    """The loss lines of log.txt (periodic and per epoch)."""
    return [ln for ln in (run_dir / "log.txt").read_text().splitlines() if ln.startswith("iter [")]


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """The run that never stops."""
    save_dir = tmp_path_factory.mktemp("straight")
    run(config(data, save_dir))
    return save_dir / "run"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_and_resumed_equals_unstopped(data, straight, tmp_path, monkeypatch, workers):
    """Stopped by a kill while writing the checkpoint of iteration 6 (--checkpoint_every 2),
    so the last good checkpoint is iteration 4's (mid-epoch), then --resume: the same losses
    at every iteration, the same weights, evaluations and log lines. With 2 loader processes
    (kept across epochs) as well: the same as the unstopped run without any."""
    real_save = torch.save

    def save_then_die_at_6(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("format") == training_state.FORMAT \
                and obj["iteration"] == 6:
            f.truncate(f.tell() // 2)  # half of it reached the disk when the process died
            raise Killed()

    monkeypatch.setattr(torch, "save", save_then_die_at_6)
    cfg = config(data, tmp_path, checkpoint_every=2, num_workers=workers)
    with pytest.raises(Killed):
        run(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    stopped = state(run_dir)
    assert stopped["iteration"] == 4 and not stopped["finished"]
    assert (stopped["epoch"], stopped["epoch_position"]) == (1, 1)  # 4 = 3 + 1: mid-epoch
    assert len(stopped["losses"]) == 4
    assert not list(run_dir.glob(".*.tmp"))
    log_before = (run_dir / "log.txt").read_text()

    run(dataclasses.replace(cfg, resume=True))
    resumed, unstopped = state(run_dir), state(straight)
    assert resumed["finished"] and unstopped["finished"]
    assert resumed["losses"].tolist() == unstopped["losses"].tolist()  # all 8, exactly
    assert len(set(resumed["losses"].tolist())) == 8  # (real, varying losses)
    a, b = weights(run_dir / "model.pth"), weights(straight / "model.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows(run_dir) == rows(straight)  # the evaluations at 4 and 8, every digit
    assert resumed["results"] == unstopped["results"]
    # the log: what the stopped run wrote is kept, then the resumed run's lines follow and
    # the loss lines (periodic and per epoch) are those of the unstopped run
    log = (run_dir / "log.txt").read_text()
    assert log.startswith(log_before)
    assert f"resumed from {run_dir / 'checkpoint.pth'} at iteration 4" in log
    after = training_lines(run_dir)[len([ln for ln in log_before.splitlines()
                                         if ln.startswith("iter [")]):]
    assert after == training_lines(straight)[-len(after):] and len(after) >= 3
    assert (run_dir / "results.md").read_text() == (straight / "results.md").read_text()

    # resuming a finished run trains nothing and keeps the results
    before = weights(run_dir / "model.pth")
    final = {r[1]: [float(v) for v in r[2:]] for r in rows(straight)[1:]}
    assert run(dataclasses.replace(cfg, resume=True)) == final
    log = (run_dir / "log.txt").read_text()
    assert "trained to the end (iteration 8), nothing to resume" in log
    assert all(torch.equal(before[k], v) for k, v in weights(run_dir / "model.pth").items())
    assert rows(run_dir) == rows(straight)


@pytest.mark.slow
def test_class_separated_resume(data, tmp_path, monkeypatch):
    """Killed after class aaa finished and class bbb's checkpoint at iteration 2: --resume
    reports aaa from its finished checkpoint and continues bbb; everything equals the
    unstopped run."""
    cfg = config(data, tmp_path, separate=True, total_iters=4, eval_every=2)
    run(dataclasses.replace(cfg, save_name="straight"))
    real_save = training_state.save_training_state

    def save_then_die(path, model, optimizer, scheduler, progress, *args, **kwargs):
        real_save(path, model, optimizer, scheduler, progress, *args, **kwargs)
        if Path(path).parent.name == "bbb" and progress.iteration == 2:
            raise Killed()

    monkeypatch.setattr(training_state, "save_training_state", save_then_die)
    with pytest.raises(Killed):
        run(cfg)
    monkeypatch.undo()
    run_dir, straight = tmp_path / "run", tmp_path / "straight"
    assert state(run_dir / "aaa")["finished"] and state(run_dir / "bbb")["iteration"] == 2
    run(dataclasses.replace(cfg, resume=True))
    assert rows(run_dir) == rows(straight)
    for name in CLASSES:
        a, b = weights(run_dir / name / "model.pth"), weights(straight / name / "model.pth")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert state(run_dir / name)["losses"].tolist() == state(straight / name)["losses"].tolist()
    assert "checkpoint.pth: trained to the end (iteration 4)" in (run_dir / "log.txt").read_text()


def test_resume_refuses_other_settings_and_missing_runs(data, straight, tmp_path, capsys):
    args = ["--data_path", str(data), "--classes", ",".join(CLASSES), "--encoder", ENCODER,
            "--encoder_weights", "random", "--image_size", "112", "--crop_size", "98",
            "--total_iters", "8", "--batch_size", "2", "--eval_every", "4", "--device", "cpu"]
    base = Config(save_name="run", log_every=3)
    before = {p: p.read_bytes() for p in straight.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as err:  # another seed and learning schedule
        main(base, [*args, "--save_dir", str(straight.parent), "--resume", "--seed", "2",
                            "--total_iters", "10", "--num_workers", "3"])
    message = str(err.value)
    assert message.startswith("error: --resume: these settings differ from the run in")
    assert "seed: 1 -> 2" in message and "total_iters: 8 -> 10" in message
    assert "num_workers" not in message  # may change
    assert before == {p: p.read_bytes() for p in straight.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=r"--resume: there is no run to continue in .*nothing"):
        main(base, [*args, "--save_dir", str(tmp_path), "--save_name", "nothing",
                            "--resume"])
    assert not (tmp_path / "nothing").exists()


# ----------------------------------------------------------------------------- loss guard

def injected_loss(monkeypatch, at: int, scale: float) -> None:
    """The loss of the `at`-th training iteration (1-based, counted over the whole run),
    multiplied by `scale` (nan: a non-finite loss)."""
    real = utils.global_cosine_hm_percent
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * scale if calls["n"] == at else value

    monkeypatch.setattr(utils, "global_cosine_hm_percent", loss)


def spikes(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"loss spike at iteration (\d+):", log)]


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    injected_loss(monkeypatch, at=6, scale=float("nan"))
    with pytest.raises(SystemExit) as err:
        run(config(data, tmp_path))
    run_dir = tmp_path / "run"
    message = str(err.value)
    assert message.startswith("error: non-finite loss (nan) at iteration 6: training stopped")
    assert f"{run_dir / 'checkpoint.pth'} (iteration 4) is the last good state" in message
    assert "continue with --resume" in message
    assert message.removeprefix("error: ") in (run_dir / "log.txt").read_text()
    assert state(run_dir)["iteration"] == 4  # nothing saved after the nan
    assert [r[0] for r in rows(run_dir)[1:]] == ["4", "4", "4"]
    assert all(torch.isfinite(v).all() for v in weights(run_dir / "model.pth").values())


@pytest.mark.slow
def test_spike_is_logged_with_its_iteration(data, straight, tmp_path, monkeypatch):
    injected_loss(monkeypatch, at=7, scale=10.0)
    run(config(data, tmp_path, spike_window=3))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert spikes(log) == [7]
    assert spikes((straight / "log.txt").read_text()) == []  # window 100: no check yet
    assert "restart" not in log
    losses = state(tmp_path / "run")["losses"].tolist()
    assert losses[:6] == state(straight)["losses"].tolist()[:6]  # the guard only watches


@pytest.mark.slow
@pytest.mark.parametrize("scale", [10.0, float("nan")])
def test_spike_restart_goes_back_with_a_new_seed(data, straight, tmp_path, monkeypatch, scale):
    injected_loss(monkeypatch, at=7, scale=scale)
    run(config(data, tmp_path, spike_window=3, spike_restart=True))
    run_dir = tmp_path / "run"
    log = (run_dir / "log.txt").read_text()
    assert spikes(log) == ([7] if scale == 10.0 else [])
    if scale != 10.0:
        assert "non-finite loss (nan) at iteration 7" in log
    assert f"spike restart 1/3: back to iteration 4 ({run_dir / 'checkpoint.pth'}), seed 2" in log
    final = state(run_dir)
    assert final["finished"] and final["restarts"] == 1 and len(final["losses"]) == 8
    ours, theirs = final["losses"].tolist(), state(straight)["losses"].tolist()
    assert ours[:4] == theirs[:4] and ours[4:] != theirs[4:]  # new dropout masks after 4
    assert [r[0] for r in rows(run_dir)[1:]] == ["4"] * 3 + ["8"] * 3


@pytest.mark.slow
def test_spike_restarts_are_bounded(data, tmp_path, monkeypatch):
    """max_restarts 1: the second spike (injected again after the restart) is only logged."""
    real = utils.global_cosine_hm_percent
    calls = {"n": 0}

    def loss(*args, **kwargs):  # spikes at the 7th call and the 10th (iteration 7 again)
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * 10 if calls["n"] in (7, 10) else value

    monkeypatch.setattr(utils, "global_cosine_hm_percent", loss)
    run(config(data, tmp_path, spike_window=3, spike_restart=True, max_restarts=1))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert spikes(log) == [7, 7]
    assert log.count("spike restart") == 1 and "(no restart left: 1 done)" in log
    assert state(tmp_path / "run")["restarts"] == 1


# ----------------------------------------------------------------------------- torchrun

def torchrun(args: list[str], stop_at: int = 0) -> subprocess.CompletedProcess:
    """tests/ddp_resume_run.py under torchrun, 2 gloo processes on this machine only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "STOP_AT_CHECKPOINT": str(stop_at)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}",
           str(Path(__file__).resolve().parent / "ddp_resume_run.py"), *args]
    return subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_run_resumes_exactly(data, tmp_path):
    """torchrun, 2 processes, dropout on (each rank its own masks): stopped before its
    second checkpoint (iteration 4) and resumed from the first (iteration 2, mid-epoch),
    the run equals the unstopped one: every rank's generators are in the checkpoint."""
    args = ["--data_path", str(data), "--classes", ",".join(CLASSES), "--save_dir",
            str(tmp_path), "--encoder", ENCODER, "--encoder_weights", "random",
            "--image_size", "64", "--crop_size", "56", "--eval_resolution", "64",
            "--total_iters", "4", "--batch_size", "2", "--eval_every", "2",
            "--num_workers", "0", "--device", "cpu"]
    straight = torchrun([*args, "--save_name", "straight"])
    assert straight.returncode == 0, straight.stdout + straight.stderr
    stopped = torchrun([*args, "--save_name", "run"], stop_at=2)
    assert stopped.returncode != 0
    saved = state(tmp_path / "run")
    assert saved["iteration"] == 2 and (saved["epoch"], saved["epoch_position"]) == (0, 2)
    assert len(saved["rng"]) == 2  # one set of generators per process
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    resumed = torchrun([*args, "--save_name", "run", "--resume"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = state(tmp_path / "run"), state(tmp_path / "straight")
    assert a["finished"] and a["losses"].tolist() == b["losses"].tolist()
    x, y = weights(tmp_path / "run" / "model.pth"), weights(tmp_path / "straight" / "model.pth")
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert rows(tmp_path / "run") == rows(tmp_path / "straight")
