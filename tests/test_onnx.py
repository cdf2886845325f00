"""export.py and predict.py --onnx on the tiny trained run: the whole pipeline in one ONNX
model, run by ONNX Runtime on the CPU, equal to the torch pipeline within 1e-4 for any batch
size; its metadata; predict's rows equal to torch's; export errors as one line."""
from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from engine import export as export_cmd  # noqa: E402
from engine import predict_command as predict_cmd  # noqa: E402
from engine.model_source import AnomalyPipeline, load_model, resolve_source  # noqa: E402
from engine.onnx_export import METADATA_KEY, OnnxPipeline  # noqa: E402
from engine.predict import batches, list_images  # noqa: E402
from engine.thresholds import read_thresholds  # noqa: E402
from oracles import assert_runtime_equals_torch  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_cmd.main(["--checkpoint", str(tiny_run["run_dir"]), "--format", "onnx", "--out", str(out)])
    source = resolve_source(str(tiny_run["run_dir"]), None, None, None, None)
    pipeline = AnomalyPipeline(load_model(source, "cpu"), 256, 0.01).eval()
    return {"path": out, "torch": pipeline}


def test_outputs_equal_torch_for_any_batch(tiny_run, exported):
    runner = OnnxPipeline(exported["path"])
    files, _ = list_images(str(tiny_run["data"] / "aaa" / "test"), "--images")
    images = torch.cat([b for _, b in batches(files, 112, 98, 8)])
    torch.manual_seed(0)
    assert_runtime_equals_torch(runner, exported["torch"],
                                (images[:1], images, torch.randn(5, 3, 98, 98)), 256)


def test_model_file_and_metadata(tiny_run, exported):
    model = onnx.load(str(exported["path"]))
    onnx.checker.check_model(model)
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 98, 98]  # dynamic batch
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]
    assert not (exported["path"].parent / "model.onnx.data").exists()  # one self-contained file
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert (meta["encoder"], meta["image_size"], meta["crop_size"]) == ("dinov2reg_vit_small_14", 112, 98)
    assert meta["thresholds"] == read_thresholds(tiny_run["run_dir"] / "thresholds.json")


def test_predict_onnx_equals_torch(tiny_run, exported, tmp_path):
    images = tiny_run["data"] / "bbb" / "test"
    predict_cmd.main(["--onnx", str(exported["path"]), "--class", "bbb", "--images", str(images),
                      "--out", str(tmp_path / "onnx"), "--save_maps"])
    predict_cmd.main(["--checkpoint", str(tiny_run["run_dir"]), "--class", "bbb", "--images", str(images),
                      "--out", str(tmp_path / "torch")])
    rows = [list(csv.DictReader(open(tmp_path / k / "predictions.csv"))) for k in ("onnx", "torch")]
    assert [r["image"] for r in rows[0]] == [r["image"] for r in rows[1]]
    for a, b in zip(*rows):
        assert abs(float(a["score"]) - float(b["score"])) < 1e-4
        assert (a["threshold"], a["anomalous"], a["class"]) == (b["threshold"], b["anomalous"], b["class"])
    assert len(list((tmp_path / "onnx" / "maps").rglob("*.png"))) == len(rows[0])


def test_export_and_onnx_errors(tiny_run, tmp_path, capsys):
    cases = [
        (export_cmd.main, ["--checkpoint", str(tiny_run["run_dir"]), "--out", str(tmp_path)], 2, "is a folder"),
        (export_cmd.main, ["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")], 1, "no such"),
        (export_cmd.main, ["--checkpoint", str(tiny_run["run_dir"]), "--format", "tflite",
                           "--out", str(tmp_path / "m.onnx")], 2, "--format"),
    ]
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_text("not a model")
    cases.append((predict_cmd.main, ["--onnx", str(not_onnx), "--images", str(tiny_run["data"]),
                                     "--out", str(tmp_path / "out")], 1, "fake.onnx"))
    for main, argv, status, words in cases:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == status and len(err) == 1 and words in err[0], (argv, err)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "out").exists()
