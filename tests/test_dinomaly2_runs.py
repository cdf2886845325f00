"""Dinomaly2's runs end to end through the engine (tiny random ViT-S, CPU): what a run
writes (results with the paper's row, thresholds.json, report.html, heatmaps, the log), a
stopped and resumed run equal to the unstopped one bit for bit (the 2D run, and the few-shot
run whose augmentation streams continue mid-epoch), and the loss guard."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import dinomaly2_2d
import dinomaly2_fewshot
import synth
import utils
from conftest import TINY_V2
from engine import training_state
from engine.cli import main


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def rows(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.reader(f))


def state(run_dir: Path) -> dict:
    return training_state.load_training_state(run_dir / training_state.CHECKPOINT_NAME)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    x, y = weights(a), weights(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def kill_at_checkpoint(monkeypatch, iteration: int) -> None:
    """The process dies while writing the checkpoint of `iteration` (half of it on disk)."""
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("format") == training_state.FORMAT \
                and obj["iteration"] == iteration:
            f.truncate(f.tell() // 2)
            raise Killed()

    monkeypatch.setattr(torch, "save", save_then_die)


# ----------------------------------------------------------------------------- outputs

@pytest.mark.slow
def test_a_run_writes_what_a_dinomaly_run_writes(v2_run):
    run_dir = v2_run["run_dir"]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["method"], config["dataset"], config["la"], config["lc"], config["cr"],
            config["ll"], config["first_layer_lr"]) == ("dinomaly2", "mvtec", 1, 2, 1, 1, 2e-4)
    table = rows(run_dir)
    assert [r[:2] for r in table[1:]] == [["4", "aaa"], ["4", "bbb"], ["4", "Mean"],
                                          ["8", "aaa"], ["8", "bbb"], ["8", "Mean"]]
    md = (run_dir / "results.md").read_text()
    assert "Dinomaly2, MVTec AD, multi-class" in md
    paper = next(line for line in md.splitlines() if line.startswith("| paper (mean)"))
    assert paper.split("|")[2].strip() == "99.9" and paper.count("–") == 6  # I-AUROC only
    assert "encoder: 'dinov2reg_vit_small_14' (paper: 'dinov2reg_vit_base_14')" in md
    assert "classes: 2 (paper: all 15)" in md
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert list(thresholds["classes"]) == ["aaa", "bbb"] and thresholds["max_ratio"] == 0.01
    assert thresholds["classes"]["aaa"]["iteration"] == 8
    html = (run_dir / "report.html").read_text()
    assert "Dinomaly2" in html and "paper (mean)" in html
    assert len(list((run_dir / "maps" / "aaa").rglob("*.png"))) >= 4  # heatmaps, histogram
    log = (run_dir / "log.txt").read_text()
    assert "train image number:6" in log and "Mean: I-Auroc:" in log
    assert sum(1 for _ in weights(v2_run["model"])) == 278  # the preview's keys
    # the optimizer's step counts stay tensors on the device (non-finite rule), in the state
    saved = state(run_dir)
    assert saved["finished"] and len(saved["losses"]) == 8


# ----------------------------------------------------------------------------- resume

@pytest.mark.slow
def test_stopped_and_resumed_2d_run_equals_unstopped(v2_run, tmp_path, monkeypatch):
    """Killed writing the checkpoint of iteration 6, resumed from iteration 4 (mid-epoch):
    every loss, the weights, the evaluations and the results equal the unstopped run's; the
    optimizer's per-tensor step counts (tensors, for the non-finite rule) come back."""
    argv = [*TINY_V2, "--dataset", "mvtec", "--data_path", str(v2_run["data"]), "--classes",
            "aaa,bbb", "--save_dir", str(tmp_path), "--save_name", "run", "--checkpoint_every", "2"]
    kill_at_checkpoint(monkeypatch, 6)
    with pytest.raises(Killed):
        main(dinomaly2_2d.config, argv)
    monkeypatch.undo()
    run_dir = tmp_path / "run"
    stopped = state(run_dir)
    assert stopped["iteration"] == 4 and (stopped["epoch"], stopped["epoch_position"]) == (1, 1)
    steps = [s["step"] for s in stopped["optimizer"]["state"].values()]
    assert steps and all(isinstance(s, torch.Tensor) and float(s) == 4 for s in steps)
    main(dinomaly2_2d.config, [*argv, "--resume"])
    resumed, unstopped = state(run_dir), state(v2_run["run_dir"])
    assert resumed["losses"].tolist() == unstopped["losses"].tolist()
    assert len(set(resumed["losses"].tolist())) == 8
    assert same_weights(run_dir / "model.pth", v2_run["model"])
    assert rows(run_dir) == rows(v2_run["run_dir"])
    assert "resumed from" in (run_dir / "log.txt").read_text()


