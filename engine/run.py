"""A run, start to end: `run(cfg)` checks everything first (`engine.preflight`), makes the
results folder, writes config.json, then runs the plan's model jobs (`engine.jobs`: one
multi-class model, one model per class, or only the evaluation of checkpoints) and, for a
class-separated run, the summary.

Outputs under `<save_dir>/<save_name>/`: `log.txt` (every printed line), `config.json`
(every setting used), `results.csv`, `results.md`, `thresholds.json`, `report.html`,
`model.pth` (the full `model.state_dict()`, reference keys; `<class>/model.pth` when
class-separated), `checkpoint.pth` (resume), and with `--save_maps` the heatmaps.

A start that fails (or is interrupted) before its first training step removes the folder
it made; a later stop keeps it for `--resume` and ends in one line that says where the
last checkpoint is (`stop_for`).
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import dataset
import models
from engine import distributed, training_state
from engine.config import RunConfig, default_device
from engine.data import build_datasets
from engine.errors import RunError, Stop, exit_line, stop
from engine.evaluation import EvalSettings, Evaluation, evaluate
from engine.generators import setup_seed
from engine.jobs import ModelJob, model_file, plan_run
from engine.loop import RunContext, RunStatus, train
from engine.preflight import checkpoint_has_encoder, preflight
from engine.report import Report, ReportSettings
from engine.run_folder import RunFolder, RunLog, write_config
from engine.step import set_tf32
from engine.thresholds import PooledThresholds
from recipes import Recipe, recipe_of


def run(cfg: RunConfig, argv: Sequence[str] = (),
        encoder_changed: Sequence[str] = ()) -> dict[str, list[float]]:
    """Train or evaluate as `cfg` says, writing the run folder. Returns the final metrics
    per class (plus 'Mean'). `encoder_changed`: the settings the encoder brought (the
    command line's record, for the log and config.json).

    Every check comes first: nothing is written or downloaded before the results folder,
    the data, the batch size, the image files, the checkpoints and (with --resume) the
    settings are known to fit.
    """
    if cfg.dataset == "auto":  # the dataset named in the path (the command line resolves it too)
        cfg = dataclasses.replace(cfg, dataset=dataset.dataset_for_path(cfg.data_path))
    spec = dataset.dataset_spec(cfg.dataset)
    classes = tuple(cfg.classes) or spec.classes or tuple(spec.layout.discover(cfg.data_path))
    cfg = dataclasses.replace(cfg, device=cfg.device or default_device(), classes=classes)
    processes = distributed.world_size()
    if processes > 1 and (cfg.eval_only or cfg.demo):
        raise RunError(f"{'--eval_only' if cfg.eval_only else '--demo'} runs in one process: "
                       "start it with python, not torchrun")
    try:
        distributed.local_batch_size(cfg.batch_size, processes)
    except ValueError as err:
        raise RunError(str(err)) from None
    models.find_encoder(cfg.encoder)  # a script may name any encoder: checked now
    # torchrun: rank 0 alone reads every file and fetches the weights, the others wait for it
    cfg, notes, random_reason = distributed.main_rank_first(lambda: preflight(cfg))
    main_rank = distributed.rank() == 0  # the only one that writes files and logs
    folder = RunFolder(Path(cfg.save_dir) / cfg.save_name, cfg.resume)
    status = RunStatus()
    log = RunLog(folder.path / "log.txt" if main_rank else None)
    try:
        if main_rank:
            folder.create()
        if main_rank and not cfg.resume:  # a resumed run keeps its config.json (the log says how)
            write_config(cfg, folder.path, argv, {"encoder_changed": list(encoder_changed)})
        return run_in_folder(cfg, argv, folder.path, log, status,
                             [*encoder_notes(cfg, encoder_changed), *notes],
                             demo_banner(cfg, random_reason))
    except BaseException as err:
        if main_rank and not status.started:
            folder.discard()  # nothing worth keeping: the same command can simply run again
        line = stop_for(err, cfg, argv, folder, status)
        if line is None:
            raise
        # the traceback holds a DataLoader iterator whose workers would otherwise wait for
        # the garbage collector (5 s each) before the program ends
        err.__traceback__ = None
        if main_rank and status.started:
            try:
                log.record(str(line))
            except OSError:
                pass  # the disk that stopped the run may refuse the log too
        raise line from None


def run_in_folder(cfg: RunConfig, argv: Sequence[str], run_dir: Path, log: RunLog,
                  status: RunStatus, notes: Sequence[str], banner: Sequence[str]
                  ) -> dict[str, list[float]]:
    """`run` once its folder exists: the log's head, then the plan's jobs."""
    recipe = recipe_of(cfg)
    plan = plan_run(cfg, run_dir)
    report = Report(run_dir if distributed.rank() == 0 else None, log, report_settings(cfg, recipe))
    if cfg.resume:
        report.take_over(resume_limits(plan.jobs))
    log(f"{'evaluation of ' + str(cfg.checkpoint) if cfg.eval_only else 'training'}: "
        f"{cfg.dataset}, {len(cfg.classes)} classes, {cfg.encoder}, device {cfg.device}"
        f"{speed_options(cfg, distributed.world_size())}, results in {run_dir}")
    if cfg.resume:
        log(f"--resume: {' '.join([sys.argv[0], *argv])}")
    for line in [*(f"note: {note}" for note in notes), *banner]:
        log(line)
    context = RunContext(cfg, recipe, torch.device(cfg.device), log, report, status,
                         EvalSettings(cfg.eval_batch_size or cfg.batch_size, cfg.num_workers, cfg.eval_resolution,
                                      cfg.gt_threshold, cfg.image_size, cfg.crop_size,
                                      pooled=not cfg.separate, spec=dataclasses.replace(
                                          recipe.eval_spec(cfg),
                                          device=cfg.device if cfg.metrics_on_device else None)))
    final: dict[str, list[float]] = {}
    for i, job in enumerate(plan.jobs):
        if job.label is not None:  # one model of several: which
            log(f"[{i + 1}/{len(plan.jobs)}] {job.label}")
        final.update(evaluate_checkpoints(job, context) if job.checkpoints else train(job, context))
    if plan.summary and distributed.rank() == 0:  # the reference's sep scripts: all again, the mean
        report.summary(final, cfg.total_iters)
    for line in banner:  # once more, next to the numbers
        log(line)
    return report.latest()[0]


def evaluate_checkpoints(job: ModelJob, run: RunContext) -> dict[str, list[float]]:
    """A job without training: the checkpoint of each class evaluated, then reported at
    once (with the Mean). The encoder's weights are loaded only when a checkpoint lacks
    them."""
    cfg = run.cfg
    setup_seed(cfg.seed)
    set_tf32(cfg.tf32)
    with_encoder = all(checkpoint_has_encoder(p) for p in set(job.checkpoints.values()))
    model = run.recipe.build_model(cfg, run.device, "random" if with_encoder else None)
    _, test_sets = build_datasets(cfg, job.classes)
    evaluation = Evaluation(pooled=PooledThresholds() if run.evaluation.pooled else None,
                            spec=run.evaluation.spec)
    loaded = None
    for name, test_set in test_sets.items():
        if job.checkpoints[name] != loaded:
            models.load_checkpoint(model, job.checkpoints[name])
            loaded = job.checkpoints[name]
            run.log(f"checkpoint: {loaded}")
        maps_dir = run.report.run_dir if cfg.save_maps else None
        evaluation.merge(evaluate(run.make_pipeline(model), {name: test_set}, run.evaluation,
                                  run.device, maps_dir, run.report.draw))
    run.report.evaluation(evaluation, None, job.with_mean)
    run.status.started = True
    return evaluation.metrics()


def report_settings(cfg: RunConfig, recipe: Recipe) -> ReportSettings:
    """The writer's settings for `cfg`: title, published row, thresholds.json's header."""
    spec = dataset.dataset_spec(cfg.dataset)
    title = (f"{cfg.save_name}: {recipe.title}, {spec.title}, "
             f"{'class-separated' if cfg.separate else 'multi-class'}")
    if cfg.eval_only:
        title += f", evaluation of {cfg.checkpoint}"
    header = {"encoder": cfg.encoder, "image_size": cfg.image_size, "crop_size": cfg.crop_size,
              "eval_resolution": cfg.eval_resolution, **recipe.score_settings(cfg),
              "score": recipe.score_note(cfg), "separate": cfg.separate}
    evaluation = recipe.eval_spec(cfg)
    if evaluation.objects is not None:  # how predict.py scores an object's images
        header["object_score"] = evaluation.objects.score.as_json()
    return ReportSettings(title, recipe.reference(cfg, spec.classes), header, cfg.image_size,
                          cfg.crop_size, lambda name: model_file(cfg, name), evaluation.metrics,
                          evaluation.note())


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues this run: the same one, with --resume."""
    args = [*argv] + ([] if "--resume" in argv else ["--resume"])
    launcher = (["torchrun", f"--nproc_per_node={distributed.world_size()}"]
                if distributed.world_size() > 1 else ["python"])
    return shlex.join([*launcher, sys.argv[0], *args])


def stop_for(err: BaseException, cfg: RunConfig, argv: Sequence[str], folder: RunFolder,
             status: RunStatus) -> Stop | None:
    """The one-line stop for an error or Ctrl-C inside a run (printed on rank 0), saying
    what is kept and how to continue; None for errors that are not the user's to fix
    (bugs keep their traceback) and for stops that already are one line."""
    if isinstance(err, SystemExit):
        return None  # already one line (a stop on a nan loss, the checks)
    found = exit_line(err, disk_full_hint="the disk is full: free some space, or pass another "
                                          "--save_dir")
    if found is None:
        return None
    what, status_code = found
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
        line = f"{what}, at {where_stopped(cfg, status)}; continue with: {resume_command(argv)}"
    if distributed.rank() > 0:
        return Stop(line, status_code)  # rank 0 says it
    return stop(line, status_code)


def where_stopped(cfg: RunConfig, status: RunStatus) -> str:
    """`iteration 7341/10000 [of class x]: the last checkpoint is …` (what a later stop keeps)."""
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
    return f"{where}: {kept}"


def encoder_notes(cfg: RunConfig, encoder_changed: Sequence[str]) -> list[str]:
    if not encoder_changed:
        return []
    family, _ = models.find_encoder(cfg.encoder)
    return [f"{cfg.encoder} brings {family.settings_note or family.title + ' settings'}: "
            f"{', '.join(encoder_changed)} (a flag given on the command line keeps its value)"]


def demo_banner(cfg: RunConfig, random_reason: str | None) -> list[str]:
    """The demo's lines on its encoder: loud when it is a random one."""
    if not cfg.demo:
        return []
    if cfg.encoder_weights != "random":
        return [f"demo: {cfg.encoder} with its pretrained weights, {cfg.total_iters} iterations "
                "on generated textures (the paper trains 10 000 on real data)"]
    rule = "!" * 88
    family, _ = models.find_encoder(cfg.encoder)
    return [rule,
            "!! DEMO WITH A RANDOM ENCODER: these numbers are NOT Dinomaly's. Without the",
            "!! pretrained DINO features nothing is detected; the run only shows that every",
            "!! step works, end to end.",
            f"!! Why: {random_reason}",
            f"!! For the real demo, {'' if family.downloadable else 'request and '}"
            f"download {models.vit_encoder.checkpoint_url(cfg.encoder)}",
            f"!! to {models.vit_encoder.cached_path(cfg.encoder)} and run the demo again.",
            rule]


def resume_limits(jobs: Sequence[ModelJob]) -> dict[str, int]:
    """`--resume`: per class (and the multi-class Mean), the iteration up to which its
    results.csv rows stay: that of the checkpoint its model continues from (0 without one)."""
    limits: dict[str, int] = {}
    for job in jobs:
        path = job.folder / training_state.CHECKPOINT_NAME
        iteration = (int(training_state.load_training_state(path)["iteration"])
                     if path.is_file() else 0)
        limits.update({name: iteration for name in job.classes})
        if job.with_mean:
            limits["Mean"] = iteration
    return limits


def speed_options(cfg: RunConfig, processes: int) -> str:
    """The non-default speed settings for the log's first line, e.g. `, amp bf16, 2 processes`."""
    options = {f"amp {cfg.amp}": cfg.amp != "none", "explicit attention": not cfg.fused_attn,
               "image cache": cfg.cache_images, "compiled": cfg.compile, "tf32": cfg.tf32,
               "metrics on the device": cfg.metrics_on_device,
               f"{processes} processes": processes > 1}
    return "".join(f", {name}" for name, on in options.items() if on)
