"""export.py --format openvino --int8 on the tiny trained run: an int8 OpenVINO model (NNCF
post-training quantization on the run's training images) and its accuracy report, whose
numbers are those computed here from the two models' outputs; the verdict and its marker;
the calibration-only report of a bare model; every bad input as one line, nothing written."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("nncf")
ov = pytest.importorskip("openvino")

from dataset import MVTecDataset, get_data_transforms  # noqa: E402
from engine import export as export_cmd  # noqa: E402
from engine import predict_command as predict_cmd  # noqa: E402
from engine.evaluation import metrics_of  # noqa: E402
from engine.int8_report import evaluate, verdict  # noqa: E402
from engine.onnx_export import METADATA_KEY  # noqa: E402
from engine.openvino_export import OpenVinoPipeline  # noqa: E402
from engine.thresholds import read_thresholds  # noqa: E402

CLASSES = ("aaa", "bbb")


def metadata(path) -> dict:
    return json.loads(ov.Core().read_model(str(path)).get_rt_info([METADATA_KEY]).astype(str))


@pytest.fixture(scope="module")
def int8(tiny_run, tmp_path_factory):
    """fp32 and int8 exports of the tiny run; the int8 one with a limit of 0 changed decisions
    (its exit status and output kept)."""
    out = tmp_path_factory.mktemp("int8")
    run = str(tiny_run["run_dir"])
    export_cmd.main(["--checkpoint", run, "--format", "openvino", "--out", str(out / "fp32.xml")])
    status = 0
    try:
        export_cmd.main(["--checkpoint", run, "--format", "openvino", "--int8", "--out", str(out / "q.xml"),
                         "--max_decision_change", "0"])
    except SystemExit as stop:
        status = stop.code
    report = json.loads((out / "q.accuracy.json").read_text())
    return {"out": out, "status": status, "report": report}


def runtime_maps(path, data, resolution=256) -> dict:
    """Each class's test set through the OpenVINO model at `path`, kept as the evaluation keeps it."""
    runner = OpenVinoPipeline(path)
    transform, gt_transform = get_data_transforms(112, 98)
    return {c: evaluate(runner, MVTecDataset(str(data / c), transform, gt_transform, phase="test"),
                        resolution, 0.0, 8, c) for c in CLASSES}


