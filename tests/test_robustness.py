"""The run's side of the error policy: every bad setting or environment stops before anything is
written, with one line naming the flag or path; a failed start leaves nothing behind; a
run stopped later (Ctrl-C, a full disk) says where its last checkpoint is and resumes;
classes whose metrics are not defined give nan, left out of the mean with a note; files
get the usual permissions. (The data side, image modes and mask encodings, is in
test_real_data.py.)"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from engine import checks
from engine import evaluation
from engine import fileio
import models
from engine import report
import synth
import engine.loop
from engine.cli import main, parse_args
from recipes.anomaly_map import AnomalyPipeline
from recipes.dinomaly import Config
from engine.data import build_datasets
from engine.evaluation import IMAGE_AND_PIXEL_METRICS as METRIC_NAMES
from engine.maps import EvalMaps, collect_maps
from engine.run import run
from engine.step import train_step
from conftest import TINY

ENCODER = "dinov2reg_vit_small_14"
TRAIN = [*TINY, "--total_iters", "4", "--eval_every", "2", "--classes", "aaa,bbb"]


@pytest.fixture
def data(tmp_path) -> Path:
    return synth.make_mvtec(tmp_path / "data", classes=("aaa", "bbb"), n_train=3)


def stop(tmp_path: Path, *argv: str, defaults: Config | None = None) -> checks.Stop:
    """`main` with `argv` must stop with one line and write nothing in
    `tmp_path/results`; returns the SystemExit."""
    save_dir = tmp_path / "results"
    with pytest.raises(SystemExit) as err:
        main(defaults or Config(), [*TRAIN, "--save_dir", str(save_dir), *argv])
    assert not save_dir.exists() or not any(save_dir.iterdir())
    line = str(err.value)
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line
    return err.value


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- --device

@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu:0", "cuda:-1"])
def test_unknown_device_names_the_flag_and_the_devices(tmp_path, data, capsys, name):
    err = stop(tmp_path, "--data_path", str(data), "--device", name)
    assert f"--device {name!r}" in str(err) or f"--device {name}:" in str(err)
    assert "cpu" in str(err).split("--device", 1)[1]  # the devices there are
    assert err.code == 2
    assert capsys.readouterr().err.strip() == str(err)  # printed once, one line


def test_cuda_asked_for_without_cuda_is_an_error_not_the_cpu(tmp_path, data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = stop(tmp_path, "--data_path", str(data), "--device", "cuda")
    assert "--device cuda: no CUDA device is usable here" in str(err)
    assert "available: cpu" in str(err)


def test_gpu_index_beyond_the_gpus_present(tmp_path, data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    err = stop(tmp_path, "--data_path", str(data), "--device", "cuda:5")
    assert "--device cuda:5: there is no GPU 5, this machine has 2 (cpu, cuda:0, cuda:1)" \
        in str(err)
    assert checks.check_device("cuda:1") == "cuda:1"  # present: accepted as it is


# ----------------------------------------------------------------------------- --save_dir

def test_save_dir_that_is_a_file(tmp_path, data):
    afile = tmp_path / "results"
    afile.write_text("mine")
    with pytest.raises(SystemExit) as err:
        main(Config(), [*TRAIN, "--data_path", str(data), "--save_dir", str(afile)])
    assert str(err.value) == (f"error: --save_dir {afile}: {afile} is a file, not a folder; "
                              "pass a folder (it is created if it does not exist)")
    assert afile.read_text() == "mine"
    # the results folder itself a file: --save_name is named
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run").write_text("mine too")
    with pytest.raises(SystemExit, match=r"--save_name run: .*out/run is a file"):
        main(Config(), [*TRAIN, "--data_path", str(data),
                                        "--save_dir", str(tmp_path / "out"), "--save_name", "run"])
    assert (tmp_path / "out" / "run").read_text() == "mine too"


def test_save_dir_without_write_permission(tmp_path, data, monkeypatch):
    """os.access says no (root passes every mode bit, so it is asked, not chmod)."""
    target = tmp_path / "shared"
    target.mkdir()
    real_access = os.access
    monkeypatch.setattr(checks.os, "access",
                        lambda p, mode: False if Path(p) == target else real_access(p, mode))
    with pytest.raises(SystemExit) as err:
        main(Config(), [*TRAIN, "--data_path", str(data),
                                        "--save_dir", str(target / "sub" / "deeper")])
    assert str(err.value) == (f"error: --save_dir {target / 'sub' / 'deeper'}: cannot write "
                              f"there (in {target}): no permission to write there; pass a folder "
                              "you can write to")
    assert list(target.iterdir()) == []


def test_save_dir_made_read_only_by_its_mode(tmp_path, data):
    """chmod 555: refused for every user, root included (who could write, but should not)."""
    target = tmp_path / "locked"
    target.mkdir()
    target.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as err:
            main(Config(), [*TRAIN, "--data_path", str(data),
                                            "--save_dir", str(target)])
    finally:
        target.chmod(0o755)
    assert str(err.value) == (f"error: --save_dir {target}: cannot write there: no permission "
                              "to write there; pass a folder you can write to")
    assert list(target.iterdir()) == []


def test_save_dir_on_a_read_only_file_system(tmp_path, data, monkeypatch):
    """The write probe's failure (EROFS) is reported; a real read-only mount where the
    machine allows one, else the probe's OSError."""
    target = tmp_path / "ro"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(target)],
                             capture_output=True).returncode == 0
    try:
        if not mounted:
            def refuse(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system")
            monkeypatch.setattr(checks.tempfile, "mkstemp", refuse)
        with pytest.raises(SystemExit) as err:
            main(Config(), [*TRAIN, "--data_path", str(data),
                                            "--save_dir", str(target)])
        assert str(err.value) == (f"error: --save_dir {target}: cannot write there: read-only "
                                  "file system; pass a folder you can write to")
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=True)


