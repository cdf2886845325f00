"""predict.py on the tiny trained run (conftest `tiny_run`): thresholds.json consistent with
the reported metrics, the shared inference pipeline equal to the evaluation's, predictions.csv
(rows, scores, decisions), --calibrate, images of mixed formats and sizes, heatmaps, and every
bad input as one line with nothing written."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset import MVTecDataset, get_data_transforms
from engine import predict_command as predict_cmd
from engine.maps import collect_maps
from engine.model_source import AnomalyPipeline, load_model, resolve_source
from engine.thresholds import read_thresholds
from test_thresholds import f1_at

CLASSES = ("aaa", "bbb")


def predict(*argv: str) -> None:
    predict_cmd.main([str(a) for a in argv])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    """Per class the evaluation's maps of the tiny run's model (batch 2, as the run)."""
    source = resolve_source(str(tiny_run["run_dir"]), None, None, None, None)
    model = load_model(source, "cpu")
    transform, gt_transform = get_data_transforms(112, 98)
    out = {}
    for name in CLASSES:
        test = MVTecDataset(str(tiny_run["data"] / name), transform, gt_transform, phase="test")
        out[name] = collect_maps(AnomalyPipeline(model, 256, 0.01), DataLoader(test, batch_size=2), "cpu",
                                 resize_mask=256)
    return {"model": model, "maps": out, "loader": DataLoader(test, batch_size=2)}


def test_thresholds_json_agrees_with_results_csv(tiny_run, evaluated):
    run_dir = tiny_run["run_dir"]
    data = read_thresholds(run_dir / "thresholds.json")
    with open(run_dir / "results.csv", newline="") as f:
        reported = {row["class"]: row for row in csv.DictReader(f)}
    assert set(data["classes"]) == set(CLASSES)
    for name in CLASSES:
        entry, maps = data["classes"][name], evaluated["maps"][name]
        assert entry["iteration"] == 2 and entry["checkpoint"] == "model.pth"
        assert entry["image_f1"] == float(reported[name]["I-F1"])
        assert entry["pixel_f1"] == float(reported[name]["P-F1"])
        # the partition `score > threshold` has the reported F1 (brute force, from the maps)
        assert f1_at(maps.labels, maps.scores, entry["image"]) == pytest.approx(entry["image_f1"], abs=1e-12)
        assert f1_at(maps.masks.ravel(), maps.maps.ravel(), entry["pixel"]) == pytest.approx(entry["pixel_f1"], abs=1e-12)
        assert entry["scale"] == [float(maps.maps.min()), float(maps.maps.max())]
    pooled = data["pooled"]
    labels = np.concatenate([evaluated["maps"][n].labels for n in CLASSES])
    scores = np.concatenate([evaluated["maps"][n].scores for n in CLASSES])
    assert f1_at(labels, scores, pooled["image"]) == pytest.approx(pooled["image_f1"], abs=1e-12)
    assert pooled["classes"] == list(CLASSES) and pooled["n_anomalous"] == int(labels.sum())


def test_pipeline_equals_the_evaluation(evaluated):
    """The pipeline predict and the ONNX export use computes the evaluation's maps and scores."""
    pipeline = AnomalyPipeline(evaluated["model"], 256, 0.01).eval()
    maps, scores = [], []
    with torch.no_grad():
        for img, _, _, _ in evaluated["loader"]:
            m, s = pipeline(img)
            maps.append(m[:, 0].numpy())
            scores.append(s.numpy())
    assert np.array_equal(np.concatenate(maps), evaluated["maps"]["bbb"].maps)
    assert np.array_equal(np.concatenate(scores), evaluated["maps"]["bbb"].scores)