def test_int8_model_file(int8):
    out = int8["out"]
    model = ov.Core().read_model(str(out / "q.xml"))
    types = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in types
    weights = {str(op.get_output_element_type(0)) for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert "<Type: 'int8_t'>" in weights
    assert (out / "q.bin").stat().st_size < 0.5 * (out / "fp32.bin").stat().st_size
    meta = metadata(out / "q.xml")
    assert meta["precision"] == "int8" and meta["quantization"]["report"] == "q.accuracy.json"
    assert meta["encoder"] == "dinov2reg_vit_small_14" and meta["thresholds"]["classes"].keys() == set(CLASSES)


def test_report_values_are_the_models(tiny_run, int8):
    """The report's metrics and decision changes recomputed from the two written models."""
    report, out = int8["report"], int8["out"]
    maps = {"fp32": runtime_maps(out / "fp32.xml", tiny_run["data"]), "int8": runtime_maps(out / "q.xml", tiny_run["data"])}
    for key in ("fp32", "int8"):
        for c in CLASSES:
            expected = metrics_of(maps[key][c])
            assert report[key]["classes"][c] == pytest.approx(expected, abs=1e-9, nan_ok=True), (key, c)
        means = np.nanmean([report[key]["classes"][c] for c in CLASSES], axis=0)
        assert report[key]["mean"] == pytest.approx(list(means), abs=1e-12)
    diff = [100 * (b - a) for a, b in zip(report["fp32"]["mean"], report["int8"]["mean"])]
    assert report["int8_minus_fp32_points"] == pytest.approx(diff, abs=1e-4)
    thresholds = read_thresholds(tiny_run["run_dir"] / "thresholds.json")["classes"]
    flips = []
    for c in CLASSES:
        t = thresholds[c]["image"]
        moved = (maps["fp32"][c].scores.astype(np.float64) > t) != (maps["int8"][c].scores.astype(np.float64) > t)
        flips += [p for p, m in zip(maps["fp32"][c].paths, moved) if m]
        assert report["decisions"]["classes"][c] == {"threshold": t, "from": "the run's thresholds.json",
                                                     "images": 4, "changed": int(moved.sum())}
    assert report["decisions"]["changed_images"] == flips and report["decisions"]["share"] == len(flips) / 8
    score_diff = max(np.abs(maps["int8"][c].scores - maps["fp32"][c].scores).max() for c in CLASSES)
    assert report["outputs"]["max_score_difference"] == pytest.approx(float(score_diff), abs=1e-7)
    assert report["calibration"] == {"images": 6, "from": f"the run's training images in {tiny_run['data']}"}


def test_fp32_metrics_are_the_runs(tiny_run, int8):
    """The fp32 OpenVINO model on the test set reproduces the run's evaluation (results.csv)."""
    import csv
    with open(tiny_run["run_dir"] / "results.csv", newline="") as f:
        rows = {r["class"]: r for r in csv.DictReader(f)}
    for c in CLASSES:
        got = int8["report"]["fp32"]["classes"][c]
        assert got == pytest.approx([float(rows[c][m]) for m in int8["report"]["metric_names"]], abs=1e-3)


def test_verdict_and_marker(int8, capsys, tiny_run, tmp_path):
    report, out = int8["report"], int8["out"]
    rejected = report["decisions"]["changed"] > 0  # the limit was 0
    assert int8["status"] == (3 if rejected else 0)
    assert report["accepted"] is (not rejected) and report["max_decision_change"] == 0
    marker = metadata(out / "q.xml")["quantization"]
    assert marker["accepted"] is report["accepted"] and marker["decision_change"] == report["decisions"]["share"]
    # predict runs a rejected model with a warning line
    predict_cmd.main(["--openvino", str(out / "q.xml"), "--class", "aaa", "--images",
                      str(tiny_run["data"] / "aaa" / "test"), "--out", str(tmp_path / "p")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == (1 if rejected else 0)
    decisions = {"on": "test images", "images": 200, "changed": 3}
    assert verdict({"decisions": {**decisions, "share": 0.015}}, 0.01) == (
        False, "OK/NG changed on 3 of 200 test images (1.50 %, limit 1.00 %)")
    assert verdict({"decisions": {**decisions, "share": 0.015}}, 0.02)[0] is True
    assert verdict({"decisions": None}, 0.01)[0] is None


def test_bare_model_reports_on_calibration_images(tiny_run, tmp_path, capsys):
    calibrate = tiny_run["data"] / "bbb" / "train" / "good"
    export_cmd.main(["--checkpoint", str(tiny_run["model"]), "--encoder", "dinov2reg_vit_small_14",
                     "--image_size", "112", "--crop_size", "98", "--format", "openvino", "--int8",
                     "--calibrate", str(calibrate), "--calibration_size", "2", "--out", str(tmp_path / "q.xml")])
    err = capsys.readouterr().err
    assert "warning: int8: decision changes not measured" in err
    report = json.loads((tmp_path / "q.accuracy.json").read_text())
    assert report["test_set"] is None and report["decisions"] is None and report["accepted"] is None
    assert report["calibration"] == {"images": 2, "from": f"--calibrate {calibrate}"}
    assert metadata(tmp_path / "q.xml")["quantization"]["accepted"] is None


def test_bad_int8_inputs_are_one_line_and_write_nothing(tiny_run, tmp_path, capsys):
    run = str(tiny_run["run_dir"])
    moved = tmp_path / "moved_run"  # the run folder of data that is no longer there
    moved.mkdir()
    config = json.loads((tiny_run["run_dir"] / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "data_path": str(tmp_path / "gone")}))
    for name in ("model.pth", "thresholds.json"):
        shutil.copy(tiny_run["run_dir"] / name, moved / name)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    q = ["--format", "openvino", "--int8", "--out", str(out / "q.xml")]
    cases = [  # argv, exit status, words in the line
        (["--checkpoint", str(tiny_run["model"]), "--encoder", "dinov2reg_vit_small_14", *q], 2, "--calibrate DIR"),
        (["--checkpoint", str(moved), *q], 1, "not at"),
        (["--checkpoint", run, *q, "--calibrate", str(empty)], 1, "no image files"),
        (["--checkpoint", run, *q, "--calibrate", str(tmp_path / "nowhere")], 1, "no such file"),
        (["--checkpoint", run, "--format", "onnx", "--int8", "--out", str(out / "m.onnx")], 2, "--int8"),
        (["--checkpoint", run, "--format", "openvino", "--calibrate", str(empty), "--out", str(out / "m.xml")],
         2, "--calibrate goes with --int8"),
        (["--checkpoint", run, "--format", "openvino", "--out", str(out / "m.onnx")], 2, ".xml"),
        (["--checkpoint", run, *q, "--max_decision_change", "2"], 2, "--max_decision_change"),
        (["--checkpoint", run, *q, "--calibration_size", "0"], 2, "--calibration_size"),
        (["--checkpoint", str(tmp_path / "no_run"), *q], 1, "no such file"),
    ]
    for argv, status, words in cases:
        with pytest.raises(SystemExit) as stop:
            export_cmd.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == status and len(err) == 1 and err[0].startswith("error: "), (argv, err)
        assert words in err[0], (argv, err)
        assert list(out.iterdir()) == [], argv
