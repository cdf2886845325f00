"""A DINOv3 encoder in any script (the run's side): the fork's settings over the
script's unless given on the command line, recorded in config.json and the log; the crop
against the encoder's patch; StableAdamW without AMSGrad; the fork's means in results.md;
a tiny DINOv3 run end to end."""
import json

import pytest
import torch

import synth
from conftest import TINY
from engine.cli import main, parse_args, parse_command_line
from engine.report import Report
from engine.run import report_settings
from engine.step import setup_training
from models import encoder_settings
from models.dinov3.family import DINOV3
from recipes import recipe_of
from recipes.dinomaly import Config

DINOV3_SETTINGS = DINOV3.settings


def results_page(cfg: Config):
    """results.md's page for `cfg`: (results, iteration) -> text."""
    return Report(None, print, report_settings(cfg, recipe_of(cfg))).markdown

SCRIPT = Config()  # the MVTec multi-class script's settings: 448 -> 392, batch 16, AMSGrad


def parse(*argv: str) -> Config:
    return parse_args(SCRIPT, ["--device", "cpu", *argv])


def changed(*argv: str) -> tuple[str, ...]:
    """What the encoder changed of the script's settings, parsing `argv`."""
    return parse_command_line(SCRIPT, ["--device", "cpu", *argv])[1]


def test_dinov2_keeps_the_script_settings():
    cfg = parse("--encoder", "dinov2reg_vit_small_14")
    assert (cfg.image_size, cfg.crop_size, cfg.batch_size, cfg.amsgrad) == (448, 392, 16, True)
    assert changed("--encoder", "dinov2reg_vit_small_14") == ()
    assert encoder_settings("dinov2reg_vit_large_14") == {}


@pytest.mark.parametrize("encoder,batch", [("dinov3_vits16", 16), ("dinov3_vitb16", 16),
                                           ("dinov3_vitl16", 12), ("dinov3_vith16plus", 16)])
def test_dinov3_brings_the_fork_settings(encoder, batch):
    cfg = parse("--encoder", encoder)
    assert (cfg.image_size, cfg.crop_size, cfg.batch_size, cfg.amsgrad) == (512, 448, batch, False)
    expected = ["image_size 448 -> 512", "crop_size 392 -> 448", "amsgrad True -> False"]
    if batch != 16:
        expected.append("batch_size 16 -> 12")
    assert list(changed("--encoder", encoder)) == expected


def test_a_flag_on_the_command_line_keeps_its_value():
    argv = ("--encoder", "dinov3_vitl16", "--crop_size", "224", "--batch_size", "8")
    cfg = parse(*argv)
    assert (cfg.image_size, cfg.crop_size, cfg.batch_size, cfg.amsgrad) == (512, 224, 8, False)
    assert changed(*argv) == ("image_size 448 -> 512", "amsgrad True -> False")
    # given with the script's own value: kept too, and not reported as changed
    argv = ("--encoder", "dinov3_vitb16", "--image_size", "448", "--crop_size=448")
    cfg = parse(*argv)
    assert (cfg.image_size, cfg.crop_size) == (448, 448)
    assert changed(*argv) == ("amsgrad True -> False",)


@pytest.mark.parametrize("encoder,crop,patch,example", [
    ("dinov3_vitb16", "392", 16, "448 = 28 x 16"),   # DINOv2's crop with a DINOv3 encoder
    ("dinov2reg_vit_base_14", "400", 14, "392 = 28 x 14"),
])
def test_crop_not_a_multiple_of_the_patch_is_one_line(encoder, crop, patch, example, capsys):
    with pytest.raises(SystemExit) as err:
        parse("--encoder", encoder, "--crop_size", crop)
    line = (f"error: --crop_size {crop}: must be a positive multiple of the {patch}-pixel patch "
            f"of {encoder} (e.g. {example})")
    assert str(err.value) == line
    assert capsys.readouterr().err == line + "\n"


def test_optimizer_follows_amsgrad():
    for encoder, amsgrad in (("dinov2reg_vit_small_14", True), ("dinov3_vits16", False)):
        cfg = parse("--encoder", encoder, "--encoder_weights", "random", "--image_size", "64",
                    "--crop_size", "56" if amsgrad else "48")
        t = setup_training(cfg, torch.device("cpu"))
        assert t.optimizer.param_groups[0]["amsgrad"] is amsgrad


@pytest.mark.slow
def test_dinov3_run_records_what_the_encoder_changed(tmp_path):
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa",), n_train=2)
    argv = [*TINY, "--encoder", "dinov3_vits16", "--image_size", "64", "--crop_size", "48",
            "--data_path", str(data), "--classes", "aaa", "--total_iters", "1",
            "--eval_every", "1", "--save_dir", str(tmp_path / "results"), "--save_name", "v3"]
    main(SCRIPT, argv)
    run_dir = tmp_path / "results" / "v3"
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["encoder"], saved["image_size"], saved["crop_size"]) == ("dinov3_vits16", 64, 48)
    assert (saved["amsgrad"], saved["encoder_changed"]) == (False, ["amsgrad True -> False"])
    log = (run_dir / "log.txt").read_text()
    assert ("note: dinov3_vits16 brings the DINOv3 fork's settings: amsgrad True -> False "
            "(a flag given on the command line keeps its value)") in log
    assert "aaa: I-Auroc:" in log
    assert set(DINOV3_SETTINGS) == {"image_size", "crop_size", "amsgrad"}


def test_results_page_shows_the_dinov3_fork_means():
    cfg = parse("--encoder", "dinov3_vitl16")
    page = results_page(cfg)({"Mean": [0.99] * 7}, 10_000)
    fork = "| DINOv3 fork (mean) | 99.62 | 99.85 | 99.18 | 98.74 | 73.7 | 71.52 | 95.55 |"
    assert fork in page.splitlines()
    assert "paper (mean)" not in page  # the DINOv2 paper's numbers are another setting
    assert "not comparable" not in page  # the fork's setting: 512 -> 448, batch 12, 10k
    # another setting: the differences are listed against the fork's
    short = results_page(parse("--encoder", "dinov3_vitb16", "--total_iters", "100"))(
        {"Mean": [0.99] * 7}, 100)
    assert "| DINOv3 fork (mean) | 99.51 |" in short
    assert "- total_iters: 100 (fork: 10000)" in short.splitlines()
    # no published DINOv3 numbers for VisA: the paper's row, with the encoder as a difference
    visa = results_page(parse_args(Config(dataset="visa", classes=("candle",)),
                                   ["--device", "cpu", "--encoder", "dinov3_vitb16"]))(
        {"Mean": [0.99] * 7}, 1)
    assert "| paper (mean) | 98.7 |" in visa
    assert "- encoder: 'dinov3_vitb16' (paper: 'dinov2reg_vit_base_14')" in visa.splitlines()