def test_predict_a_class(tiny_run, evaluated, tmp_path):
    out = tmp_path / "out"
    predict("--checkpoint", tiny_run["run_dir"], "--class", "aaa", "--images", tiny_run["data"] / "aaa" / "test",
            "--out", out, "--save_maps", "--device", "cpu")
    rows = read_csv(out / "predictions.csv")
    maps = evaluated["maps"]["aaa"]
    assert [r["image"] for r in rows] == sorted(maps.paths)
    assert list(rows[0]) == ["image", "score", "threshold", "anomalous", "class"]
    threshold = read_thresholds(tiny_run["run_dir"] / "thresholds.json")["classes"]["aaa"]["image"]
    by_path = dict(zip(maps.paths, maps.scores))
    for row in rows:
        assert float(row["threshold"]) == threshold and row["class"] == "aaa"
        assert float(row["score"]) == pytest.approx(float(by_path[row["image"]]), abs=1e-6)
        assert row["anomalous"] == str(int(float(row["score"]) > threshold))
    # the evaluation's decisions at the F1-max threshold: predict reproduces them
    assert [r["anomalous"] == "1" for r in rows] == [bool(by_path[r["image"]] > threshold) for r in rows]
    drawn = sorted(p.relative_to(out / "maps").as_posix() for p in (out / "maps").rglob("*.png"))
    assert drawn == ["crack/000.png", "crack/001.png", "good/000.png", "good/001.png"]


def test_predict_pooled_and_value(tiny_run, tmp_path):
    predict("--checkpoint", tiny_run["run_dir"], "--images", tiny_run["data"] / "bbb" / "test" / "good",
            "--out", tmp_path / "a", "--device", "cpu")
    rows = read_csv(tmp_path / "a" / "predictions.csv")
    pooled = read_thresholds(tiny_run["run_dir"] / "thresholds.json")["pooled"]["image"]
    assert list(rows[0]) == ["image", "score", "threshold", "anomalous"]  # class not known
    assert {float(r["threshold"]) for r in rows} == {pooled}
    predict("--checkpoint", tiny_run["run_dir"], "--images", tiny_run["data"] / "bbb" / "test" / "good",
            "--out", tmp_path / "b", "--threshold", "-1")
    assert {r["anomalous"] for r in read_csv(tmp_path / "b" / "predictions.csv")} == {"1"}


def test_calibrate_quantile(tiny_run, tmp_path):
    normal = tiny_run["data"] / "aaa" / "train" / "good"
    predict("--checkpoint", tiny_run["run_dir"], "--images", normal, "--out", tmp_path / "normal",
            "--threshold", "0")
    normal_scores = [float(r["score"]) for r in read_csv(tmp_path / "normal" / "predictions.csv")]
    predict("--checkpoint", tiny_run["run_dir"], "--class", "aaa", "--images", tiny_run["data"] / "aaa" / "test",
            "--out", tmp_path / "out", "--calibrate", normal, "--quantile", "0.5")
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    expected = float(np.quantile(np.array(normal_scores, np.float32).astype(np.float64), 0.5))
    assert float(rows[0]["threshold"]) == pytest.approx(expected, abs=1e-7)
    assert all(r["anomalous"] == str(int(float(r["score"]) > float(r["threshold"]))) for r in rows)


def mixed_images(root: Path) -> list[str]:
    """Images of several formats, modes and sizes, nested, plus files that are not read."""
    rng = np.random.default_rng(0)
    rgb = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    (root / "line1" / "deep").mkdir(parents=True)
    (root / ".cache").mkdir()
    Image.fromarray(rgb(50, 70)).convert("RGBA").save(root / "a.png")
    Image.fromarray(rgb(90, 90)).convert("L").save(root / "line1" / "b.JPG")
    Image.fromarray(rgb(64, 40)).convert("P").save(root / "line1" / "c.bmp")
    Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(root / "line1" / "deep" / "d.tif")
    Image.fromarray(rgb(120, 80)).convert("CMYK").save(root / "line1" / "deep" / "e.jpeg")
    Image.fromarray(rgb(20, 20)).save(root / "a.webp")  # same stem as a.png
    Image.fromarray(rgb(20, 20)).save(root / ".hidden.png")
    Image.fromarray(rgb(20, 20)).save(root / ".cache" / "x.png")
    (root / "notes.txt").write_text("not an image")
    return ["a.png", "a.webp", "line1/b.JPG", "line1/c.bmp", "line1/deep/d.tif", "line1/deep/e.jpeg"]


