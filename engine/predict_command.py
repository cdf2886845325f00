"""The command behind `predict.py`: its flags (`predict.parse_args`), then the images'
decisions (`predict.predict`) or, with `--objects`, the objects' (`predict_objects`)."""
from __future__ import annotations

import sys

from engine.predict import parse_args, predict
from engine.predict_objects import predict_objects
from engine.tool_cli import run_tool


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run_tool(lambda: (predict_objects if args.objects is not None else predict)(args))