@pytest.mark.slow
def test_stopped_and_resumed_few_shot_run_equals_unstopped(tmp_path, monkeypatch):
    """Few-shot, 3 shots of 2 classes (3 batches an epoch), a loader process kept across
    epochs: stopped at iteration 6, resumed from 4, mid-epoch, where the augmentation
    streams continue (the epoch's worker seed is in the checkpoint)."""
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa", "bbb"), n_train=4)
    argv = [*TINY_V2, "--data_path", str(data), "--shot", "3", "--eval_every", "4",
            "--num_workers", "1", "--save_dir", str(tmp_path)]
    main(dinomaly2_fewshot.config, [*argv, "--save_name", "straight"])
    kill_at_checkpoint(monkeypatch, 6)
    with pytest.raises(Killed):
        main(dinomaly2_fewshot.config, [*argv, "--save_name", "run", "--checkpoint_every", "2"])
    monkeypatch.undo()
    stopped = state(tmp_path / "run")
    assert stopped["iteration"] == 4 and stopped["epoch_position"] == 1
    assert isinstance(stopped["epoch_seed"], int)
    main(dinomaly2_fewshot.config, [*argv, "--save_name", "run", "--checkpoint_every", "2",
                                    "--resume", "--num_workers", "0"])
    a, b = state(tmp_path / "run"), state(tmp_path / "straight")
    assert a["losses"].tolist() == b["losses"].tolist() and len(set(b["losses"].tolist())) == 8
    assert same_weights(tmp_path / "run" / "model.pth", tmp_path / "straight" / "model.pth")
    assert rows(tmp_path / "run") == rows(tmp_path / "straight")
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert (config["method"], config["shot"], config["dataset"]) == ("dinomaly2_fewshot", 3, "folders")
    assert "train image number:6" in (tmp_path / "straight" / "log.txt").read_text()


# ----------------------------------------------------------------------------- loss guard

@pytest.mark.slow
def test_nan_loss_goes_back_to_the_checkpoint(v2_run, tmp_path, monkeypatch):
    """A nan loss at iteration 6: the optimizer skips that step (non-finite gradients), the
    guard goes back to the checkpoint of iteration 4 with seed 2 and the run finishes with
    finite weights; the first 4 losses are the unstopped run's."""
    real = utils.global_cosine_hm_percent
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 6 else value

    monkeypatch.setattr(utils, "global_cosine_hm_percent", loss)
    main(dinomaly2_2d.config, [*TINY_V2, "--dataset", "mvtec", "--data_path", str(v2_run["data"]),
                               "--classes", "aaa,bbb", "--save_dir", str(tmp_path),
                               "--save_name", "run", "--spike_restart"])
    run_dir = tmp_path / "run"
    log = (run_dir / "log.txt").read_text()
    assert "non-finite loss (nan) at iteration 6" in log
    assert f"spike restart 1/3: back to iteration 4 ({run_dir / 'checkpoint.pth'}), seed 2" in log
    final = state(run_dir)
    ours, theirs = final["losses"].tolist(), state(v2_run["run_dir"])["losses"].tolist()
    assert final["finished"] and final["restarts"] == 1 and ours[:4] == theirs[:4]
    assert all(torch.isfinite(v).all() for v in weights(run_dir / "model.pth").values())
