"""A run, start to end: `run(cfg)` checks everything first (`engine.preflight`), makes
the results folder, then trains one model on all classes (multi-class, "uni"), one fresh
identically seeded model per class (class-separated, "sep"), or only evaluates a
checkpoint (`--eval_only`); `--demo` first builds its small dataset.

Outputs under `<save_dir>/<save_name>/`: `log.txt` (every printed line), `config.json`
(every setting used), `results.csv` and `results.md`, `model.pth` (the full
`model.state_dict()`, reference keys; `<class>/model.pth` when class-separated),
`checkpoint.pth` (resume), and with `--save_maps` the heatmaps.

A start that fails (or is interrupted) before its first training step removes the folder
it made; a later stop keeps it for `--resume` and ends in one line that says where the
last checkpoint is (`stop_for`).
"""
from __future__ import annotations

import dataclasses
import errno
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import dataset
import models
import utils
from engine import checks, demo_data, distributed, training_state
from engine.config import DATASETS, Config, default_device
from engine.data import build_datasets
from engine.evaluator import evaluate
from engine.loop import RunStatus, train
from engine.preflight import (check_inputs, check_results_folder, check_resume,
                              eval_checkpoint_paths, eval_needs_encoder_weights,
                              fetch_encoder_weights)
from engine.report_html import report_page
from engine.report_material import Evaluation
from engine.results import ResultsTable, format_result, report, report_mean, results_page
from engine.run_folder import RunFolder, RunLog, free_save_name, write_config
from engine.step import set_tf32


def prepare_run_dir(cfg: Config) -> Path:
    """`<save_dir>/<save_name>`, created (see `RunFolder.create`)."""
    return RunFolder(Path(cfg.save_dir) / cfg.save_name, cfg.resume).create()


def evaluate_checkpoint(cfg: Config, log: RunLog, table: ResultsTable,
                        maps_dir: Path | None = None, status: RunStatus | None = None) -> None:
    """`--eval_only`: evaluate `cfg.checkpoint` on every class (see eval_checkpoint_paths);
    `maps_dir`: with heatmaps; `status.started` once the results are written."""
    utils.setup_seed(cfg.seed)
    set_tf32(cfg.tf32)
    device = torch.device(cfg.device)
    paths = eval_checkpoint_paths(cfg)
    weights = cfg.encoder_weights if eval_needs_encoder_weights(cfg) else "random"
    model = models.build_dinomaly(cfg.encoder, weights, cfg.dropout, device=device,
                                  fused_attn=cfg.fused_attn)
    _, test_sets = build_datasets(cfg, cfg.classes)
    results = Evaluation(cfg)  # the metrics, and the thresholds and report material
    loaded = None
    for name, test_set in test_sets.items():
        if paths[name] != loaded:
            models.load_checkpoint(model, paths[name])
            loaded = paths[name]
            log(f"checkpoint: {loaded}")
        results.merge(evaluate(model, {name: test_set}, cfg, device, maps_dir))
    report(results, None, log, table, with_mean=True)
    if status is not None:
        status.started = True


def run(cfg: Config, argv: Sequence[str] = ()) -> dict[str, list[float]]:
    """Train (multi-class or class-separated) or evaluate, writing the run folder.
    Returns the final metrics per class (plus 'Mean').

    Every check comes first: nothing is written or downloaded before the results folder,
    the data, the batch size, the image files, the checkpoints and (with --resume) the
    settings are known to fit. A start that fails (or is interrupted) before its first
    training step removes the folder it made; a later stop keeps it for --resume, and
    ends in one line that says where the last checkpoint is (`checks.Stop`).
    """
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; one of {DATASETS}")
    if not cfg.device:
        cfg = dataclasses.replace(cfg, device=default_device())
    processes = distributed.world_size()
    if processes > 1 and (cfg.eval_only or cfg.demo):
        raise SystemExit(f"error: {'--eval_only' if cfg.eval_only else '--demo'} runs in one "
                         "process: start it with python, not torchrun")
    try:
        distributed.local_batch_size(cfg.batch_size, processes)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    models.vit_encoder.parse_name(cfg.encoder)  # a script may name any encoder: checked now
    # torchrun: rank 0 alone reads every file and fetches the weights, the others wait for it
    cfg, notes, random_reason = distributed.main_rank_first(lambda: preflight(cfg))
    main_rank = distributed.rank() == 0  # the only one that writes files and logs
    folder = RunFolder(Path(cfg.save_dir) / cfg.save_name, cfg.resume)
    status = RunStatus()
    log = RunLog(folder.path / "log.txt" if main_rank else None)
    try:
        if main_rank:
            folder.create()
        return run_in_folder(cfg, argv, folder.path, log, status, notes, random_reason)
    except BaseException as err:
        if main_rank and not status.started:
            folder.discard()  # nothing worth keeping: the same command can simply run again
        stop = stop_for(err, cfg, argv, folder, status)
        if stop is None:
            raise
        # the traceback holds a DataLoader iterator whose workers would otherwise wait for
        # the garbage collector (5 s each) before the program ends
        err.__traceback__ = None
        if main_rank and status.started:
            try:
                log.record(str(stop))
            except OSError:
                pass  # the disk that stopped the run may refuse the log too
        raise stop from None


