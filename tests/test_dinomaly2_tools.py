"""A Dinomaly2 run's model in the tools: `--eval_only --checkpoint` with our model.pth or a
preview checkpoint (its keys, its model's state_dict), predict.py and export.py on the run
folder and on a bare model.pth (the method told by the file's keys), the ONNX model equal
to torch within 1e-4; and the other method's checkpoint given to a script or to predict.py
as one line, nothing written."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import dinomaly2_2d
import dinomaly_mvtec_uni
import models
from conftest import TINY_V2
from engine import predict_command as predict_cmd
from engine.cli import main
from engine.model_source import inference_pipeline, resolve_source
from engine.predict import batches, list_images
from test_dinomaly2_build import preview_dinomaly2
from oracles import assert_runtime_equals_torch

ENCODER = "dinov2reg_vit_small_14"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def final_rows(run_dir: Path) -> list[dict[str, str]]:
    """The last evaluation's rows of results.csv, without the iteration."""
    table = read_csv(run_dir / "results.csv")
    last = table[-1]["iteration"]
    return [{k: v for k, v in r.items() if k != "iteration"} for r in table if r["iteration"] == last]


def eval_only(v2_run, checkpoint: Path, save_dir: Path, config=dinomaly2_2d.config) -> None:
    main(config, [*TINY_V2, "--dataset", "mvtec", "--data_path", str(v2_run["data"]),
                  "--classes", "aaa,bbb", "--eval_only", "--checkpoint", str(checkpoint),
                  "--save_dir", str(save_dir), "--save_name", "ev"])


@pytest.fixture(scope="module")
def preview_file(v2_run, tmp_path_factory) -> Path:
    """The run's trained weights in the preview's own model (the 2D script's construction,
    written out with torch.nn layers), saved as the preview saves them: its state_dict."""
    preview = preview_dinomaly2(ENCODER)
    preview.load_state_dict(torch.load(v2_run["model"], weights_only=True), strict=True)
    path = tmp_path_factory.mktemp("preview") / "dinomaly2_preview.pth"
    torch.save(preview.state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ours", "preview"])
def test_eval_only_equals_the_run_s_last_evaluation(v2_run, preview_file, tmp_path, which):
    checkpoint = v2_run["model"] if which == "ours" else preview_file
    eval_only(v2_run, checkpoint, tmp_path)
    assert final_rows(tmp_path / "ev") == final_rows(v2_run["run_dir"])
    assert (tmp_path / "ev" / "report.html").is_file()


@pytest.mark.slow
def test_predict_run_folder_and_bare_model_file(v2_run, preview_file, tmp_path):
    """The run folder (settings from config.json) and the bare model.pth and preview file
    (`--encoder` and sizes given; the method from the keys): the same scores, the
    evaluation's thresholds from the folder."""
    images = v2_run["data"] / "aaa" / "test"
    predict_cmd.main(["--checkpoint", str(v2_run["run_dir"]), "--class", "aaa", "--images",
                      str(images), "--out", str(tmp_path / "run"), "--device", "cpu"])
    sizes = ["--encoder", ENCODER, "--image_size", "64", "--crop_size", "56", "--threshold", "0.5",
             "--device", "cpu"]
    for name, path in (("bare", v2_run["model"]), ("preview", preview_file)):
        predict_cmd.main(["--checkpoint", str(path), *sizes, "--images", str(images),
                          "--out", str(tmp_path / name)])
    source = resolve_source(str(preview_file), None, ENCODER, 64, 56)
    assert type(source.config).METHOD == "dinomaly2"
    run, bare, prev = (read_csv(tmp_path / n / "predictions.csv") for n in ("run", "bare", "preview"))
    assert len(run) == 4 and [r["image"] for r in run] == [r["image"] for r in bare]
    # the run evaluates its maps at 64 px, a bare file at the default 256: other scores; the
    # bare model file and the preview's file agree to the bit
    assert [r["score"] for r in bare] == [r["score"] for r in prev]
    threshold = {r["threshold"] for r in run}
    assert len(threshold) == 1 and threshold != {"0.5"}


@pytest.mark.slow
def test_onnx_export_equals_torch(v2_run, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from engine import export as export_cmd
    from engine.onnx_export import OnnxPipeline
    out = tmp_path / "model.onnx"
    export_cmd.main(["--checkpoint", str(v2_run["run_dir"]), "--out", str(out)])
    assert ort is not None and out.is_file()
    runner = OnnxPipeline(out)
    assert (runner.metadata["encoder"], runner.metadata["crop_size"]) == (ENCODER, 56)
    torch_pipeline = inference_pipeline(resolve_source(str(v2_run["run_dir"]), None, None, None,
                                                       None), "cpu")
    files, _ = list_images(str(v2_run["data"] / "bbb" / "test"), "--images")
    images = torch.cat([b for _, b in batches(files, 64, 56, 8)])
    torch.manual_seed(0)
    assert_runtime_equals_torch(runner, torch_pipeline,
                                (images[:1], images, torch.randn(3, 3, 56, 56)), 64)
    # the bare model file exports too (its method from its keys)
    export_cmd.main(["--checkpoint", str(v2_run["model"]), "--encoder", ENCODER, "--image_size",
                     "64", "--crop_size", "56", "--out", str(tmp_path / "bare.onnx")])
    assert OnnxPipeline(tmp_path / "bare.onnx").metadata["eval_resolution"] == 256


def test_the_other_method_s_checkpoint_is_one_line(v2_run, tmp_path, capsys):
    """A Dinomaly2 model.pth to a Dinomaly script (--eval_only) and a Dinomaly one to a
    Dinomaly2 script; a run folder holding the other method's model.pth to predict.py:
    one line naming the file and the model and scripts it is for; nothing written."""
    torch.manual_seed(0)
    v1_file = tmp_path / "v1.pth"
    torch.save(models.build_dinomaly(ENCODER, "random").state_dict(), v1_file)
    cases = [(dinomaly_mvtec_uni.config, v2_run["model"],
              "is a Dinomaly2 model, this model is Dinomaly: load it into a Dinomaly2 model "
              "(models.build_dinomaly2, the dinomaly2_* scripts)"),
             (dinomaly2_2d.config, v1_file,
              "is a Dinomaly model, this model is Dinomaly2: load it into a Dinomaly model "
              "(models.build_dinomaly, the dinomaly_* scripts)")]
    for config, checkpoint, words in cases:
        with pytest.raises(SystemExit) as stop:
            eval_only(v2_run, checkpoint, tmp_path / "out", config)
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 1 and len(err) == 1, err
        assert err[0].startswith(f"error: checkpoint {checkpoint} ") and words in err[0], err
        assert "--encoder" not in err[0] and not (tmp_path / "out").exists()
    # a copy of the run folder whose model.pth is Dinomaly's
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for name in ("config.json", "thresholds.json"):
        (swapped / name).write_bytes((v2_run["run_dir"] / name).read_bytes())
    (swapped / "model.pth").write_bytes(v1_file.read_bytes())
    with pytest.raises(SystemExit) as stop:
        predict_cmd.main(["--checkpoint", str(swapped), "--images", str(v2_run["data"]),
                          "--out", str(tmp_path / "pred"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and str(swapped / "model.pth") in err[0], err
    assert "is a Dinomaly model, this model is Dinomaly2" in err[0]
    assert not (tmp_path / "pred").exists()
