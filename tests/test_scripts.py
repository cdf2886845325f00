"""The six `dinomaly_*.py` scripts end to end on tiny synthetic data (random ViT-S, 98 px,
a few iterations, CPU), and the trainer's command line, outputs and loop structure."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import dataset
import models
import synth
from test_reference_init import reference_dinomaly
from engine.cli import parse_args
from recipes.dinomaly import Config
from engine.errors import run_command
from engine.evaluation import IMAGE_AND_PIXEL_METRICS as METRIC_NAMES
from engine.report import format_result
from engine.run import run
from engine.run_folder import RunFolder


def discover_classes(name: str, root: str) -> list[str]:
    """`--classes auto` of dataset `name`: its layout's discovery."""
    return dataset.dataset_spec(name).layout.discover(root)


def prepare_run_dir(cfg: Config) -> Path:
    """The run folder of `cfg`, created as a run creates it (a refusal is its one line)."""
    folder = RunFolder(Path(cfg.save_dir) / cfg.save_name, cfg.resume)
    run_command(folder.create)
    return folder.path
import utils
from oracles import reference_training_loop

REPO = Path(__file__).resolve().parent.parent
ENCODER = "dinov2reg_vit_small_14"
VITS_KEYS = 276  # the reference's ViT-S Dinomaly state_dict
# the test-mode knobs: random ViT-S, 112 -> 98 px, 4 iterations of batch 2, evaluated twice
KNOBS = ["--encoder", ENCODER, "--encoder_weights", "random", "--image_size", "112",
         "--crop_size", "98", "--total_iters", "4", "--batch_size", "2", "--eval_every", "2",
         "--num_workers", "0", "--device", "cpu"]
NUM = r"(\d\.\d{4})"
LINE = re.compile(rf"^(\w+): I-Auroc:{NUM}, I-AP:{NUM}, I-F1:{NUM}, P-AUROC:{NUM}, P-AP:{NUM}, "
                  rf"P-F1:{NUM}, P-AUPRO:{NUM}$")
MVTEC = ("aaa", "bbb")
REALIAD = ("audiojack", "usb")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    # 3 training images per class: 6 in all = 3 batches of 2, so 4 iterations span 2 epochs
    return {"mvtec": synth.make_mvtec(root / "mvtec", classes=MVTEC, n_train=3),
            "realiad": synth.make_realiad(root / "realiad", categories=REALIAD, n_train=3)}