def test_mixed_formats_sizes_and_specs(tiny_run, tmp_path):
    images = tmp_path / "images"
    expected = mixed_images(images)
    out = tmp_path / "out"
    # batches of 2: the glob below forms the same batches of line1/ (a model's output for an
    # image can change in the last bit with the batch it is computed in)
    predict("--checkpoint", tiny_run["run_dir"], "--images", images, "--out", out, "--save_maps",
            "--batch_size", "2", "--threshold", "0.5")
    rows = read_csv(out / "predictions.csv")
    assert [Path(r["image"]).relative_to(images).as_posix() for r in rows] == expected
    assert all(np.isfinite(float(r["score"])) for r in rows)
    drawn = sorted(p.relative_to(out / "maps").as_posix() for p in (out / "maps").rglob("*.png"))
    assert drawn == ["a_png.png", "a_webp.png", "line1/b.png", "line1/c.png", "line1/deep/d.png",
                     "line1/deep/e.png"]
    # a glob and a single file give the same scores
    predict("--checkpoint", tiny_run["run_dir"], "--images", f"{images}/line1/**/*.*", "--out",
            tmp_path / "glob", "--threshold", "0.5", "--batch_size", "2")
    globbed = read_csv(tmp_path / "glob" / "predictions.csv")
    assert [r["score"] for r in globbed] == [r["score"] for r in rows[2:]]
    predict("--checkpoint", tiny_run["run_dir"], "--images", images / "a.png", "--out", tmp_path / "one",
            "--threshold", "0.5")
    one = read_csv(tmp_path / "one" / "predictions.csv")
    assert len(one) == 1 and float(one[0]["score"]) == pytest.approx(float(rows[0]["score"]), abs=1e-6)


@pytest.fixture
def variants(tiny_run, tmp_path):
    """Run folders made from the tiny run: without thresholds.json; class-separated."""
    src = tiny_run["run_dir"]
    bare = tmp_path / "no_thresholds"
    bare.mkdir()
    shutil.copy(src / "config.json", bare / "config.json")
    os.symlink(src / "model.pth", bare / "model.pth")
    sep = tmp_path / "sep"
    (sep / "aaa").mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    (sep / "config.json").write_text(json.dumps({**config, "separate": True}))
    os.symlink(src / "model.pth", sep / "aaa" / "model.pth")
    data = read_thresholds(src / "thresholds.json")
    del data["pooled"]  # one model per class: no pooled thresholds
    data.update(separate=True, classes={"aaa": data["classes"]["aaa"]})
    (sep / "thresholds.json").write_text(json.dumps(data))
    return {"no_thresholds": bare, "sep": sep}


def test_class_separated_run(tiny_run, variants, tmp_path):
    images = tiny_run["data"] / "aaa" / "test"
    with pytest.raises(SystemExit) as stop:
        predict("--checkpoint", variants["sep"], "--images", images, "--out", tmp_path / "x")
    assert stop.value.code == 2 and "--class" in str(stop.value)
    predict("--checkpoint", variants["sep"], "--class", "aaa", "--images", images, "--out", tmp_path / "y")
    rows = read_csv(tmp_path / "y" / "predictions.csv")
    assert {r["class"] for r in rows} == {"aaa"} and len(rows) == 4


def test_bare_model_file(tiny_run, tmp_path):
    images = tiny_run["data"] / "aaa" / "test"
    predict("--checkpoint", tiny_run["model"], "--encoder", "dinov2reg_vit_small_14", "--image_size", "112",
            "--crop_size", "98", "--images", images, "--out", tmp_path / "a", "--threshold", "0.9")
    predict("--checkpoint", tiny_run["run_dir"], "--images", images, "--out", tmp_path / "b", "--threshold", "0.9")
    a, b = read_csv(tmp_path / "a" / "predictions.csv"), read_csv(tmp_path / "b" / "predictions.csv")
    assert [r["score"] for r in a] == [r["score"] for r in b]


