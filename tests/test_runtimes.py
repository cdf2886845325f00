"""Exported models in every runtime on the tiny trained run: the OpenVINO model file and its
metadata, predict.py giving the same rows through torch, ONNX Runtime and OpenVINO (bf16
close), and the runtime flags' errors as one line."""
from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

import onnx  # noqa: E402

from engine import export as export_cmd  # noqa: E402
from engine import predict_command as predict_cmd  # noqa: E402
from engine.onnx_export import METADATA_KEY  # noqa: E402
from engine.thresholds import read_thresholds  # noqa: E402


# ----------------------------------------------------------------------------- the tiny run

@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtimes")
    run = str(tiny_run["run_dir"])
    export_cmd.main(["--checkpoint", run, "--format", "onnx", "--out", str(out / "model.onnx")])
    export_cmd.main(["--checkpoint", run, "--format", "openvino", "--out", str(out / "model.xml")])
    return out


def test_openvino_model_file_and_metadata(tiny_run, exported):
    assert (exported / "model.bin").is_file()
    model = ov.Core().read_model(str(exported / "model.xml"))
    meta = json.loads(model.get_rt_info([METADATA_KEY]).astype(str))
    assert (meta["encoder"], meta["image_size"], meta["crop_size"], meta["precision"]) == (
        "dinov2reg_vit_small_14", 112, 98, "fp32")
    assert meta["thresholds"] == read_thresholds(tiny_run["run_dir"] / "thresholds.json")
    weights = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_output_size()
               and len(op.get_output_partial_shape(0)) == 2]
    assert weights and {str(op.get_output_element_type(0)) for op in weights} == {"<Type: 'float32'>"}
    onnx_meta = json.loads({p.key: p.value for p in onnx.load(str(exported / "model.onnx")).metadata_props}[METADATA_KEY])
    assert {k: v for k, v in meta.items() if k != "precision"} == onnx_meta


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_same_rows_in_every_runtime(tiny_run, exported, tmp_path):
    images = str(tiny_run["data"] / "aaa" / "test")
    models_ = {"torch": ["--checkpoint", str(tiny_run["run_dir"])],
               "onnxruntime": ["--onnx", str(exported / "model.onnx")],
               "openvino-onnx": ["--onnx", str(exported / "model.onnx"), "--runtime", "openvino"],
               "openvino": ["--openvino", str(exported / "model.xml")]}
    rows = {}
    for name, argv in models_.items():
        predict_cmd.main([*argv, "--class", "aaa", "--images", images, "--out", str(tmp_path / name)])
        rows[name] = read_rows(tmp_path / name / "predictions.csv")
    for name, got in rows.items():
        assert [r["image"] for r in got] == [r["image"] for r in rows["torch"]], name
        for a, b in zip(got, rows["torch"]):
            assert abs(float(a["score"]) - float(b["score"])) < 1e-4, name
            assert (a["threshold"], a["anomalous"], a["class"]) == (b["threshold"], b["anomalous"], b["class"]), name


def test_predict_bf16_where_the_cpu_has_it(tiny_run, exported, tmp_path):
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no native bf16")
    images = str(tiny_run["data"] / "aaa" / "test")
    for name, extra in (("f32", []), ("bf16", ["--precision", "bf16"])):
        predict_cmd.main(["--openvino", str(exported / "model.xml"), "--class", "aaa", "--images", images,
                          "--out", str(tmp_path / name), *extra])
    f32, bf16 = (read_rows(tmp_path / k / "predictions.csv") for k in ("f32", "bf16"))
    diffs = [abs(float(a["score"]) - float(b["score"])) for a, b in zip(f32, bf16)]
    assert 0 < max(diffs) < 0.05  # bf16 rounds (8-bit mantissa): close, not equal


def test_runtime_errors_are_one_line(tiny_run, exported, tmp_path, capsys):
    images = str(tiny_run["data"] / "aaa" / "test")
    cases = [  # argv, exit status, words in the line
        (["--onnx", str(exported / "model.onnx"), "--runtime", "tensorrt"], 2, "--runtime"),
        (["--openvino", str(exported / "model.onnx")], 2, "--openvino"),
        (["--openvino", str(exported / "model.xml"), "--runtime", "onnxruntime"], 2, "OpenVINO model"),
        (["--onnx", str(exported / "model.onnx"), "--precision", "bf16"], 2, "--precision"),
        (["--checkpoint", str(tiny_run["run_dir"]), "--runtime", "openvino"], 2, "--runtime"),
        (["--openvino", str(tmp_path / "none.xml")], 1, "no such file"),
    ]
    for argv, status, words in cases:
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as stop:
            predict_cmd.main([*argv, "--images", images, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == status and len(err) == 1 and err[0].startswith("error: ") and words in err[0], (argv, err)
        assert not out.exists()