# ----------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("flag,value,says", [
    ("--num_workers", "-1", "--num_workers -1: must be 0"),
    ("--seed", "-1", "--seed -1: must be in 0 … 4294967295"),
    ("--seed", str(2 ** 32), f"--seed {2 ** 32}: must be in 0 … 4294967295"),
    ("--batch_size", "0", "--batch_size 0: must be positive"),
    ("--total_iters", "-5", "--total_iters -5: must be a positive"),
    ("--eval_every", "0", "--eval_every 0: must be positive"),
    ("--log_every", "0", "--log_every 0: must be positive"),
    ("--image_size", "-112", "--image_size -112: must be positive"),
    ("--crop_size", "100", "--crop_size 100: must be a positive multiple of the 14-pixel patch"),
    ("--eval_resolution", "0", "--eval_resolution 0: must be positive"),
    ("--dropout", "1.5", "--dropout 1.5: must be in [0, 1)"),
    ("--dropout", "nan", "--dropout nan: must be in [0, 1)"),
    ("--gt_threshold", "128", "--gt_threshold 128.0: must be in [0, 1): it is on the 0-1 scale"),
    ("--gt_threshold", "-0.5", "--gt_threshold -0.5: must be in [0, 1)"),
    ("--gt_threshold", "inf", "--gt_threshold inf: must be in [0, 1)"),
    ("--spike_factor", "0.5", "--spike_factor 0.5: must be 0 (off) or above 1"),
    ("--checkpoint_every", "-2", "--checkpoint_every -2: must be 0 (off)"),
    ("--max_restarts", "-1", "--max_restarts -1: must be 0 or more"),
    ("--total_iters", "1e4", "argument --total_iters: invalid int value: '1e4'"),
])
def test_numbers_out_of_range(tmp_path, data, capsys, flag, value, says):
    err = stop(tmp_path, "--data_path", str(data), flag, value)
    assert str(err).startswith(f"error: {says}"), str(err)
    assert capsys.readouterr().err == str(err) + "\n"  # one line, no usage block