def error_cases(tiny_run, variants, tmp_path):
    run, data = tiny_run["run_dir"], tiny_run["data"]
    images = data / "aaa" / "test"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    not_a_model = tmp_path / "model.pth"
    not_a_model.write_text("hello")
    return {  # argv -> (exit status, words in the line)
        "missing checkpoint": (["--checkpoint", tmp_path / "nope", "--images", images], 1, "no such file"),
        "not a run folder": (["--checkpoint", data, "--images", images], 1, "not a run folder"),
        "invalid model file": (["--checkpoint", not_a_model, "--encoder", "dinov2reg_vit_small_14",
                                "--images", images, "--threshold", "1"], 1, str(not_a_model)),
        "bare model, no encoder": (["--checkpoint", tiny_run["model"], "--images", images], 2, "--encoder"),
        "no thresholds.json": (["--checkpoint", variants["no_thresholds"], "--images", images], 1, "--calibrate"),
        "missing images": (["--checkpoint", run, "--images", tmp_path / "none"], 1, "no such file"),
        "empty image folder": (["--checkpoint", run, "--images", empty], 1, "no image files"),
        "unreadable image": (["--checkpoint", run, "--images", broken], 1, "x.png"),
        "unreadable normal image": (["--checkpoint", run, "--images", images, "--calibrate", broken], 1, "x.png"),
        "unknown class": (["--checkpoint", run, "--class", "zzz", "--images", images], 2, "zzz"),
        "bad quantile": (["--checkpoint", run, "--images", images, "--calibrate", images, "--quantile", "1.5"],
                         2, "--quantile"),
        "quantile alone": (["--checkpoint", run, "--images", images, "--quantile", "0.9"], 2, "--calibrate"),
        "bad threshold": (["--checkpoint", run, "--images", images, "--threshold", "high"], 2, "--threshold"),
        "bad batch size": (["--checkpoint", run, "--images", images, "--batch_size", "0"], 2, "--batch_size"),
        "bad device": (["--checkpoint", run, "--images", images, "--device", "cuda:7"], 2, "--device"),
        "no model": (["--images", images], 2, "--checkpoint"),
    }


def test_every_bad_input_is_one_line_and_writes_nothing(tiny_run, variants, tmp_path, capsys):
    for name, (argv, status, words) in error_cases(tiny_run, variants, tmp_path).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        with pytest.raises(SystemExit) as stop:
            predict(*argv, "--out", out)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == status, (name, str(stop.value))
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (name, err)
        assert not out.exists(), name


def test_eval_only_run_folder(tiny_run, tmp_path):
    """An --eval_only run writes thresholds.json (the evaluated model's absolute path, pooled
    over its classes) and report.html; predict reads the model it evaluated."""
    from conftest import TINY
    from engine.cli import main
    from recipes.dinomaly import Config
    main(Config(), [*TINY, "--data_path", str(tiny_run["data"]), "--classes", "aaa,bbb", "--eval_only",
                    "--checkpoint", str(tiny_run["model"]), "--save_dir", str(tmp_path), "--save_name", "ev"])
    run_dir = tmp_path / "ev"
    data = read_thresholds(run_dir / "thresholds.json")
    original = read_thresholds(tiny_run["run_dir"] / "thresholds.json")
    assert data["classes"]["aaa"]["checkpoint"] == str(tiny_run["model"].resolve())
    assert data["classes"]["aaa"]["iteration"] is None
    for name in CLASSES:  # the same model on the same images: the same thresholds
        assert data["classes"][name]["image"] == original["classes"][name]["image"]
    assert data["pooled"]["image"] == original["pooled"]["image"]
    assert (run_dir / "report.html").is_file()
    predict("--checkpoint", run_dir, "--class", "aaa", "--images", tiny_run["data"] / "aaa" / "test",
            "--out", tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert {float(r["threshold"]) for r in rows} == {original["classes"]["aaa"]["image"]}
