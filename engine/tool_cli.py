"""What the command lines of `predict.py` and `export.py` share: the flags that name a model
(`--checkpoint`, `--class`, and for a bare `model.pth` `--encoder`, `--image_size`,
`--crop_size`) and the one-line errors (as in training: `error: …`, exit status 2 for a
flag, 1 for anything else; never a traceback)."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import models
from engine import checks
from engine.errors import ArgumentParser, run_command


def new_parser(description: str) -> ArgumentParser:
    """An argparse parser whose errors are one line (`engine.errors.ArgumentParser`)."""
    return ArgumentParser(description=description)


def add_model_flags(p: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    p.add_argument("--checkpoint", required=checkpoint_required, metavar="RUN_OR_MODEL",
                   help="a run folder of dinomaly_*.py (model and settings from its config.json, "
                        "thresholds from its thresholds.json) or a model.pth (then --encoder)")
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="the class of the images: its model (class-separated runs), thresholds "
                        "and colour scale")
    p.add_argument("--encoder", choices=models.encoder_names(), metavar="NAME",
                   help="the encoder of a bare model.pth")
    p.add_argument("--image_size", type=int, help="resize side of a bare model.pth (default 448)")
    p.add_argument("--crop_size", type=int, help="centre crop of a bare model.pth (default 392)")


def check_sizes(args: argparse.Namespace) -> None:
    """--image_size / --crop_size in range (the training's rules)."""
    checks.check_numbers({k: v for k, v in (("image_size", args.image_size),
                                            ("crop_size", args.crop_size)) if v is not None})
    if args.image_size is not None and args.crop_size is not None and args.crop_size > args.image_size:
        raise checks.CheckError(f"--crop_size {args.crop_size} is larger than --image_size {args.image_size}")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def run_tool(body: Callable[[], None]) -> None:
    """Run `body`; a CheckError ends in `error: …` with status 2, a file or data error with 1,
    Ctrl-C with 130 (`engine.errors.exit_line`)."""
    run_command(body)