def test_seed_with_restarts_stays_in_range(tmp_path, data):
    err = stop(tmp_path, "--data_path", str(data), "--seed", str(2 ** 32 - 2), "--spike_restart",
               "--max_restarts", "3")
    assert f"--seed {2 ** 32 + 1}: must be in 0 … 4294967295" in str(err)
    cfg = parse_args(Config(), ["--seed", str(2 ** 32 - 1)])
    assert cfg.seed == 2 ** 32 - 1  # the edge itself is numpy's


def test_classes_list_with_spaces_is_trimmed(data):
    cfg = parse_args(Config(), ["--classes", " aaa, bbb ,", "--data_path", str(data)])
    assert cfg.classes == ("aaa", "bbb")
    cfg = parse_args(Config(), ["--classes", " auto ", "--data_path", str(data)])
    assert cfg.classes == ("aaa", "bbb")
    with pytest.raises(SystemExit, match="--classes ' , ' names no class"):
        parse_args(Config(), ["--classes", " , "])


# ----------------------------------------------------------------------------- failed starts

def weights_file(path: Path) -> Path:
    """A ViT-S weights file in the official DINOv2 key format (random values)."""
    torch.save(models.vit_encoder.build(ENCODER).state_dict(), path)
    return path


def test_failed_start_leaves_no_folder_and_the_same_command_runs_again(tmp_path, data):
    """An encoder weights file that only reads as broken when loaded: the run folder
    (and the save_dir it made) is removed again, so the same command works once fixed."""
    weights = weights_file(tmp_path / "vits.pth")
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a torch zip, truncated
    argv = [*TRAIN, "--encoder_weights", str(weights), "--data_path", str(data),
            "--save_dir", str(tmp_path / "results"), "--total_iters", "2"]
    with pytest.raises(SystemExit) as err:
        main(Config(), argv)
    line = str(err.value)
    assert line.startswith(f"error: cannot read encoder weights file {weights}: truncated or "
                           "corrupt (") and "\n" not in line
    assert not (tmp_path / "results").exists()
    weights.write_bytes(good)  # fixed: the same command runs
    main(Config(), argv)
    assert (tmp_path / "results" / "dinomaly_mvtec_uni" / "model.pth").is_file()


def test_interrupted_before_the_first_step_leaves_no_folder(tmp_path, data, monkeypatch):
    (tmp_path / "results").mkdir()  # an empty save_dir of the user's stays
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine.loop, "setup_training", ctrl_c)
    with pytest.raises(SystemExit) as err:
        main(Config(), [*TRAIN, "--data_path", str(data),
                                        "--save_dir", str(tmp_path / "results")])
    assert err.value.code == 130
    assert str(err.value) == "interrupted before the first training step: nothing was kept"
    assert (tmp_path / "results").is_dir() and list((tmp_path / "results").iterdir()) == []


def test_weights_file_that_is_an_image_stops_before_anything_is_written(tmp_path, data):
    picture = tmp_path / "weights.pth"
    Image.new("RGB", (8, 8)).save(picture, format="PNG")
    err = stop(tmp_path, "--data_path", str(data), "--encoder_weights", str(picture))
    assert str(err) == (f"error: cannot read encoder weights file {picture}: it is not a file "
                        "written by torch.save (it looks like a PNG image); pass a .pth file "
                        "written by torch.save")


def test_checkpoint_that_is_an_image_gets_a_short_message(tmp_path, data):
    picture = tmp_path / "model.png"
    Image.new("L", (8, 8)).save(picture)
    err = stop(tmp_path, "--data_path", str(data), "--eval_only", "--checkpoint", str(picture))
    assert str(err) == (f"error: cannot read checkpoint {picture}: it is not a file written by "
                        "torch.save (it looks like a PNG image); pass a .pth file written by "
                        "torch.save")
    pickled = tmp_path / "whole_model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module, not a state_dict
    err = stop(tmp_path, "--data_path", str(data), "--eval_only", "--checkpoint", str(pickled))
    assert "it holds pickled Python objects, not only tensors" in str(err)
    assert "weights_only" not in str(err) and len(str(err)) < 300


