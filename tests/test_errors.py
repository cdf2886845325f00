"""Every bad input stops the run before training, with one message that names the path or
flag and says what to do, and leaves nothing behind (no results folder, no download)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import models
import synth
from engine.cli import main
from recipes.dinomaly import Config
from models import vit_encoder
from models.dinov2 import family as dinov2_family

ENCODER = "dinov2reg_vit_small_14"
KNOBS = ["--encoder", ENCODER, "--encoder_weights", "random", "--image_size", "112",
         "--crop_size", "98", "--total_iters", "2", "--batch_size", "2", "--eval_every", "2",
         "--num_workers", "0", "--device", "cpu"]


@pytest.fixture
def data(tmp_path) -> Path:
    return synth.make_mvtec(tmp_path / "data", classes=("aaa", "bbb"), n_train=3)


@pytest.fixture
def no_download(monkeypatch) -> list[str]:
    """Records every attempt to fetch the official weights (and makes it fail)."""
    calls: list[str] = []

    def fetch(name: str, progress: bool = True) -> Path:
        calls.append(name)
        raise models.EncoderError("offline")

    monkeypatch.setattr(vit_encoder, "official_weights", fetch)
    return calls


def stop(tmp_path: Path, *argv: str, defaults: Config | None = None,
         knobs: list[str] = KNOBS) -> str:
    """Run a script's main with `argv`; it must stop with SystemExit before writing results.
    Returns the message."""
    save_dir = tmp_path / "results"
    with pytest.raises(SystemExit) as err:
        main(defaults or Config(), [*knobs, "--save_dir", str(save_dir), *argv])
    assert not save_dir.exists() or not any(save_dir.iterdir())  # nothing written
    message = str(err.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_missing_data_path(tmp_path, no_download):
    message = stop(tmp_path, "--data_path", str(tmp_path / "nowhere"), "--encoder_weights",
                   "official")
    assert f"data root not found: {tmp_path / 'nowhere'}" in message
    assert "pass --data_path" in message
    assert no_download == []  # the weights are not fetched before the data is found


def test_missing_class_folder(tmp_path, data):
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,zzz")
    assert f"class folder not found: {data / 'zzz'}" in message and "--classes" in message


def test_class_folder_without_train_good(tmp_path, data):
    shutil.rmtree(data / "bbb" / "train" / "good")
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb")
    assert f"no train/good folder in {data / 'bbb'}" in message


def test_image_mask_count_mismatch(tmp_path, data):
    (data / "aaa" / "ground_truth" / "crack" / "001_mask.png").unlink()
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb")
    assert f"image/mask count mismatch for defect folder {data / 'aaa' / 'test' / 'crack'}" \
           in message
    assert "2 images but 1 masks" in message


@pytest.mark.parametrize("where", ["aaa/train/good/001.png", "bbb/test/crack/000.png",
                                   "bbb/ground_truth/crack/001_mask.png"])
def test_corrupt_image_is_named_before_training(tmp_path, data, no_download, where):
    path = data / where
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])  # truncated
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb",
                   "--encoder_weights", "official")
    assert f"cannot read image {path}" in message and "replace or remove the file" in message
    assert no_download == []


def test_skip_image_check_defers_the_error_to_loading(tmp_path, data):
    # a test image: read at the evaluation, after the training steps, whatever the data
    # order (a training image may come in the first batch, before anything is kept)
    path = sorted((data / "aaa" / "test" / "good").iterdir())[0]
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(SystemExit, match=f"cannot read image {path}"):
        main(Config(), [*KNOBS, "--save_dir", str(tmp_path / "results"),
                                        "--data_path", str(data), "--classes", "aaa,bbb",
                                        "--skip_image_check"])
    assert (tmp_path / "results" / "dinomaly_mvtec_uni" / "log.txt").is_file()  # it had started


def test_unknown_encoder_name(tmp_path, data, capsys):
    with pytest.raises(SystemExit):  # on the command line: argparse lists the choices
        main(Config(), ["--data_path", str(data), "--encoder", "vit_huge"])
    err = capsys.readouterr().err
    assert "--encoder: invalid choice: 'vit_huge'" in err and ENCODER in err
    # set in a script's configuration block: stops before anything else
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb",
                   defaults=Config(encoder="dinov3_vit_small_14"), knobs=KNOBS[2:])
    assert "unknown encoder 'dinov3_vit_small_14'" in message and ENCODER in message


def test_encoder_weights_unreachable_offline(tmp_path, data, monkeypatch):
    """No network: the message says which file to download and exactly where to put it."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("DINOMALY_CACHE", str(cache))
    monkeypatch.setattr(dinov2_family, "URL_ROOT", (tmp_path / "unreachable").as_uri())
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb",
                   "--encoder_weights", "official")
    target = cache / "dinov2_vits14_reg4_pretrain.pth"
    assert f"could not download the {ENCODER} weights" in message
    assert f"put it at {target}" in message and "--encoder_weights" in message
    assert list(cache.iterdir()) == []  # no partial download left
    # a weights file that does not exist is named too
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb",
                   "--encoder_weights", str(tmp_path / "mine.pth"))
    assert f"--encoder_weights {tmp_path / 'mine.pth'}: no such file" in message


def test_checkpoint_of_another_encoder_size(tmp_path, data, no_download):
    small = models.build_dinomaly(ENCODER, "random")
    torch.save(small.state_dict(), tmp_path / "small.pth")
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb", "--eval_only",
                   "--checkpoint", str(tmp_path / "small.pth"),
                   "--encoder", "dinov2reg_vit_base_14")
    assert f"checkpoint {tmp_path / 'small.pth'} does not fit this model" in message
    assert "shape mismatch: encoder.cls_token (1, 1, 384) (expected (1, 1, 768))" in message
    assert "This run builds --encoder dinov2reg_vit_base_14" in message
    assert no_download == []


def test_batch_size_larger_than_the_training_set(tmp_path, data):
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb",
                   "--batch_size", "7")
    assert message == ("error: --batch_size 7 is larger than the training set (6 images): no "
                       "full batch to train on; use a smaller --batch_size.")
    # class-separated: each class's own training set counts
    message = stop(tmp_path, "--data_path", str(data), "--classes", "aaa,bbb",
                   "--batch_size", "4", defaults=Config(separate=True))
    assert "--batch_size 4 is larger than the training set of class aaa (3 images)" in message


def test_existing_results_folder_is_refused_and_kept(tmp_path, data):
    run_dir = tmp_path / "results" / "dinomaly_mvtec_uni"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as err:
        main(Config(), [*KNOBS, "--save_dir", str(tmp_path / "results"),
                                        "--data_path", str(data), "--classes", "aaa,bbb"])
    assert f"results folder {run_dir} already exists" in str(err.value)
    assert "--resume" in str(err.value) and "--save_name" in str(err.value)
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]
    assert (run_dir / "notes.txt").read_text() == "mine"
