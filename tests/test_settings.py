"""Every setting of every script has a flag of the same name, generated from the Config's
fields: each one parses to the value given, booleans both ways, and --help lists them."""
from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path

import pytest

from engine.cli import build_parser, parse_args

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in ROOT.glob("dinomaly*.py"))


def script_config(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts run main() only as __main__
    return module.config


def sample(name: str, hint: object, current: object, tmp_path: Path) -> tuple[list[str], object]:
    """A valid command-line value for the setting `name` (type `hint`, the script's value
    `current`) other than the script's where it can be, and the value the config must get."""
    special = {
        "dataset": (["mpdd"], "mpdd"), "classes": (["a,b"], ("a", "b")),
        "encoder": (["dinov2_vit_small_14"], "dinov2_vit_small_14"),
        "device": (["cpu"], "cpu"), "amp": (["bf16"], "bf16"),
        "crop_size": (["224"], 224), "image_size": (["448"], 448),
        "betas": (["0.8", "0.99"], (0.8, 0.99)), "seed": (["7"], 7),
        "gt_threshold": (["0.5"], 0.5), "spike_factor": (["4"], 4.0),
        # Dinomaly2's 0/1 switches and its fusion groups (the values it defines)
        "la": (["0"], 0), "cr": (["0"], 0), "ll": (["0"], 0), "lc": (["14"], 14),
        "pixel_metrics": (["exact"], "exact"),
        # a path naming its dataset (--dataset auto finds the class list there)
        "data_path": (["../my_mvtec"], "../my_mvtec"),
    }
    if name in special:
        return special[name]
    if name == "lr_groups":  # Dinomaly2's 2 or 3 parameter groups: the other one
        return [str(5 - current)], 5 - current
    if hint is int:
        return [str(current + 3)], current + 3
    if hint is float:
        value = current / 2 if current else 0.125
        return [repr(value)], value
    return ["some_value"], "some_value"


# --classes: a script whose default --data_path is not here (the multi-view one) would look
# for its classes there; a later --classes overrides it
BASE = ["--device", "cpu", "--classes", "a"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_setting_parses_under_its_own_name(script, tmp_path):
    defaults = script_config(script)
    hints = typing.get_type_hints(type(defaults))
    flags = {s for action in build_parser(defaults, "")._actions for s in action.option_strings}
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"")
    for field in dataclasses.fields(defaults):
        assert f"--{field.name}" in flags, f"{script}: no --{field.name}"
        name, hint = field.name, hints[field.name]
        if hint is bool:
            if name in ("eval_only", "demo", "resume"):
                continue  # combinations, below
            for argv, value in (([f"--{name}"], True), ([f"--no-{name}"], False)):
                assert getattr(parse_args(defaults, [*BASE, *argv]), name) == value
            continue
        if name == "checkpoint":
            cfg = parse_args(defaults, [*BASE, "--eval_only", "--checkpoint", str(checkpoint)])
            assert (cfg.checkpoint, cfg.eval_only) == (str(checkpoint), True)
            continue
        argv, value = sample(name, hint, getattr(defaults, name), tmp_path)
        cfg = parse_args(defaults, [*BASE, f"--{name}", *argv])
        assert getattr(cfg, name) == value, (script, name)
    assert parse_args(defaults, [*BASE, "--resume"]).resume


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_setting_of_the_script_is_in_its_help(script, capsys):
    defaults = script_config(script)
    with pytest.raises(SystemExit):
        parse_args(defaults, ["--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(defaults):
        assert f"--{field.name}" in text, (script, field.name)
    assert "--explicit_attn" in text  # the old name of --no-fused_attn still works
    assert not parse_args(defaults, [*BASE, "--explicit_attn"]).fused_attn