def test_loader_process_errors_read_as_in_the_main_process(tmp_path, data):
    """A corrupt training image found while loading (no pre-flight check): the same line
    with 0 and with 2 loader processes, and no run folder left either way."""
    bad = data / "aaa" / "train" / "good" / "000.png"
    bad.write_bytes(bad.read_bytes()[:200])
    lines = []
    for workers in ("0", "2"):
        save_dir = tmp_path / f"results_{workers}"
        with pytest.raises(SystemExit) as err:
            main(Config(), [*TRAIN, "--data_path", str(data), "--skip_image_check",
                                            "--num_workers", workers, "--batch_size", "6",
                                            "--save_dir", str(save_dir)])
        lines.append(str(err.value))
        assert not save_dir.exists()
    assert lines[0] == lines[1]
    assert lines[0].startswith(f"error: cannot read image {bad}: ") and "\n" not in lines[0]
    assert "Traceback" not in lines[0] and "worker" not in lines[0]


def test_realiad_record_missing_a_field(tmp_path):
    root = synth.make_realiad(tmp_path / "realiad", categories=("usb",), n_train=2)
    json_path = root / "realiad_jsons" / "realiad_jsons" / "usb.json"
    split = json.loads(json_path.read_text())
    del split["test"][2]["anomaly_class"]
    json_path.write_text(json.dumps(split))
    err = stop(tmp_path, "--data_path", str(root), "--classes", "usb",
               defaults=Config(dataset="realiad"))
    assert str(json_path) in str(err) and "'anomaly_class'" in str(err)
    assert "record 2" in str(err) and split["test"][2]["image_path"] in str(err)


def test_transposed_mask_stops_before_training(tmp_path):
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa",), n_train=2)
    image = data / "aaa" / "test" / "crack" / "000.png"
    mask = data / "aaa" / "ground_truth" / "crack" / "000_mask.png"
    Image.open(image).crop((0, 0, 64, 48)).save(image)  # 64 wide, 48 high
    Image.open(mask).crop((0, 0, 48, 64)).save(mask)  # transposed: 48 wide, 64 high
    err = stop(tmp_path, "--data_path", str(data), "--classes", "aaa")
    assert str(mask) in str(err) and str(image) in str(err)
    assert "48" in str(err) and "64" in str(err)


# ----------------------------------------------------------------------------- stopped runs

def test_ctrl_c_says_where_the_checkpoint_is_and_the_run_resumes(tmp_path, data, monkeypatch):
    argv = [*TRAIN, "--data_path", str(data), "--save_dir", str(tmp_path / "results")]
    run_dir = tmp_path / "results" / "dinomaly_mvtec_uni"
    real_step = train_step
    calls = []

    def step(t, img, it, cfg):
        calls.append(it)
        if len(calls) == 3:  # iteration 3, after the checkpoint of iteration 2
            raise KeyboardInterrupt
        return real_step(t, img, it, cfg)
    monkeypatch.setattr(engine.loop, "train_step", step)
    with pytest.raises(SystemExit) as err:
        main(Config(), argv)
    assert err.value.code == 130
    command = shlex.join(["python", sys.argv[0], *argv, "--resume"])
    assert str(err.value) == (
        f"interrupted, at iteration 2/4: the last checkpoint is {run_dir / 'checkpoint.pth'} "
        "(iteration 2; results.csv and model.pth are from the last evaluation saved); continue "
        f"with: {command}")
    assert (run_dir / "log.txt").read_text().splitlines()[-1] == str(err.value)
    monkeypatch.setattr(engine.loop, "train_step", real_step)
    results = run(parse_args(Config(), [*argv, "--resume"]), argv)
    assert [r["iteration"] for r in read_rows(run_dir / "results.csv")] == ["2"] * 3 + ["4"] * 3
    assert set(results) == {"aaa", "bbb", "Mean"}


