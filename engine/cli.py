"""The command line of every training script: `main(config)` gives each setting of the
script's `Config` a flag of the same name (generated from the fields: type, help text and
choices from the field's `setting(...)`), parses the flags over the script's values in one
place, joins a torchrun process group if there is one, and runs.

Every flag is checked here (ranges, `--device`, `--classes`, the crop against the encoder's
patch); a bad one ends in one `error: …` line with exit status 2 and nothing written.
An encoder brings its family's settings (DINOv3: the fork's) over the script's, except
those given on the command line.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Sequence

import dataset
import models
from engine import checks, distributed
from engine.config import DEMO, RunConfig, default_device
from engine.errors import ArgumentParser, CheckError, exit_line, stop
from engine.run import run
from recipes import recipe_of


def _flag_options(name: str, hint: object, default: object) -> dict[str, object]:
    """argparse options for a field of type `hint` whose script value is `default`."""
    text = str(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if text.startswith("tuple[float"):
        return {"type": float, "nargs": 2}
    if text.startswith("tuple[str"):
        return {"type": str}  # comma-separated (--classes)
    if name == "encoder":
        return {"type": str, "choices": models.encoder_names()}
    if name == "dataset":  # auto: the dataset named in --data_path (dataset.dataset_for_path)
        return {"type": str, "choices": (*dataset.DATASETS, "auto")}
    for simple in (int, float):
        if hint is simple:
            return {"type": simple}
    return {"type": str}


def _shown(value: object) -> str:
    if value is None or value == "" or value == () or isinstance(value, bool):
        return ""
    return f" (default: {','.join(map(str, value)) if isinstance(value, tuple) else value})"


def build_parser(defaults: RunConfig, description: str) -> ArgumentParser:
    """A parser with one flag per field of `defaults` (plus the fields' aliases), each
    defaulting to the script's value."""
    p = ArgumentParser(description=description)
    hints = typing.get_type_hints(type(defaults))
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        options = _flag_options(f.name, hints[f.name], value)
        for key in ("choices", "metavar"):
            if key in f.metadata:
                options[key] = f.metadata[key]
        if "choices" in options and "metavar" not in options and len(options["choices"]) > 6:
            options["metavar"] = "NAME"
        help_text = f.metadata.get("help", "") + _shown(value)
        p.add_argument(f"--{f.name}", dest=f.name, default=value, help=help_text, **options)
        for alias, const in f.metadata.get("aliases", {}).items():
            p.add_argument(alias, dest=f.name, action="store_const", const=const,
                           help=f"the same as --{'' if const else 'no-'}{f.name}")
    return p


def flags_given(p: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The settings given on the command line (parsed again with every value pre-set to a
    marker: those no longer the marker were given)."""
    unset = object()
    dests = {a.dest for a in p._actions if a.dest != "help"}
    marked = p.parse_args(argv, namespace=argparse.Namespace(**{d: unset for d in dests}))
    return {name for name, value in vars(marked).items() if value is not unset}


def parse_command_line(defaults: RunConfig, argv: Sequence[str] | None = None
                       ) -> tuple[RunConfig, tuple[str, ...]]:
    """`defaults` overridden by the command line, checked, `--device` and `--classes`
    resolved; and the settings the encoder changed (`['crop_size 392 -> 448', …]`). With
    `--demo`, the demo's settings replace the script's before the flags apply."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fields = {f.name for f in dataclasses.fields(defaults)}
    if "--demo" in argv:
        defaults = dataclasses.replace(defaults, demo=True,
                                       **{k: v for k, v in DEMO.items() if k in fields})
    layout = "class-separated" if defaults.separate else "multi-class"
    p = build_parser(defaults, f"{type(defaults).__module__.split('.')[-1]}: "
                               f"{defaults.dataset}, {layout}. Defaults are this script's constants.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(p.parse_args(argv)).items()}
    given = flags_given(p, argv)
    changed = take_encoder_settings(values, given)
    try:
        cfg = dataclasses.replace(defaults, **_resolved(values, defaults, given))
    except (CheckError, dataset.DatasetError, models.EncoderError) as err:
        p.error(str(err))
    return cfg, changed


def parse_args(defaults: RunConfig, argv: Sequence[str] | None = None) -> RunConfig:
    """`parse_command_line`'s config."""
    return parse_command_line(defaults, argv)[0]


def take_encoder_settings(values: dict[str, object], given: set[str]) -> tuple[str, ...]:
    """The settings of `--encoder`'s family (DINOv3: the fork's) over the script's in
    `values`, except those given on the command line; returns what changed."""
    try:
        brought = models.encoder_settings(str(values["encoder"]))
    except models.EncoderError:
        return ()  # named in the checks that follow
    changed = []
    for name, value in brought.items():
        if name in values and name not in given and values[name] != value:
            changed.append(f"{name} {values[name]} -> {value}")
            values[name] = value
    return tuple(changed)


def _resolved(values: dict[str, object], defaults: RunConfig, given: set[str]) -> dict[str, object]:
    """The parsed values, checked; classes, device and the eval-only save name resolved."""
    if values["eval_only"] and not values["checkpoint"]:
        raise CheckError("--eval_only needs --checkpoint")
    if values["checkpoint"] and not values["eval_only"]:
        raise CheckError("--checkpoint is only used with --eval_only")
    if values["checkpoint"] and not os.path.exists(values["checkpoint"]):
        raise CheckError(f"--checkpoint {values['checkpoint']} does not exist")
    if values["resume"] and values["eval_only"]:
        raise CheckError("--resume continues a training run; --eval_only trains nothing")
    if values["dataset"] == "auto":  # the method's rule (by default dataset.dataset_for_path)
        values["dataset"] = recipe_of(defaults).dataset_for_path(str(values["data_path"]))
    spec = dataset.dataset_spec(str(values["dataset"]))
    if values["demo"] and (spec.layout is not dataset.MVTEC_LAYOUT or values["separate"]):
        raise CheckError("--demo is the multi-class MVTec-layout demo: python dinomaly_mvtec_uni.py --demo")
    rules = {**checks.NUMBER_RULES, **{f.name: f.metadata["check"] for f in
                                        dataclasses.fields(defaults) if "check" in f.metadata}}
    checks.check_numbers(values, rules)
    if values["spike_restart"]:  # restarts reseed with seed + restart count
        checks.check_numbers({"seed": values["seed"] + values["max_restarts"]})
    values["device"] = (checks.check_device(values["device"]) if values["device"]
                        else default_device())
    patch = models.vit_encoder.patch_size(str(values["encoder"]))
    if values["crop_size"] % patch:
        raise CheckError(f"--crop_size {values['crop_size']}: must be a positive multiple of the "
                         f"{patch}-pixel patch of {values['encoder']} (e.g. {28 * patch} = 28 x {patch})")
    if values["crop_size"] > values["image_size"]:
        raise CheckError("--crop_size cannot exceed --image_size")
    values["classes"] = resolve_classes(values["classes"], spec, str(values["data_path"]))
    if values["eval_only"] and "save_name" not in given:
        values["save_name"] = defaults.save_name + "_eval"
    return values


def resolve_classes(classes: object, spec: dataset.DatasetSpec, data_path: str) -> tuple[str, ...]:
    """`--classes` as a tuple: the script's (or, if empty, the dataset's whole list; a
    dataset without a list: the classes found), a comma-separated list (spaces trimmed), or
    `auto` (the layout's discovery)."""
    if isinstance(classes, tuple) and (classes or spec.classes):
        return classes or spec.classes
    if isinstance(classes, tuple) or classes.strip() == "auto":
        found = tuple(spec.layout.discover(data_path))
        if not found:
            raise CheckError(f"--classes auto found no class under {data_path}")
        return found
    names = tuple(c.strip() for c in classes.split(",") if c.strip())
    if not names:
        raise CheckError(f"--classes {classes!r} names no class; give comma-separated class "
                         "names, or auto")
    if len(set(names)) != len(names):
        raise CheckError("--classes lists a class twice")
    return names


def main(defaults: RunConfig, argv: Sequence[str] | None = None) -> None:
    """Entry point of the scripts: command line over `defaults`, then `run`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, encoder_changed = parse_command_line(defaults, argv)
    try:
        with distributed.launched(cfg.device) as device:  # torchrun: join the process group
            run(dataclasses.replace(cfg, device=device), argv, encoder_changed)
    except (Exception, KeyboardInterrupt) as err:
        # what the run did not already turn into its line: nothing was written yet
        found = exit_line(err, "interrupted before the run started: nothing was written")
        if found is None:
            raise
        raise stop(*found) from None
