"""The full-spectrum scripts end to end (tiny random ViT-S, CPU, data in the real layouts
written here): what each run writes (the object or sample level in the log, results.csv,
thresholds.json, report.html, heatmaps named by defect), the dataset chosen from the path as
the preview chooses it, a stopped and resumed MANTA-Tiny run equal to the unstopped one (its
view draws continue mid-epoch), --cache_images giving the uncached run's weights, predict.py
on RGB + depth, and what export.py refuses."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dinomaly2_mulsen
import dinomaly2_multiview
import dinomaly2_mvtec3d
from conftest import TINY_V2
from engine.cli import main
from engine.eval_spec import IMAGE_AND_PIXEL_METRICS, MULTIVIEW_METRICS
from engine.export import main as export_main
from engine.predict_command import main as predict_main
from recipes import get_recipe
from test_dinomaly2_runs import Killed, kill_at_checkpoint, same_weights, state
from test_dinomaly2_speed import launch, losses, trainable
from test_fullspectrum_loops import mulsen_data, mvtec3d_data, two_view_records
from test_manta import make_manta
from test_realiad_v2 import make_multiview
from test_report_html import check_page


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def metric_lines(run_dir: Path, name: str) -> list[str]:
    return [ln for ln in (run_dir / "log.txt").read_text().splitlines() if ln.startswith(f"{name}: ")]


RUN = [*TINY_V2, "--total_iters", "4", "--eval_every", "4"]


@pytest.mark.slow
def test_mvtec3d_run_writes_rgbd_results_and_predicts(tmp_path):
    data, classes = mvtec3d_data(tmp_path / "mvtec_3d")
    main(dinomaly2_mvtec3d.config, [*RUN, "--data_path", str(data), "--classes", ",".join(classes),
                                    "--save_maps", "--save_dir", str(tmp_path), "--save_name", "run"])
    run = tmp_path / "run"
    assert list(rows(run)[0])[2:] == list(IMAGE_AND_PIXEL_METRICS)
    assert [r["class"] for r in rows(run)] == ["bagel", "peach", "Mean"]
    assert "train image number:8" in (run / "log.txt").read_text()  # 4 RGB + depth pairs a class
    config = json.loads((run / "config.json").read_text())
    assert (config["method"], config["dataset"], config["lr_groups"]) == ("dinomaly2_mvtec3d", "mvtec3d", 2)
    # heatmaps under the defect's folder (not the rgb/ folder that holds the images)
    drawn = sorted(p.relative_to(run / "maps" / "bagel").as_posix()
                   for p in (run / "maps" / "bagel").rglob("*_score*.png"))
    assert [d.split("_score")[0] for d in drawn] == ["crack/000", "crack/001", "good/000"]
    check_page(run)
    assert "97.4" in (run / "results.md").read_text()  # the paper's MVTec 3D-AD image AUROC
    # predict.py reads each RGB file's depth as the test set does: the evaluation's scores
    predict_main(["--checkpoint", str(run), "--class", "bagel", "--images",
                  str(data / "bagel" / "test" / "crack" / "rgb"), "--out", str(tmp_path / "pred"),
                  "--device", "cpu"])
    with open(tmp_path / "pred" / "predictions.csv", newline="") as f:
        predicted = [float(r["score"]) for r in csv.DictReader(f)]
    evaluated = [float(d.split("_score")[1][:-4]) for d in drawn[:2]]
    assert predicted == pytest.approx(evaluated, abs=1e-4)


def test_amp_run_and_export_refusing_a_six_channel_model(tmp_path, capsys):
    data, classes = mvtec3d_data(tmp_path / "mvtec_3d")
    main(dinomaly2_mvtec3d.config, [*TINY_V2, "--total_iters", "2", "--eval_every", "2",
                                    "--data_path", str(data), "--classes", "bagel", "--amp", "bf16",
                                    "--log_every", "1", "--save_dir", str(tmp_path), "--save_name", "run"])
    log = (tmp_path / "run" / "log.txt").read_text()
    assert ", amp bf16" in log.splitlines()[0] and "loss:nan" not in log and len(metric_lines(tmp_path / "run", "bagel")) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        export_main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")])
    assert stop.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "6 input channels" in err[0]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_mulsen_run_writes_the_sample_level_and_each_modality(tmp_path):
    data, classes = mulsen_data(tmp_path / "MulSen_AD")
    main(dinomaly2_mulsen.config, [*RUN, "--data_path", str(data), "--classes", ",".join(classes),
                                   "--save_maps", "--save_dir", str(tmp_path), "--save_name", "run"])
    run = tmp_path / "run"
    metrics = ["I-AUROC", "I-AP", "I-F1"] + [f"{m}-{k}" for m in ("RGB", "Infra")
                                             for k in ("AUROC", "AP", "F1", "AUPRO")]
    assert list(rows(run)[0])[2:] == metrics
    line = metric_lines(run, "capsule")[0]
    assert line.startswith("capsule: I-Auroc:") and ", Infra-AUPRO:" in line and "RGB-AUROC:" in line
    # 4 train pairs a class (the unnumbered file ignored), batches of 2 pairs
    assert "train image number:8" in (run / "log.txt").read_text()
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["object_score"] == {"rule": "sum", "ratio": 0.0}
    capsule = thresholds["classes"]["capsule"]
    assert (capsule["n_normal_objects"], capsule["n_anomalous_objects"]) == (2, 3)
    # one heatmap per modality image, the two modalities of a sample apart
    drawn = sorted(p.name.split("_score")[0] for p in (run / "maps" / "capsule").rglob("*_score*.png"))
    assert len(drawn) == 10 and any("_view1" in d for d in drawn)
    check_page(run)


def test_mulsen_training_batch_is_rgb_then_infrared():
    rgb, ir = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    images = get_recipe(dinomaly2_mulsen.Config.METHOD).train_images(((rgb, ir), torch.zeros(2)), torch.device("cpu"))
    assert torch.equal(images, torch.cat([rgb, ir]))


def manta_two_classes(root: Path) -> Path:
    gear = make_manta(root / "MANTA-Tiny")
    shutil.copytree(gear, gear.parent / "nut")
    return root / "MANTA-Tiny"


@pytest.mark.slow
def test_manta_run_resumed_mid_epoch_equals_unstopped(tmp_path, monkeypatch):
    """MANTA-Tiny (chosen from the path), 3 training images a class, batches of 2 (3 an
    epoch): stopped at iteration 4, resumed from 2, in the middle of the first epoch, where
    the view draws continue."""
    data = manta_two_classes(tmp_path)
    argv = [*TINY_V2, "--data_path", str(data), "--classes", "mechanics/gear,mechanics/nut",
            "--total_iters", "6", "--eval_every", "6", "--num_workers", "1", "--save_dir", str(tmp_path)]
    main(dinomaly2_multiview.config, [*argv, "--save_name", "straight", "--save_maps"])
    kill_at_checkpoint(monkeypatch, 4)
    with pytest.raises(Killed):
        main(dinomaly2_multiview.config, [*argv, "--save_name", "run", "--checkpoint_every", "2"])
    monkeypatch.undo()
    stopped = state(tmp_path / "run")
    assert (stopped["iteration"], stopped["epoch"], stopped["epoch_position"]) == (2, 0, 2)
    main(dinomaly2_multiview.config, [*argv, "--save_name", "run", "--checkpoint_every", "2",
                                      "--resume", "--num_workers", "0"])
    a, b = state(tmp_path / "run"), state(tmp_path / "straight")
    assert a["losses"].tolist() == b["losses"].tolist()
    assert same_weights(tmp_path / "run" / "model.pth", tmp_path / "straight" / "model.pth")
    straight = tmp_path / "straight"
    assert json.loads((straight / "config.json").read_text())["dataset"] == "manta"
    assert list(rows(straight)[0])[2:] == list(MULTIVIEW_METRICS)
    assert metric_lines(straight, "mechanics/gear")[0].count("O-Auroc:") == 1
    views = sorted(p.name.split("_score")[0] for p in (straight / "maps" / "mechanics" / "gear" / "crack").glob("*.png"))
    assert views == [f"{k:03d}_view{v}" for k in range(2) for v in range(5)]
    assert "ADEval" in (straight / "results.md").read_text()
    check_page(straight)


def variety_data(root: Path) -> Path:
    data = root / "Real-IAD_Variety"
    train = [(f"OK/T{k:04d}/p_C{v}.png", None, "OK") for k in range(3) for v in (1, 2)]
    for name in ("aaa", "bbb"):
        make_multiview(data, name, "realiadvariety_jsons", "realiadvariety_raw", False,
                       test=two_view_records(3), train=train)
    return data


@pytest.mark.slow
def test_variety_run_exact_pixel_metrics_and_image_cache(tmp_path):
    """Real-IAD Variety from the path, its classes from its split folder; --pixel_metrics
    exact named in the outputs; --cache_images: the same weights as reading from disk."""
    data = variety_data(tmp_path)
    argv = [*RUN, "--data_path", str(data), "--save_dir", str(tmp_path), "--pixel_metrics", "exact"]
    main(dinomaly2_multiview.config, [*argv, "--save_name", "disk"])
    main(dinomaly2_multiview.config, [*argv, "--save_name", "cached", "--cache_images"])
    disk = tmp_path / "disk"
    config = json.loads((disk / "config.json").read_text())
    assert (config["dataset"], config["classes"], config["lr_groups"]) == ("realiad_variety", ["aaa", "bbb"], 2)
    assert "train image number:12" in (disk / "log.txt").read_text()
    assert same_weights(disk / "model.pth", tmp_path / "cached" / "model.pth")
    assert [list(r.values()) for r in rows(disk)] == [list(r.values()) for r in rows(tmp_path / "cached")]
    md = (disk / "results.md").read_text()
    assert "Pixel metrics: exact" in md and "ADEval's histogram metrics (1,000" not in md
    assert "89.0" in md and "94.2" in md  # the published Real-IAD Variety row, object level too
    assert "classes:" not in md  # no fixed class list to compare a subset with


@pytest.mark.slow
def test_two_process_mulsen_equals_one(tmp_path):
    """torchrun, 2 gloo processes, global batch 4 pairs (each rank's share: 2 pairs, 4 images,
    RGB first): the per-step losses average to the one-process losses and the
    weights agree (to the rounding of DDP's average)."""
    data, classes = mulsen_data(tmp_path / "MulSen_AD")
    args = [*TINY_V2, "--data_path", str(data), "--classes", ",".join(classes), "--batch_size", "4",
            "--total_iters", "2", "--eval_every", "2", "--dropout", "0", "--ll_ramp_iters", "1",
            "--save_dir", str(tmp_path)]
    one = launch([*args, "--save_name", "one"], 1, tmp_path / "out1", script="dinomaly2_mulsen")
    assert one.returncode == 0, one.stdout + one.stderr
    two = launch([*args, "--save_name", "two"], 2, tmp_path / "out2", script="dinomaly2_mulsen")
    assert two.returncode == 0, two.stdout + two.stderr
    single, rank0, rank1 = (losses(out, r) for out, r in ((tmp_path / "out1", 0), (tmp_path / "out2", 0),
                                                           (tmp_path / "out2", 1)))
    assert len(single) == len(rank0) == 2 and not np.allclose(rank0, rank1)
    np.testing.assert_allclose((rank0 + rank1) / 2, single, rtol=0, atol=1e-6)
    a, b = trainable(tmp_path / "one"), trainable(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
    assert rows(tmp_path / "one")[-1]["class"] == rows(tmp_path / "two")[-1]["class"] == "Mean"