def test_ctrl_c_in_the_next_class_names_its_own_state(tmp_path, data, monkeypatch):
    """Class-separated: stopped at the first step of class bbb, the line speaks of bbb (no
    checkpoint yet), not of the checkpoint class aaa left."""
    argv = [*TRAIN, "--data_path", str(data), "--save_dir", str(tmp_path / "results")]
    real_step = train_step
    calls = []

    def step(t, img, it, cfg):
        calls.append(it)
        if len(calls) == 5:  # aaa trained its 4 iterations; bbb's first
            raise KeyboardInterrupt
        return real_step(t, img, it, cfg)
    monkeypatch.setattr(engine.loop, "train_step", step)
    with pytest.raises(SystemExit) as err:
        main(Config(separate=True, save_name="sep"), argv)
    line = str(err.value)
    assert line.startswith("interrupted, at iteration 0/4 of class bbb: no checkpoint yet")
    assert "aaa" not in line.split("continue with:")[0]
    assert (tmp_path / "results" / "sep" / "aaa" / "checkpoint.pth").is_file()


def test_real_ctrl_c_in_a_script_with_loader_processes(tmp_path, data):
    """SIGINT to the script itself, loader processes running: exit status 130, the one
    line last on stderr, no traceback (neither the script's nor a worker's)."""
    run_dir = tmp_path / "results" / "dinomaly_mvtec_uni"
    argv = [*TINY, "--num_workers", "2", "--classes", "aaa,bbb", "--data_path", str(data),
            "--save_dir", str(tmp_path / "results"), "--total_iters", "1000",
            "--eval_every", "1000", "--checkpoint_every", "2"]
    script = Path(__file__).resolve().parent.parent / "dinomaly_mvtec_uni.py"
    proc = subprocess.Popen([sys.executable, str(script), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # the first checkpoint, iteration 2
            if (run_dir / "checkpoint.pth").is_file() or proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted, at iteration ")
    assert f"the last checkpoint is {run_dir / 'checkpoint.pth'} (iteration " in last
    assert last.endswith(" --resume") and last in (run_dir / "log.txt").read_text()


class _FullDisk(io.RawIOBase):
    """A file whose writes fail as on a full disk after `room` bytes."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def fileno(self) -> int:
        return self.f.fileno()

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()
        super().close()


def fill_disk(monkeypatch, name: str, at_write: int) -> None:
    """Make the `at_write`-th atomic write of a file called `name` fail as on a full disk
    (ENOSPC from the file itself, under whatever writes to it)."""
    real_fdopen = fileio.os.fdopen
    writes = []

    def fdopen(fd, mode="r", **kwargs):
        f = real_fdopen(fd, mode, **kwargs)
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            writes.append(fd)
            if len(writes) == at_write:
                return _FullDisk(f, room=4096)
        return f
    monkeypatch.setattr(fileio.os, "fdopen", fdopen)


def test_full_disk_keeps_the_last_good_files(tmp_path, data, monkeypatch):
    """model.pth of the second evaluation cannot be written: the run stops with one line,
    results.csv/md still show only the first evaluation, and model.pth is the first one."""
    argv = [*TRAIN, "--data_path", str(data), "--save_dir", str(tmp_path / "results")]
    run_dir = tmp_path / "results" / "dinomaly_mvtec_uni"
    fill_disk(monkeypatch, "model.pth", at_write=2)
    with pytest.raises(SystemExit) as err:
        main(Config(), argv)
    line = str(err.value)
    assert line.startswith(f"error: cannot write {run_dir / 'model.pth'}: No space left on device "
                           "(the disk is full: free some space, or pass another --save_dir), at "
                           f"iteration 4/4: the last checkpoint is {run_dir / 'checkpoint.pth'} "
                           "(iteration 2")
    assert line.endswith(" --resume") and "\n" not in line
    rows = read_rows(run_dir / "results.csv")
    assert [r["iteration"] for r in rows] == ["2", "2", "2"]
    assert "(iteration 2)" in (run_dir / "results.md").read_text()
    state = torch.load(run_dir / "checkpoint.pth", weights_only=True)
    model = torch.load(run_dir / "model.pth", weights_only=True)  # the good one, iteration 2
    assert state["iteration"] == 2
    for key, value in state["model"].items():
        assert torch.equal(model[key], value), key
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".model.pth.*"))
    monkeypatch.undo()  # space again: the resumed run finishes
    run(parse_args(Config(), [*argv, "--resume"]), argv)
    assert [r["iteration"] for r in read_rows(run_dir / "results.csv")] == ["2"] * 3 + ["4"] * 3


def test_write_error_names_the_file_whatever_torch_save_makes_of_it(tmp_path, monkeypatch):
    target = tmp_path / "x.pth"
    target.write_bytes(b"old")
    fill_disk(monkeypatch, "x.pth", at_write=1)
    with pytest.raises(fileio.WriteError) as err:  # torch.save itself raises a RuntimeError
        fileio.atomic_write(target, lambda f: torch.save({"w": torch.zeros(10_000)}, f),
                            binary=True)
    assert str(err.value) == f"cannot write {target}: No space left on device"
    assert err.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.pth"]


# ----------------------------------------------------------------------------- permissions

@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_usual_permissions(tmp_path, tiny_run, mask):
    old = os.umask(mask)
    try:
        fileio.atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:  # what a plain open gives
            f.write("x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
        assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~mask
        main(Config(), [*TINY, "--data_path", str(tiny_run["data"]),
                                        "--classes", "aaa,bbb", "--eval_only", "--checkpoint",
                                        str(tiny_run["model"]), "--save_maps",
                                        "--save_dir", str(tmp_path / "results")])
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert {"config.json", "log.txt", "results.csv", "results.md"} <= {p.name for p in files}
    assert any(p.suffix == ".png" for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_training_outputs_are_readable_by_others(tiny_run):
    """The shared run, written under this process's umask: model.pth, checkpoint.pth,
    results.csv and the rest have the mode of log.txt (a plain open), not mkstemp's 0600."""
    expected = 0o666 & ~fileio.umask()
    for name in ("log.txt", "model.pth", "checkpoint.pth", "results.csv", "results.md",
                 "config.json"):
        assert stat.S_IMODE((tiny_run["run_dir"] / name).stat().st_mode) == expected, name


def test_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old")
    path.chmod(0o640)
    fileio.atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


# ----------------------------------------------------------------------------- undefined metrics

def odd_classes(root: Path) -> Path:
    """Four classes: `fine`; `nobad` (no anomalous test image); `nogood` (no normal one);
    `blank` (anomalous images whose masks are all empty)."""
    synth.make_mvtec(root, classes=("fine",), n_train=2)
    synth.make_mvtec(root, classes=("nobad",), n_train=2, defects={})
    synth.make_mvtec(root, classes=("nogood",), n_train=2, n_good=0, defects={"crack": 3})
    synth.make_mvtec(root, classes=("blank",), n_train=2)
    for mask in (root / "blank" / "ground_truth" / "crack").iterdir():
        Image.new("L", Image.open(mask).size).save(mask)
    return root


def test_classes_with_undefined_metrics(tmp_path, tiny_run):
    data = odd_classes(tmp_path / "data")
    classes = ("fine", "nobad", "nogood", "blank")
    main(Config(), [*TINY, "--data_path", str(data), "--classes",
                                              ",".join(classes), "--eval_only", "--checkpoint",
                                              str(tiny_run["model"]), "--save_maps",
                                              "--save_dir", str(tmp_path / "results")])
    run_dir = tmp_path / "results" / "dinomaly_mvtec_uni_eval"
    rows = {r["class"]: r for r in read_rows(run_dir / "results.csv")}
    values = {c: [float(rows[c][m]) for m in METRIC_NAMES] for c in rows}
    nan = [math.isnan(v) for v in values["nobad"]]
    assert nan == [True] * 7
    assert [math.isnan(v) for v in values["nogood"]] == [True] * 3 + [False] * 4
    assert [math.isnan(v) for v in values["blank"]] == [False] * 3 + [True] * 4
    assert not any(math.isnan(v) for v in values["fine"])
    # the defined ones are the real numbers: pixel metrics of `nogood` against scikit-learn
    model = models.build_dinomaly(ENCODER, "random")
    models.load_checkpoint(model, tiny_run["model"])
    test_set = build_datasets(parse_args(Config(), [
        *TINY, "--data_path", str(data), "--classes", "nogood"]), ["nogood"])[1]["nogood"]
    maps = collect_maps(AnomalyPipeline(model, 256, 0.01),
                        torch.utils.data.DataLoader(test_set, batch_size=2), "cpu", resize_mask=256)
    assert values["nogood"][3] == pytest.approx(roc_auc_score(maps.masks.ravel(), maps.maps.ravel()),
                                                abs=1e-9)
    assert values["nogood"][4] == pytest.approx(
        average_precision_score(maps.masks.ravel(), maps.maps.ravel()), abs=1e-9)
    # the mean: over the classes where each metric is defined
    for m, name in enumerate(METRIC_NAMES):
        defined = [values[c][m] for c in classes if not math.isnan(values[c][m])]
        assert values["Mean"][m] == pytest.approx(np.mean(defined), abs=1e-12), name
    note = ("Mean leaves out nan metrics: I-AUROC, I-AP, I-F1 of nobad, nogood; P-AUROC, P-AP, "
            "P-F1, P-AUPRO of nobad, blank")
    assert list(rows["Mean"]) == ["iteration", "class", *METRIC_NAMES]  # as before
    log = (run_dir / "log.txt").read_text()
    assert "nobad: I-Auroc:nan, I-AP:nan, I-F1:nan, P-AUROC:nan, P-AP:nan, P-F1:nan, " \
           "P-AUPRO:nan" in log
    assert f"note: {note} (" in log
    page = (run_dir / "results.md").read_text()
    assert "| nobad | nan | nan | nan | nan | nan | nan | nan |" in page and note in page
    assert (run_dir / "maps" / "nobad" / "_histogram.png").is_file()  # heatmaps do not crash


def test_metrics_of_one_class_sets_are_nan():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8)).astype(np.float32)
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[1, 2:5, 2:5] = True
    scores = rng.random(3).astype(np.float32)
    result = EvalMaps(maps, masks, scores, np.array([1, 1, 1], dtype=bool), ["a"] * 3)
    values = evaluation.metrics_of(result)
    assert all(math.isnan(v) for v in values[:3])
    assert values[3] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    result.masks = np.zeros_like(masks)
    result.labels = np.array([0, 1, 1], dtype=bool)
    values = evaluation.metrics_of(result)
    assert values[0] == pytest.approx(roc_auc_score([0, 1, 1], scores), abs=1e-12)
    assert all(math.isnan(v) for v in values[3:])


