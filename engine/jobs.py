"""The run's mode, decided once: a run is a list of model jobs (`plan_run`), and what runs
them (`engine.run`, `engine.loop`) knows no mode.

    multi-class      one job: one model trained on every class, its evaluations with the Mean
    class-separated  one job per class (a fresh model each, in `<run>/<class>/`), then a
                     summary of every class and the Mean
    --eval_only      one job, no training: the checkpoint of each class evaluated
    --resume         the same jobs, each continuing from its folder's checkpoint.pth
    --demo           a multi-class run on the demo's data
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import models
from engine.config import RunConfig


@dataclass(frozen=True)
class ModelJob:
    """One model of a run."""
    classes: tuple[str, ...]  # trained on their union (or, `checkpoints` given, evaluated)
    folder: Path  # its model.pth and checkpoint.pth
    label: str | None  # its class, when the run has one model per class
    with_mean: bool  # its evaluations report the Mean of its classes
    resume: bool = False  # continue from `folder`'s checkpoint.pth, if it has one
    checkpoints: dict[str, Path] | None = None  # evaluate only: the model file of each class


@dataclass(frozen=True)
class RunPlan:
    jobs: list[ModelJob]
    summary: bool  # after the jobs: every class's line again and their Mean


def eval_checkpoint_paths(cfg: RunConfig) -> dict[str, Path]:
    """`--eval_only`: the checkpoint file of each class. Class-separated runs take a folder
    holding `<class>/model.pth` (our layout) or one file used for every class."""
    ckpt = Path(cfg.checkpoint)
    per_class = cfg.separate and ckpt.is_dir()
    paths = {c: ckpt / c / "model.pth" if per_class else ckpt for c in cfg.classes}
    for path in paths.values():
        if not path.is_file():
            raise models.CheckpointError(f"checkpoint not found: {path}")
    return paths


def plan_run(cfg: RunConfig, run_dir: Path) -> RunPlan:
    """The jobs of the run in `run_dir` (the module docstring's table)."""
    classes = tuple(cfg.classes)
    if cfg.eval_only:
        return RunPlan([ModelJob(classes, run_dir, None, with_mean=True,
                                 checkpoints=eval_checkpoint_paths(cfg))], summary=False)
    if not cfg.separate:
        return RunPlan([ModelJob(classes, run_dir, None, with_mean=True, resume=cfg.resume)],
                       summary=False)
    return RunPlan([ModelJob((name,), run_dir / name, name, with_mean=False, resume=cfg.resume)
                    for name in classes], summary=True)


def model_file(cfg: RunConfig, name: str | None) -> str:
    """The model file a class's thresholds belong to (thresholds.json's "checkpoint"):
    relative to the run folder for a trained run, absolute for `--eval_only`."""
    if cfg.eval_only:
        path = Path(cfg.checkpoint)
        if cfg.separate and path.is_dir() and name is not None:
            path = path / name / "model.pth"
        return str(path.resolve())
    return f"{name}/model.pth" if cfg.separate and name is not None else "model.pth"