def run_script(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def result_lines(stdout: str) -> list[tuple[str, list[float]]]:
    """Every result line of the output as (name, 7 values)."""
    out = []
    for line in stdout.splitlines():
        m = LINE.match(line)
        if m:
            out.append((m.group(1), [float(v) for v in m.groups()[1:]]))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics(row: dict[str, str]) -> list[float]:
    return [float(row[k]) for k in METRIC_NAMES]


def check_run_dir(run_dir: Path, proc: subprocess.CompletedProcess, classes: tuple[str, ...],
                  evaluations: list[int], separate: bool) -> list[dict[str, str]]:
    """log.txt = stdout; results.csv rows per class per evaluation (+ Mean); model.pth."""
    log = (run_dir / "log.txt").read_text()
    assert log.splitlines() == proc.stdout.splitlines()
    assert re.search(r"\d+/\d+ \[", proc.stderr)  # the tqdm bar: on stderr, not in the log
    assert "it/s" not in log and "s/it" not in log
    rows = read_csv(run_dir / "results.csv")
    if separate:
        expected = [(str(i), c) for c in classes for i in evaluations] + \
                   [(str(evaluations[-1]), "Mean")]
    else:
        expected = [(str(i), c) for i in evaluations for c in (*classes, "Mean")]
    assert [(r["iteration"], r["class"]) for r in rows] == expected
    for r in rows:
        assert all(0.0 <= v <= 1.0 for v in metrics(r)), r
    final = {r["class"]: metrics(r) for r in rows if r["iteration"] == str(evaluations[-1])}
    np.testing.assert_allclose(final["Mean"], np.mean([final[c] for c in classes], axis=0),
                               rtol=0, atol=1e-12)
    for path in ([run_dir / c / "model.pth" for c in classes] if separate else [run_dir / "model.pth"]):
        sd = torch.load(path, map_location="cpu", weights_only=True)
        assert len(sd) == VITS_KEYS
        assert {k.split(".")[0] for k in sd} == {"encoder", "bottleneck", "decoder"}
    assert not list(run_dir.rglob("*.tmp"))
    return rows


def check_lines(proc: subprocess.CompletedProcess, rows: list[dict[str, str]]) -> None:
    """The printed result lines are the csv rows rounded to 4 decimals, in order."""
    lines = result_lines(proc.stdout)
    printed = [(name, vals) for name, vals in lines]
    from_csv = [(r["class"], [round(v, 4) for v in metrics(r)]) for r in rows]
    for name, vals in from_csv:
        assert any(n == name and np.allclose(v, vals, atol=5e-5) for n, v in printed), name


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_mvtec_uni_end_to_end_eval_only_and_refusal(data, tmp_path):
    args = ["--data_path", str(data["mvtec"]), "--save_dir", str(tmp_path),
            "--classes", ",".join(MVTEC), *KNOBS]
    proc = run_script("dinomaly_mvtec_uni.py", *args)
    run_dir = tmp_path / "dinomaly_mvtec_uni"
    rows = check_run_dir(run_dir, proc, MVTEC, [2, 4], separate=False)
    check_lines(proc, rows)
    # the reference's lines: image count, per-epoch loss (4 iterations = 2 epochs of 3)
    assert "train image number:6" in proc.stdout.splitlines()
    assert re.search(r"^iter \[3/4\], loss:\d\.\d{4}$", proc.stdout, re.M)
    assert re.search(r"^iter \[4/4\], loss:\d\.\d{4}$", proc.stdout, re.M)
    names = [n for n, _ in result_lines(proc.stdout)]
    assert names == ["aaa", "bbb", "Mean"] * 2
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["total_iters"] == 4 and cfg["batch_size"] == 2 and cfg["eval_every"] == 2
    assert cfg["classes"] == list(MVTEC) and cfg["device"] == "cpu"
    assert cfg["encoder"] == ENCODER and cfg["encoder_weights"] == "random"
    assert (cfg["eps"], cfg["dropout"], cfg["separate"]) == (1e-10, 0.2, False)
    assert (cfg["gt_threshold"], cfg["eval_resolution"], cfg["seed"]) == (0.0, 256, 1)
    assert (cfg["lr"], cfg["final_lr"], cfg["warmup_iters"]) == (2e-3, 2e-4, 100)

    # --eval_only on the saved checkpoint reproduces the last evaluation exactly
    ev = run_script("dinomaly_mvtec_uni.py", *args, "--eval_only",
                    "--checkpoint", str(run_dir / "model.pth"))
    ev_rows = read_csv(tmp_path / "dinomaly_mvtec_uni_eval" / "results.csv")
    final = [(r["class"], metrics(r)) for r in rows if r["iteration"] == "4"]
    assert [(r["class"], metrics(r)) for r in ev_rows] == final
    assert all(r["iteration"] == "" for r in ev_rows)
    assert [ln for ln in ev.stdout.splitlines() if LINE.match(ln)] == \
           [ln for ln in proc.stdout.splitlines() if LINE.match(ln)][3:]

    # an existing results folder is never overwritten
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_script("dinomaly_mvtec_uni.py", *args, check=False)
    assert again.returncode != 0
    assert "already exists" in again.stderr and str(run_dir) in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def run_uni(script: str, root: Path, classes: tuple[str, ...], tmp_path: Path
            ) -> tuple[subprocess.CompletedProcess, dict]:
    """A multi-class script on `classes`, 4 iterations, one evaluation: its run folder and
    printed lines checked; returns the process and its config.json."""
    proc = run_script(script, "--data_path", str(root), "--save_dir", str(tmp_path),
                      "--classes", ",".join(classes), *KNOBS, "--eval_every", "4")
    run_dir = tmp_path / script.removesuffix(".py")
    check_lines(proc, check_run_dir(run_dir, proc, classes, [4], separate=False))
    return proc, json.loads((run_dir / "config.json").read_text())


@pytest.mark.slow
def test_visa_uni(data, tmp_path):
    _, cfg = run_uni("dinomaly_visa_uni.py", data["mvtec"], MVTEC, tmp_path)
    assert (cfg["dataset"], cfg["eps"], cfg["dropout"]) == ("visa", 1e-10, 0.2)


@pytest.mark.slow
def test_realiad_uni(data, tmp_path):
    proc, cfg = run_uni("dinomaly_realiad_uni.py", data["realiad"], REALIAD, tmp_path)
    assert [n for n, _ in result_lines(proc.stdout)] == [*REALIAD, "Mean"]
    assert (cfg["dataset"], cfg["eps"], cfg["dropout"]) == ("realiad", 1e-10, 0.4)
    assert cfg["cudnn_benchmark"] is True


@pytest.mark.slow
@pytest.mark.parametrize("script,kind,eps", [("dinomaly_mvtec_sep.py", "mvtec", 1e-8),
                                             ("dinomaly_visa_sep.py", "mvtec", 1e-8),
                                             ("dinomaly_realiad_sep.py", "realiad", 1e-10),
                                             ("dinomaly_mpdd_sep.py", "mvtec", 1e-8)])
def test_sep(data, tmp_path, script, kind, eps):
    classes = MVTEC if kind == "mvtec" else REALIAD
    args = ["--data_path", str(data[kind]), "--save_dir", str(tmp_path),
            "--classes", ",".join(classes), *KNOBS, "--eval_every", "4"]
    proc = run_script(script, *args)
    save_name = script.removesuffix(".py")
    run_dir = tmp_path / save_name
    rows = check_run_dir(run_dir, proc, classes, [4], separate=True)
    check_lines(proc, rows)
    # each class as it finishes, then the summary: every class again and the mean
    lines = result_lines(proc.stdout)
    assert [n for n, _ in lines] == [*classes, *classes, "Mean"]
    assert lines[:2] == lines[2:4]
    assert proc.stdout.count("train image number:3") == 2
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["eps"], cfg["dropout"], cfg["separate"]) == (eps, 0.2, True)
    # a fresh, identically seeded model per class: the second class's model equals the
    # model of a run on that class alone
    if script == "dinomaly_mvtec_sep.py":
        one = run_script(script, "--data_path", str(data[kind]), "--save_dir", str(tmp_path),
                         "--classes", classes[1], "--save_name", "one", *KNOBS, "--eval_every", "4")
        a = torch.load(run_dir / classes[1] / "model.pth", weights_only=True)
        b = torch.load(tmp_path / "one" / classes[1] / "model.pth", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert result_lines(one.stdout)[0] == lines[1]
        # --eval_only with the folder of per-class checkpoints reproduces the results
        run_script(script, *args, "--eval_only", "--checkpoint", str(run_dir))
        ev_rows = read_csv(tmp_path / f"{save_name}_eval" / "results.csv")
        assert [(r["class"], metrics(r)) for r in ev_rows] == \
               [(r["class"], metrics(r)) for r in rows]


@pytest.mark.slow
def test_classes_auto_on_custom_folder(tmp_path):
    root = synth.make_mvtec(tmp_path / "custom", classes=("widget", "gizmo"), n_train=2)
    (root / "notes").mkdir()  # not a class: no train/good
    proc = run_script("dinomaly_mvtec_uni.py", "--data_path", str(root), "--save_dir",
                      str(tmp_path / "out"), "--classes", "auto", *KNOBS, "--total_iters", "2")
    assert [n for n, _ in result_lines(proc.stdout)] == ["gizmo", "widget", "Mean"]
    cfg = json.loads((tmp_path / "out" / "dinomaly_mvtec_uni" / "config.json").read_text())
    assert cfg["classes"] == ["gizmo", "widget"]


# ----------------------------------------------------------------------------- loop structure

@pytest.mark.slow
def test_training_equals_reference_loop(data, tmp_path):
    """The trainer's weights after 4 iterations (2 epochs, 2 evaluations in between, dropout
    on) equal the reference's loop written out as in its dinomaly_mvtec_uni.py, started from
    the reference's own construction (initial weights and generator state): same RNG draws
    in the same order (model construction, DataLoader iterators, dropout, evaluation)."""
    cfg = parse_args(Config(save_name="ours"), [
        "--data_path", str(data["mvtec"]), "--save_dir", str(tmp_path), "--classes",
        ",".join(MVTEC), *KNOBS])
    run(cfg)
    ours = torch.load(tmp_path / "ours" / "model.pth", weights_only=True)

    # --- the reference's loop, abridged only in the printing
    total_iters, batch_size = 4, 2
    utils.setup_seed(1)
    data_transform, gt_transform = dataset.get_data_transforms(112, 98)
    train_data = dataset.mvtec_train_set(data["mvtec"], list(MVTEC), data_transform)
    test_data_list = [dataset.MVTecDataset(data["mvtec"] / c, data_transform, gt_transform,
                                           phase="test") for c in MVTEC]
    train_dataloader = DataLoader(train_data, batch_size=batch_size, shuffle=True, num_workers=0,
                                  drop_last=True)
    # the reference's construction draws (discarded DINOv1 ViT, DINOv2, bottleneck, decoder,
    # inverse-CDF truncated normals), written plainly: its initial weights and generator
    ref_init = reference_dinomaly(ENCODER)
    rng_after_init = torch.get_rng_state()
    model = models.build_dinomaly(ENCODER, "random", dropout=0.2, device="cpu")  # structure only
    model.load_state_dict(ref_init.state_dict())
    torch.set_rng_state(rng_after_init)
    optimizer = utils.StableAdamW([{"params": nn.ModuleList([model.bottleneck, model.decoder]).parameters()}], lr=2e-3,
                                  betas=(0.9, 0.999), weight_decay=1e-4, amsgrad=True, eps=1e-10)
    lr_scheduler = utils.WarmCosineScheduler(optimizer, base_value=2e-3, final_value=2e-4,
                                             total_iters=total_iters, warmup_iters=100)
    reference = reference_training_loop(model, optimizer, lr_scheduler, train_dataloader,
                                        test_data_list, total_iters, 2, batch_size)
    assert ours.keys() == reference.keys()
    changed = [k for k in ours if not torch.equal(ours[k], reference[k])]
    assert not changed, changed[:5]
    # and the run really trained: the weights moved away from the same seed's initialisation
    utils.setup_seed(1)
    fresh = models.build_dinomaly(ENCODER, "random", dropout=0.2, device="cpu").state_dict()
    assert torch.equal(fresh["encoder.pos_embed"], reference["encoder.pos_embed"])
    assert not torch.equal(fresh["decoder.0.attn.qkv.weight"], reference["decoder.0.attn.qkv.weight"])


# ----------------------------------------------------------------------------- command line

def test_parse_args_defaults_and_overrides(tmp_path):
    defaults = Config(dataset="visa", total_iters=10_000, eval_every=5_000,
                              save_name="x", classes=("a", "b", "c"))
    cfg = parse_args(defaults, [])
    assert cfg.total_iters == 10_000 and cfg.classes == ("a", "b", "c") and cfg.save_name == "x"
    assert cfg.device == ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = parse_args(defaults, ["--classes", "c,a", "--total_iters", "7", "--seed", "3",
                                        "--device", "cpu", "--gt_threshold", "0.5",
                                        "--eval_resolution", "128"])
    assert (cfg.classes, cfg.total_iters, cfg.seed, cfg.device) == (("c", "a"), 7, 3, "cpu")
    assert (cfg.gt_threshold, cfg.eval_resolution, cfg.dataset) == (0.5, 128, "visa")
    ckpt = tmp_path / "m.pth"
    ckpt.write_bytes(b"")
    cfg = parse_args(defaults, ["--eval_only", "--checkpoint", str(ckpt)])
    assert cfg.eval_only and cfg.save_name == "x_eval" and cfg.checkpoint == str(ckpt)


@pytest.mark.parametrize("argv", [["--eval_only"], ["--checkpoint", "/nonexistent.pth", "--eval_only"],
                                  ["--classes", "a,a"], ["--crop_size", "100"],
                                  ["--total_iters", "0"], ["--encoder", "vit_huge"],
                                  ["--classes", "auto", "--data_path", "/nonexistent"]])
def test_parse_args_rejects(argv, capsys):
    with pytest.raises(SystemExit):
        parse_args(Config(), argv)
    assert "error" in capsys.readouterr().err


def test_discover_classes(data):
    assert discover_classes("mvtec", str(data["mvtec"])) == list(MVTEC)
    assert discover_classes("realiad", str(data["realiad"])) == list(REALIAD)
    cfg = parse_args(Config(dataset="realiad", classes=("x",)),
                             ["--classes", "auto", "--data_path", str(data["realiad"])])
    assert cfg.classes == REALIAD


def test_results_folder_refusal(tmp_path):
    cfg = Config(save_dir=str(tmp_path), save_name="run")
    assert prepare_run_dir(cfg).is_dir()  # new
    assert prepare_run_dir(cfg).is_dir()  # exists but empty: fine
    (tmp_path / "run" / "log.txt").write_text("old")
    with pytest.raises(SystemExit, match="already exists"):
        prepare_run_dir(cfg)
    assert (tmp_path / "run" / "log.txt").read_text() == "old"


def test_result_line_format():
    line = format_result("carpet", [0.99996, 1, 0.5, 0.25, 0.125, 0.0625, 0.03125])
    assert line == ("carpet: I-Auroc:1.0000, I-AP:1.0000, I-F1:0.5000, P-AUROC:0.2500, "
                    "P-AP:0.1250, P-F1:0.0625, P-AUPRO:0.0312")
    assert LINE.match(line)


def test_script_configs_follow_the_spec():
    """The reference's settings of the six scripts (and the two MPDD ones, the MVTec settings), read
    from their configuration blocks."""
    import importlib
    expected = {  # total_iters, eval_every, dropout, eps, separate, cudnn_benchmark, classes
        "dinomaly_mvtec_uni": (10_000, 5_000, 0.2, 1e-10, False, False, dataset.MVTEC_CLASSES),
        "dinomaly_visa_uni": (10_000, 5_000, 0.2, 1e-10, False, False, dataset.VISA_CLASSES),
        "dinomaly_realiad_uni": (50_000, 50_000, 0.4, 1e-10, False, True, dataset.REALIAD_CLASSES),
        "dinomaly_mvtec_sep": (5_000, 5_000, 0.2, 1e-8, True, False, dataset.MVTEC_CLASSES),
        "dinomaly_visa_sep": (5_000, 5_000, 0.2, 1e-8, True, False, dataset.VISA_CLASSES),
        "dinomaly_realiad_sep": (5_000, 5_000, 0.2, 1e-10, True, False, dataset.REALIAD_CLASSES),
        "dinomaly_mpdd_uni": (10_000, 5_000, 0.2, 1e-10, False, False, dataset.MPDD_CLASSES),
        "dinomaly_mpdd_sep": (5_000, 5_000, 0.2, 1e-8, True, False, dataset.MPDD_CLASSES),
    }
    for name, (iters, every, drop, eps, sep, bench, classes) in expected.items():
        c = importlib.import_module(name).config
        assert (c.total_iters, c.eval_every, c.dropout, c.eps, c.separate, c.cudnn_benchmark) == \
               (iters, every, drop, eps, sep, bench), name
        assert c.classes == tuple(classes), name
        assert (c.batch_size, c.image_size, c.crop_size, c.seed) == (16, 448, 392, 1), name
        assert (c.lr, c.final_lr, c.warmup_iters, c.weight_decay, c.clip_grad) == \
               (2e-3, 2e-4, 100, 1e-4, 0.1), name
        assert (c.encoder, c.encoder_weights, c.num_workers) == \
               ("dinov2reg_vit_base_14", "official", 4), name
        assert c.save_name == name and c.dataset == name.split("_")[1], name