def test_mean_without_nan_is_the_reference_mean():
    rng = np.random.default_rng(3)
    results = {f"c{i}": list(rng.random(7)) for i in range(15)}
    means, note = report.mean_result(results)
    assert means == [float(v) for v in np.mean(list(results.values()), axis=0)] and note == ""
    results["c3"][6] = math.nan
    means, note = report.mean_result(results)
    assert means[6] == float(np.mean([v[6] for k, v in results.items() if k != "c3"]))
    assert note == "Mean leaves out nan metrics: P-AUPRO of c3"
    all_nan = report.mean_result({"a": [math.nan] * 7})
    assert all(math.isnan(v) for v in all_nan[0])


# ----------------------------------------------------------------------------- data as it comes

MASK_ENCODINGS = {  # boolean mask -> the file a labelling tool might have written
    "0/1": lambda m: Image.fromarray(m.astype(np.uint8), mode="L"),
    "1-bit": lambda m: Image.fromarray(m.astype(np.uint8) * 255, mode="L").convert("1"),
    "palette": lambda m: _palette(m),
    "I;16 0/65535": lambda m: Image.fromarray(m.astype(np.uint16) * 65535),
    "RGB red": lambda m: Image.fromarray(np.stack([m * 255, 0 * m, 0 * m], -1).astype(np.uint8)),
    "RGBA": lambda m: Image.fromarray(np.stack([m * 255] * 3 + [np.full_like(m, 255)], -1)
                                      .astype(np.uint8), mode="RGBA"),
}