def preflight(cfg: Config) -> tuple[Config, list[str], str | None]:
    """Every check before the run writes anything, then the encoder weights made available:
    the config to run (the demo may fall back to a random encoder and a free folder name),
    the datasets' notes for the log and, for a random encoder, why."""
    check_results_folder(cfg)
    if cfg.demo:
        prepare_demo_data(cfg)
    notes = check_inputs(cfg)
    cfg, random_reason = fetch_encoder_weights(cfg)
    if cfg.demo and not cfg.resume:
        cfg = dataclasses.replace(cfg, save_name=free_save_name(cfg.save_dir, cfg.save_name))
    if cfg.resume:
        check_resume(cfg, Path(cfg.save_dir) / cfg.save_name)
    return cfg, notes, random_reason


def run_in_folder(cfg: Config, argv: Sequence[str], run_dir: Path, log: RunLog,
                  status: RunStatus, notes: Sequence[str],
                  random_reason: str | None) -> dict[str, list[float]]:
    """`run` once its folder exists: config.json, then the evaluation or the training."""
    main_rank = distributed.rank() == 0
    if main_rank and not cfg.resume:  # a resumed run keeps its config.json (the log says how)
        write_config(cfg, run_dir, argv)
    table = ResultsTable(run_dir / "results.csv" if main_rank else None, results_page(cfg),
                         report_page(cfg, run_dir))
    if cfg.resume:
        table.take_over(resume_limits(cfg, run_dir))
    log(f"{'evaluation of ' + str(cfg.checkpoint) if cfg.eval_only else 'training'}: "
        f"{cfg.dataset}, {len(cfg.classes)} classes, {cfg.encoder}, device {cfg.device}"
        f"{speed_options(cfg, distributed.world_size())}, results in {run_dir}")
    if cfg.resume:
        log(f"--resume: {' '.join([sys.argv[0], *argv])}")
    if cfg.encoder_changed:
        log(f"note: {cfg.encoder} brings the DINOv3 fork's settings: "
            f"{', '.join(cfg.encoder_changed)} (a flag given on the command line keeps its value)")
    for note in notes:
        log(f"note: {note}")
    banner = demo_banner(cfg, random_reason)
    for line in banner:
        log(line)
    maps_dir = run_dir if cfg.save_maps else None
    if cfg.eval_only:
        evaluate_checkpoint(cfg, log, table, maps_dir, status)
    elif not cfg.separate:
        train(cfg, cfg.classes, run_dir, log, table, with_mean=True, maps_dir=maps_dir,
              status=status)
    else:
        final: dict[str, list[float]] = {}
        for i, name in enumerate(cfg.classes):
            log(f"[{i + 1}/{len(cfg.classes)}] {name}")
            # a fresh model per class, seeded identically (setup_seed inside train)
            final.update(train(cfg, [name], run_dir / name, log, table, with_mean=False,
                               maps_dir=maps_dir, status=status))
        if main_rank:  # the summary: every class again, then the mean (reference's sep scripts)
            for name, values in final.items():
                log(format_result(name, values))
            report_mean(final, cfg.total_iters, log, table)
            table.save()
    for line in banner:  # once more, next to the numbers
        log(line)
    return read_results(table)


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues this run: the same one, with --resume."""
    args = [*argv] + ([] if "--resume" in argv else ["--resume"])
    launcher = (["torchrun", f"--nproc_per_node={distributed.world_size()}"]
                if distributed.world_size() > 1 else ["python"])
    return shlex.join([*launcher, sys.argv[0], *args])


def stop_for(err: BaseException, cfg: Config, argv: Sequence[str], folder: RunFolder,
             status: RunStatus) -> checks.Stop | None:
    """The one-line stop for an error or Ctrl-C inside a run (printed on rank 0), saying
    what is kept and how to continue; None for errors that are not the user's to fix
    (bugs keep their traceback) and for stops that already are one line."""
    if isinstance(err, SystemExit):
        return None  # already one line (stop_on_nan, the checks)
    if isinstance(err, KeyboardInterrupt):
        what, status_code = "interrupted", 130
    elif isinstance(err, OSError):
        what, status_code = f"error: {err}", 1
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            what += " (the disk is full: free some space, or pass another --save_dir)"
    elif isinstance(err, (dataset.DatasetError, models.EncoderError,
                          training_state.TrainingStateError)):
        what, status_code = f"error: {err}", 1
    else:
        return None
    if not status.started:  # as if it had stopped before the folder existed
        line = what
        if cfg.resume:
            line += f"; {folder.path} is as it was: continue with: {resume_command(argv)}"
        elif isinstance(err, KeyboardInterrupt):
            line += (" before any result was written" if cfg.eval_only else
                     " before the first training step") + ": nothing was kept"
    elif cfg.eval_only:
        line = f"{what}; the results written so far are in {folder.path}"
    else:
        where = f"iteration {status.iteration}/{cfg.total_iters}"
        if status.name:
            where += f" of class {status.name}"
        if status.checkpoint is not None:
            kept = f"the last checkpoint is {status.checkpoint} (iteration {status.saved_at}"
            kept += ("; results.csv and model.pth are from the last evaluation saved)"
                     if status.evaluated else ")")
        else:
            kept = ("no checkpoint yet (one is written at every evaluation, or every "
                    "--checkpoint_every N iterations): --resume starts that model again from "
                    "iteration 0")
        line = f"{what}, at {where}: {kept}; continue with: {resume_command(argv)}"
    if distributed.rank() > 0:
        return checks.Stop(line, status_code)  # rank 0 says it
    return checks.stop(line, status_code)


def prepare_demo_data(cfg: Config) -> None:
    """`--demo`: build the demo dataset at `cfg.data_path` once (later runs reuse it)."""
    try:
        demo_data.build_demo_dataset(cfg.data_path, classes=cfg.classes)
    except (demo_data.DemoDataError, ValueError) as err:
        raise SystemExit(f"error: --demo: {err}") from None


def demo_banner(cfg: Config, random_reason: str | None) -> list[str]:
    """The demo's lines on its encoder: loud when it is a random one."""
    if not cfg.demo:
        return []
    if cfg.encoder_weights != "random":
        return [f"demo: {cfg.encoder} with its pretrained weights, {cfg.total_iters} iterations "
                "on generated textures (the paper trains 10 000 on real data)"]
    rule = "!" * 88
    cached = models.vit_encoder.cached_path(cfg.encoder)
    return [rule,
            "!! DEMO WITH A RANDOM ENCODER: these numbers are NOT Dinomaly's. Without the",
            "!! pretrained DINO features nothing is detected; the run only shows that every",
            "!! step works, end to end.",
            f"!! Why: {random_reason}",
            f"!! For the real demo, {'request and ' if cfg.encoder.startswith('dinov3_') else ''}"
            f"download {models.vit_encoder.checkpoint_url(cfg.encoder)}",
            f"!! to {cached} and run the demo again.",
            rule]


def resume_limits(cfg: Config, run_dir: Path) -> dict[str, int]:
    """`--resume`: per class (and the multi-class Mean), the iteration up to which its
    results.csv rows stay: that of the checkpoint it continues from (0 without one)."""
    def saved_iteration(folder: Path) -> int:
        path = folder / training_state.CHECKPOINT_NAME
        return int(training_state.load_training_state(path)["iteration"]) if path.is_file() else 0

    if not cfg.separate:
        iteration = saved_iteration(run_dir)
        return {name: iteration for name in (*cfg.classes, "Mean")}
    return {name: saved_iteration(run_dir / name) for name in cfg.classes}


def speed_options(cfg: Config, processes: int) -> str:
    """The non-default speed settings for the log's first line, e.g. `, amp bf16, 2 processes`."""
    options = {f"amp {cfg.amp}": cfg.amp != "none", "explicit attention": not cfg.fused_attn,
               "image cache": cfg.cache_images, "compiled": cfg.compile, "tf32": cfg.tf32,
               f"{processes} processes": processes > 1}
    return "".join(f", {name}" for name, on in options.items() if on)


def read_results(table: ResultsTable) -> dict[str, list[float]]:
    """The last row per class of the results table."""
    return table.latest()[0]
