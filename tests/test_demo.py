"""`--demo` (the README's first command), shortened: it builds demo_data/ once, trains,
prints the table, writes heatmaps and results.md; with a random encoder it says so loudly.
Also: --save_maps draws only at the final evaluation."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import demo_data
from engine import heatmaps
import synth
from engine.cli import main, parse_args
from recipes.dinomaly import Config
from engine.run import run
from models import vit_encoder
from models.dinov2 import family as dinov2_family

REPO = Path(__file__).resolve().parent.parent
SHORT = ["--total_iters", "2", "--image_size", "112", "--crop_size", "98", "--device", "cpu"]
TABLE = ("brick", "grass", "gravel", "Mean")


def demo(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "dinomaly_mvtec_uni.py"), "--demo", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


def result_names(stdout: str) -> list[str]:
    return [ln.split(":")[0] for ln in stdout.splitlines() if ": I-Auroc:" in ln]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    proc = demo(tmp_path, *SHORT, "--encoder_weights", "random")
    data = tmp_path / "demo_data"
    assert (data / demo_data.MARKER).is_file()  # built in the current folder
    run_dir = tmp_path / "saved_results" / "demo"
    assert result_names(proc.stdout) == list(TABLE)
    # loud, before the training and again next to the numbers
    assert proc.stdout.count("DEMO WITH A RANDOM ENCODER: these numbers are NOT Dinomaly's") == 2
    assert "--encoder_weights random was given" in proc.stdout
    # heatmaps of every test image and a histogram per class
    for name in TABLE[:3]:
        tests = sorted(p for p in (data / name / "test").rglob("*.png"))
        drawn = sorted((run_dir / "maps" / name).rglob("*_score*.png"))
        assert len(drawn) == len(tests) == 10
        assert {p.parent.name for p in drawn} == {"good", *demo_data.DEFECTS}
        assert (run_dir / "maps" / name / heatmaps.HISTOGRAM_NAME).is_file()
    # results.md: our table and the paper's MVTec means, with what differs from the paper
    page = (run_dir / "results.md").read_text()
    assert "| **Mean** |" in page and "| brick |" in page
    assert "| paper (mean) | 99.6 | 99.8 | 99.0 | 98.4 | 69.3 | 69.2 | 94.8 |" in page
    assert "- encoder: 'dinov2reg_vit_small_14' (paper: 'dinov2reg_vit_base_14')" in page
    assert "- classes: 3 (paper: all 15)" in page
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["demo"], cfg["encoder_weights"], cfg["save_maps"]) == (True, "random", True)
    assert (cfg["total_iters"], cfg["image_size"], cfg["crop_size"]) == (2, 112, 98)

    # a second demo reuses the data and writes a new folder; nothing is overwritten
    stamps = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    demo(tmp_path, *SHORT, "--encoder_weights", "random")
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == stamps
    assert before == {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert (tmp_path / "saved_results" / "demo_1" / "results.md").is_file()


def official_like_weights(path: Path) -> None:
    """A file in the official ViT-S/14 reg4 format (random values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vit_encoder.build("dinov2reg_vit_small_14").state_dict(), path)


@pytest.mark.slow
def test_demo_encoder_weights(tmp_path, monkeypatch, capsys):
    """Unreachable and not cached: a random encoder, loudly; cached: the official weights."""
    monkeypatch.setenv("DINOMALY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dinov2_family, "URL_ROOT", (tmp_path / "offline").as_uri())
    args = ["--demo", *SHORT, "--data_path", str(tmp_path / "dd"),
            "--save_dir", str(tmp_path / "out")]
    main(Config(), args)
    out = capsys.readouterr().out
    cached = vit_encoder.cached_path("dinov2reg_vit_small_14")
    assert "DEMO WITH A RANDOM ENCODER" in out and "could not download" in out
    assert f"to {cached} and run the demo again" in out
    assert json.loads((tmp_path / "out" / "demo" / "config.json").read_text())[
        "encoder_weights"] == "random"

    official_like_weights(cached)
    main(Config(), args)
    out = capsys.readouterr().out
    assert "RANDOM" not in out
    assert "demo: dinov2reg_vit_small_14 with its pretrained weights, 2 iterations" in out
    assert json.loads((tmp_path / "out" / "demo_1" / "config.json").read_text())[
        "encoder_weights"] == "official"


def test_demo_only_for_the_multi_class_mvtec_layout(capsys):
    for defaults in (Config(dataset="realiad"), Config(separate=True)):
        with pytest.raises(SystemExit):
            parse_args(defaults, ["--demo"])
        assert "python dinomaly_mvtec_uni.py --demo" in capsys.readouterr().err


def test_demo_settings_and_overrides():
    cfg = parse_args(Config(), ["--demo"])
    assert (cfg.encoder, cfg.image_size, cfg.crop_size) == ("dinov2reg_vit_small_14", 192, 168)
    assert (cfg.total_iters, cfg.eval_every, cfg.warmup_iters, cfg.batch_size) == (60, 60, 10, 16)
    assert (cfg.data_path, cfg.classes, cfg.save_name) == ("demo_data", demo_data.TEXTURES, "demo")
    assert cfg.save_maps and cfg.demo and cfg.encoder_weights == "official"
    cfg = parse_args(Config(), ["--demo", "--total_iters", "5", "--data_path", "x"])
    assert (cfg.total_iters, cfg.data_path, cfg.crop_size) == (5, "x", 168)
    assert not parse_args(Config(), []).demo


@pytest.mark.slow
def test_save_maps_only_at_the_final_evaluation(tmp_path, monkeypatch):
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa", "bbb"), n_train=2)
    drawn: list[str] = []
    real = heatmaps.save_class_heatmaps

    def record(out_dir, class_name, *args, **kwargs):
        drawn.append(class_name)
        return real(out_dir, class_name, *args, **kwargs)

    monkeypatch.setattr(heatmaps, "save_class_heatmaps", record)
    cfg = Config(data_path=str(data), classes=("aaa", "bbb"), save_dir=str(tmp_path),
                         save_name="run", encoder="dinov2reg_vit_small_14",
                         encoder_weights="random", image_size=112, crop_size=98, total_iters=4,
                         batch_size=2, eval_every=2, num_workers=0, device="cpu",
                         save_maps=True)
    run(cfg)
    assert drawn == ["aaa", "bbb"]  # evaluations at 2 and 4, drawn at 4 only
    assert len(list((tmp_path / "run" / "maps" / "aaa" / "crack").glob("*.png"))) == 2
    # class-separated: each class's model draws its own class at its final evaluation
    drawn.clear()
    run(dataclasses.replace(cfg, separate=True, save_name="sep"))
    assert drawn == ["aaa", "bbb"]
    assert (tmp_path / "sep" / "maps" / "bbb" / heatmaps.HISTOGRAM_NAME).is_file()