def _palette(mask: np.ndarray) -> Image.Image:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC-style: 0 background, 1 dark red
    return img


def test_same_numbers_whatever_the_files_look_like(tmp_path, tiny_run):
    """One grey dataset in 8-bit PNGs with 0/255 masks, and the same pictures as 16-bit
    grey (PNG and TIFF) with masks in every other encoding, named `X.png` or (one folder)
    unrelated names: identical metrics, and the log says how masks were paired."""
    plain = synth.make_mvtec(tmp_path / "plain", classes=("ccc",), n_train=2, n_good=2,
                             defects={"crack": 3, "hole": 3})
    odd = tmp_path / "odd" / "ccc"
    encodings = iter(MASK_ENCODINGS.values())
    for path in sorted((plain / "ccc").rglob("*.png")):
        rel = path.relative_to(plain / "ccc")
        (odd / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.parts[0] == "ground_truth":
            mask = np.asarray(Image.open(path)) > 0
            name = rel.name.replace("_mask", "") if rel.parts[1] == "crack" else f"m{rel.name}"
            encode = next(encodings, MASK_ENCODINGS["0/1"])
            encode(mask).save(odd / rel.parent / name)
            continue
        grey = Image.open(path).convert("L")
        grey.save(path)  # the plain dataset: 8-bit grey
        wide = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
        wide.save((odd / rel).with_suffix(".tif" if rel.stem.endswith("1") else ".png"))
    results = {}
    for name, root in (("plain", plain), ("odd", odd.parent)):
        main(Config(), [*TINY, "--data_path", str(root), "--classes", "ccc",
                                        "--eval_only", "--checkpoint", str(tiny_run["model"]),
                                        "--save_dir", str(tmp_path / name)])
        run_dir = tmp_path / name / "dinomaly_mvtec_uni_eval"
        results[name] = read_rows(run_dir / "results.csv")
    assert {p.suffix for p in odd.rglob("*.*")} == {".png", ".tif"}
    assert [r["class"] for r in results["odd"]] == ["ccc", "Mean"]
    for row_plain, row_odd in zip(results["plain"], results["odd"]):
        assert [row_plain[m] for m in METRIC_NAMES] == \
               [row_odd[m] for m in METRIC_NAMES]  # to the last digit
    log = (tmp_path / "odd" / "dinomaly_mvtec_uni_eval" / "log.txt").read_text()
    assert f"note: ground_truth/hole of {odd}: masks paired with images by sorted order" in log
    assert "ground_truth/crack" not in log  # paired by name: nothing to say


def test_log_that_cannot_be_written_names_its_file():
    from engine.run_folder import RunLog
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    with pytest.raises(fileio.WriteError, match="^cannot write /dev/full: No space left on device$"):
        RunLog(Path("/dev/full")).record("a line")
