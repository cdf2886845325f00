"""The one training loop and command line behind the six `dinomaly_*.py` scripts.

A script fills a `Config` with its constants and calls `main(config)`; the command line
(`parse_args`) overrides any of them. `run` then either trains one model on all classes
(multi-class, "uni"), one fresh identically seeded model per class (class-separated,
"sep"), or only evaluates a checkpoint (`--eval_only`).

The loop keeps the reference's structure (epochs over one re-iterated DataLoader,
evaluation inside the loop) because creating DataLoader iterators and running evaluation
draw from the CPU random generator: the same structure keeps a run RNG-identical to the
reference's `dinomaly_*.py` (spec §4).

Outputs under `<save_dir>/<save_name>/` (see `run_files.py`): `log.txt` (every printed
line), `config.json` (every setting used), `results.csv` (one row per class per evaluation,
plus `Mean`), `model.pth` (the full `model.state_dict()`, reference keys;
`<class>/model.pth` when class-separated). `config.json`, `results.csv` and `model.pth` are
written atomically (temporary file + `os.replace`); `log.txt` is appended and flushed line
by line.

Speed and scale (issue 5), all off by default: `--amp`, `--cache_images`, `--compile`, and
several processes under `torchrun` (see `distributed.py`): each rank trains on its share of
every global batch, rank 0 alone evaluates, saves and logs while the others wait.

Robustness (issue 6), none of which changes what is computed: every input is checked before
anything is written or downloaded (data folders, image files, batch size, encoder name and
weights, `--eval_only` checkpoints); `checkpoint.pth` (see `training_state.py`) is written
atomically at every evaluation and `--resume` continues a stopped run exactly; the loss is
watched (`spike_guard.py`): a nan stops the run, a spike is logged, `--spike_restart` goes
back to the last checkpoint with a new seed; `results.md` shows the latest evaluation at a
glance (`report.py`); `--save_maps` draws heatmaps at the final evaluation; `--demo` trains
on a small generated dataset (`demo_data.py`) in a few minutes on a CPU.

Real-world inputs (issue 9): the flags, `--device` and `--save_dir` are checked too
(`checks.py`); a start that fails before its first training step removes the folder it
made (`run_files.RunFolder`); a later error, a full disk or Ctrl-C ends in one line that
names the last checkpoint and the command that resumes (`stop_for`); the model is saved
before its results; a class whose metric is not defined gets nan, left out of the mean.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from typing import NoReturn
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

import checks
import dataset
import demo_data
import distributed
import evaluation
from fileio import atomic_write
import heatmaps
import models
import report as results_report
import run_files
from run_files import ResultsTable, RunFolder, RunLog, free_save_name, save_model
import training_state
import utils
from spike_guard import NonFiniteLoss, SpikeGuard

# the reference's result line (spec §5), kept character for character
RESULT_FORMAT = ("{}: I-Auroc:{:.4f}, I-AP:{:.4f}, I-F1:{:.4f}, P-AUROC:{:.4f}, P-AP:{:.4f}, "
                 "P-F1:{:.4f}, P-AUPRO:{:.4f}")
METRIC_NAMES = run_files.METRIC_NAMES  # results.csv's columns after iteration and class
DATASETS = ("mvtec", "visa", "realiad")
MVTEC_CLASSES = tuple(dataset.MVTEC_CLASSES)  # (Config's field `dataset` hides the module there)
ALL_CLASSES = {"mvtec": MVTEC_CLASSES, "visa": tuple(dataset.VISA_CLASSES),
               "realiad": tuple(dataset.REALIAD_CLASSES)}
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --amp
COMPILE_BACKEND = "inductor"  # --compile; tests use "aot_eager" (same capture, no code generation)


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Defaults are the reference MVTec multi-class run (spec §4);
    the scripts set their own values explicitly."""

    # data
    dataset: str = "mvtec"  # 'mvtec' and 'visa' (MVTec layout) or 'realiad'
    data_path: str = "../mvtec_anomaly_detection"
    classes: tuple[str, ...] = MVTEC_CLASSES
    image_size: int = 448  # resize side
    crop_size: int = 392  # centre crop side (28 × 28 patches of 14 px)
    num_workers: int = 4
    # model
    encoder: str = "dinov2reg_vit_base_14"
    encoder_weights: str = "official"  # 'official', 'random' or a .pth path
    dropout: float = 0.2  # noisy bottleneck
    # optimisation
    separate: bool = False  # True: one model per class ("sep"); False: one for all ("uni")
    total_iters: int = 10_000  # per model
    batch_size: int = 16
    lr: float = 2e-3
    final_lr: float = 2e-4
    warmup_iters: int = 100
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-10
    clip_grad: float = 0.1
    hm_p_max: float = 0.9  # hard-mining: share of easy points whose gradient is damped ...
    hm_ramp_iters: int = 1000  # ... reached linearly over this many iterations
    hm_factor: float = 0.1  # gradient multiplier of the easy points
    seed: int = 1
    cudnn_benchmark: bool = False
    device: str = ""  # '' = cuda when available, else cpu
    # speed (issue 5); the defaults are the reference's computation
    fused_attn: bool = True  # encoder attention by SDPA (False: explicit; equal to round-off)
    amp: str = "none"  # 'bf16' / 'fp16': the forward under autocast; loss and optimizer fp32
    cache_images: bool = False  # training images decoded and resized once, kept in RAM (uint8)
    compile: bool = False  # torch.compile of every encoder, bottleneck and decoder block
    # evaluation and logging
    eval_every: int = 5_000  # also evaluated after the last iteration
    max_ratio: float = 0.01  # image score = mean of the top 1 % of the anomaly map
    eval_resolution: int = 256  # anomaly maps and masks resized to this side
    gt_threshold: float = 0.0  # mask pixel anomalous if > this (reference 0)
    log_every: int = 100
    save_dir: str = "./saved_results"
    save_name: str = "dinomaly_mvtec_uni"
    checkpoint: str | None = None  # with eval_only: model.pth (or, class-separated, a folder)
    eval_only: bool = False
    # robustness and outputs (issue 6); none changes what is computed
    save_maps: bool = False  # heatmaps and score histograms at the final evaluation of a model
    resume: bool = False  # continue the run in <save_dir>/<save_name> from its checkpoint.pth
    checkpoint_every: int = 0  # checkpoint.pth also every N iterations (0: at evaluations only)
    spike_factor: float = 3.0  # a loss above this × the running median is a spike (0: off)
    spike_window: int = 100  # running median over this many losses; no spike check before
    spike_restart: bool = False  # after a spike or nan: back to the last checkpoint, new seed
    max_restarts: int = 3  # spike restarts per model, at most
    skip_image_check: bool = False  # do not decode every image file before training
    demo: bool = False  # set by --demo (DEMO below)


# `--demo`: a short run on demo_data's generated textures, about 4 minutes on 2 shared CPU
# cores (350 CPU-seconds measured). Flags given with --demo override these.
DEMO = dict(
    data_path="demo_data",             # built there once, in the current folder
    classes=demo_data.TEXTURES,         # brick, grass, gravel: 16 training images each
    encoder="dinov2reg_vit_small_14",  # ViT-S: official weights if cached or reachable, else random
    image_size=192, crop_size=168,      # the reference's 448 -> 392 geometry, 12 x 12 patches
    total_iters=60,                     # 20 epochs of 3 batches of 16
    warmup_iters=10,                    # the cosine schedule still has 50 iterations to decay
    eval_every=60,                      # one evaluation, at the end
    num_workers=0,                      # on 2 cores, loader processes would slow the model down
    save_name="demo",                   # a new demo_1, demo_2 … folder for every run
    save_maps=True,                     # heatmaps of every test image
)


# ----------------------------------------------------------------------------- command line

def parse_args(defaults: Config, argv: Sequence[str] | None = None) -> Config:
    """`defaults` overridden by the command line; resolves `--device` and `--classes auto`.
    With `--demo`, the DEMO settings replace the script's before the other flags apply."""
    d = defaults
    demo = argparse.ArgumentParser(add_help=False)
    demo.add_argument("--demo", action="store_true")
    if demo.parse_known_args(argv)[0].demo:
        d = dataclasses.replace(d, demo=True, **DEMO)
    p = ArgumentParser(
        description=f"Dinomaly, {d.dataset}, {'class-separated' if d.separate else 'multi-class'}. "
                    "Defaults are this script's constants.")

    def add(name: str, default: object, text: str, **kw: object) -> None:
        shown = "" if default is None or default is False or default == "" else f" (default: {default})"
        p.add_argument(name, default=default, help=text + shown, **kw)

    add("--data_path", d.data_path, "dataset root")
    add("--save_dir", d.save_dir, "results go to <save_dir>/<save_name>/")
    add("--save_name", None, f"results folder name (default: {d.save_name}; "
                             f"{d.save_name}_eval with --eval_only)")
    add("--encoder", d.encoder, "DINOv2 encoder", choices=models.ENCODER_NAMES, metavar="NAME")
    add("--encoder_weights", d.encoder_weights,
        "'official' (downloaded once), 'random', or a path to a .pth")
    add("--total_iters", d.total_iters, "training iterations (per class when class-separated)",
        type=int)
    add("--batch_size", d.batch_size, "training (and evaluation) batch size", type=int)
    add("--image_size", d.image_size, "images are resized to this side", type=int)
    add("--crop_size", d.crop_size, "then centre-cropped to this side (a multiple of 14)",
        type=int)
    add("--eval_every", d.eval_every, "evaluate and save every N iterations, and after the last",
        type=int)
    add("--seed", d.seed, "seed of torch, numpy and random", type=int)
    add("--device", d.device or None, "e.g. cuda, cuda:1, cpu (default: cuda when available, "
                                      "else cpu)")
    add("--num_workers", d.num_workers, "data-loading processes", type=int)
    add("--dropout", d.dropout, "noisy-bottleneck dropout; 0 turns every dropout off", type=float)
    add("--log_every", d.log_every, "log the mean loss every N iterations", type=int)
    add("--amp", d.amp, "mixed precision: the model's forward under autocast in bf16 or fp16 "
                        "(fp16 with loss scaling); the loss, gradients and optimizer stay fp32. "
                        "'none' computes as the reference", choices=tuple(AMP_DTYPES))
    add("--cache_images", d.cache_images,
        "decode and resize every training image once and keep it in RAM as uint8 (the tensors "
        "are exactly the uncached ones): 3 x image_size^2 bytes per image and per process, "
        "0.6 MB at 448 px (MVTec AD 2.2 GB, VisA 5.2 GB); also keeps the loader workers "
        "between epochs and pins batches for CUDA", action="store_true")
    add("--compile", d.compile, "torch.compile every transformer block (the first iterations "
                                "and the first evaluation take a minute or more longer)",
        action="store_true")
    add("--explicit_attn", not d.fused_attn, "encoder attention as the reference's explicit "
                                             "softmax(q k^T) v (slower, more memory; equal to "
                                             "round-off)", action="store_true")
    found = ("every category with a split file in realiad_jsons/realiad_jsons"
             if d.dataset == "realiad" else "every folder under --data_path with train/good")
    add("--classes", None, f"comma-separated subset, or 'auto' = {found} "
                           f"(default: the script's {len(d.classes)} classes)")
    add("--checkpoint", d.checkpoint, "with --eval_only: a model.pth (ours or the reference's); "
                                      "class-separated: a folder holding <class>/model.pth, "
                                      "or one file for every class")
    add("--eval_only", d.eval_only, "evaluate --checkpoint on every class, no training",
        action="store_true")
    add("--gt_threshold", d.gt_threshold, "a mask pixel is anomalous if above this "
                                          "(the reference: 0; 0.5 is common)", type=float)
    add("--eval_resolution", d.eval_resolution, "anomaly maps and masks are resized to this "
                                                "side for the metrics", type=int)
    add("--save_maps", d.save_maps, "write a heatmap per test image (input | anomaly map, "
                                    "ground-truth outline, score) and a score histogram per "
                                    "class to <run>/maps/<class>/<defect>/, at the final "
                                    "evaluation of each model only (keeps runs fast)",
        action="store_true")
    add("--resume", d.resume, "continue the stopped run in <save_dir>/<save_name> from its "
                              "last checkpoint.pth, exactly as if it had not stopped (the "
                              "settings must be the run's; an existing results folder is "
                              "otherwise never written into)", action="store_true")
    add("--checkpoint_every", d.checkpoint_every, "also write checkpoint.pth every N iterations "
                                                  "(0: only at evaluations)", type=int)
    add("--spike_factor", d.spike_factor, "log a loss spike when the loss exceeds this many "
                                          "times the median of the last "
                                          f"{d.spike_window} losses (0: off)", type=float)
    add("--spike_restart", d.spike_restart, "after a loss spike or a nan loss, go back to the "
                                            "last checkpoint and continue with a new seed "
                                            "(seed + restart count); add --checkpoint_every "
                                            "to go back less far", action="store_true")
    add("--max_restarts", d.max_restarts, "spike restarts per model, at most", type=int)
    add("--skip_image_check", d.skip_image_check, "do not decode every image and mask file "
                                                  "before training (saves time on huge "
                                                  "datasets; a bad file then stops the run "
                                                  "when it is reached)", action="store_true")
    add("--demo", d.demo, "the demo: builds demo_data/ (3 textures with synthetic defects; "
                          "here, or at --data_path) once, trains ViT-S for a few minutes on "
                          "a CPU, prints the table and writes heatmaps. Official ViT-S "
                          "weights if cached or downloadable, else a random encoder "
                          "(loudly marked: its numbers are not Dinomaly's)",
        action="store_true")
    a = p.parse_args(argv)

    if a.eval_only and not a.checkpoint:
        p.error("--eval_only needs --checkpoint")
    if a.checkpoint and not a.eval_only:
        p.error("--checkpoint is only used with --eval_only")
    if a.checkpoint and not os.path.exists(a.checkpoint):
        p.error(f"--checkpoint {a.checkpoint} does not exist")
    if a.resume and a.eval_only:
        p.error("--resume continues a training run; --eval_only trains nothing")
    if a.demo and (d.dataset == "realiad" or d.separate):
        p.error("--demo is the multi-class MVTec-layout demo: python dinomaly_mvtec_uni.py --demo")
    try:
        checks.check_numbers(vars(a))
        if a.spike_restart:  # restarts reseed with seed + restart count
            checks.check_numbers({"seed": a.seed + a.max_restarts})
        device = checks.check_device(a.device) if a.device else default_device()
    except checks.CheckError as err:
        p.error(str(err))
    if a.crop_size > a.image_size:
        p.error("--crop_size cannot exceed --image_size")
    if a.classes is None:
        classes = tuple(d.classes)
    elif a.classes.strip() == "auto":
        try:
            classes = tuple(discover_classes(d.dataset, a.data_path))
        except dataset.DatasetError as err:
            p.error(str(err))
        if not classes:
            p.error(f"--classes auto found no class under {a.data_path}")
    else:
        classes = tuple(c.strip() for c in a.classes.split(",") if c.strip())
        if not classes:
            p.error(f"--classes {a.classes!r} names no class; give comma-separated class "
                    "names, or auto")
        if len(set(classes)) != len(classes):
            p.error("--classes lists a class twice")
    save_name = a.save_name or (d.save_name + "_eval" if a.eval_only else d.save_name)
    return dataclasses.replace(
        d, data_path=a.data_path, save_dir=a.save_dir, save_name=save_name, encoder=a.encoder,
        encoder_weights=a.encoder_weights, total_iters=a.total_iters, batch_size=a.batch_size,
        image_size=a.image_size, crop_size=a.crop_size, eval_every=a.eval_every, seed=a.seed,
        device=device, num_workers=a.num_workers, classes=classes, checkpoint=a.checkpoint,
        eval_only=a.eval_only, gt_threshold=a.gt_threshold, eval_resolution=a.eval_resolution,
        dropout=a.dropout, log_every=a.log_every, amp=a.amp, cache_images=a.cache_images,
        compile=a.compile, fused_attn=not a.explicit_attn, save_maps=a.save_maps,
        resume=a.resume, checkpoint_every=a.checkpoint_every, spike_factor=a.spike_factor,
        spike_restart=a.spike_restart, max_restarts=a.max_restarts,
        skip_image_check=a.skip_image_check)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends in one line `error: <message>` on stderr (no usage
    block), exit status 2 as argparse's, and the `SystemExit` carries the line."""

    def error(self, message: str) -> NoReturn:
        raise checks.stop(f"error: {message}")


def default_device() -> str:
    """CUDA when available, else CPU (the reference hard-codes cuda:1)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def discover_classes(kind: str, root: str) -> list[str]:
    """Class folders of a dataset root: MVTec layout via `dataset.discover_classes`;
    Real-IAD: one class per split file in `realiad_jsons/realiad_jsons/`."""
    if kind != "realiad":
        return dataset.discover_classes(root)
    json_dir = Path(root) / "realiad_jsons" / "realiad_jsons"
    if not json_dir.is_dir():
        raise dataset.DatasetError(f"no Real-IAD split folder {json_dir}")
    return sorted(p.stem for p in json_dir.glob("*.json"))


# ----------------------------------------------------------------------------- files and log

def prepare_run_dir(cfg: Config) -> Path:
    """`<save_dir>/<save_name>`, created (see `run_files.RunFolder.create`)."""
    return RunFolder(Path(cfg.save_dir) / cfg.save_name, cfg.resume).create()


def check_resume(cfg: Config, run_dir: Path) -> None:
    """`--resume`: the folder holds a run (config.json) whose settings that matter equal
    ours (training_state.RESUME_FREE lists those that may change)."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"error: --resume: there is no run to continue in {run_dir} "
                         f"(no config.json); check --save_dir and --save_name, or start the "
                         "run without --resume.")
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: --resume: cannot read {config_path}: {err}") from None
    saved = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(Config)}}
    differences = training_state.config_differences(saved, dataclasses.asdict(cfg))
    if differences:
        raise SystemExit(f"error: --resume: these settings differ from the run in {run_dir} "
                         f"({config_path}): {'; '.join(differences)}. Resume with the run's "
                         "settings, or start a new run under another --save_name.")


def write_config(cfg: Config, run_dir: Path, argv: Sequence[str]) -> None:
    """config.json: the settings used, plus the command and library versions."""
    info = {**dataclasses.asdict(cfg), "processes": distributed.world_size(),
            "command": [sys.argv[0], *argv],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
            "python": sys.version.split()[0]}
    atomic_write(run_dir / "config.json", lambda f: json.dump(info, f, indent=2))


# ----------------------------------------------------------------------------- data

def build_datasets(cfg: Config, classes: Sequence[str], cache_images: bool = False
                   ) -> tuple[Dataset, dict[str, Dataset]]:
    """The training set (union of `classes`, in order; `cache_images`: its images decoded
    and resized now, kept in RAM) and one test set per class."""
    data_transform, gt_transform = dataset.get_data_transforms(cfg.image_size, cfg.crop_size)
    if cfg.dataset == "realiad":
        train_set = ConcatDataset([
            dataset.RealIADDataset(cfg.data_path, c, data_transform, gt_transform, phase="train",
                                   cache_images=cache_images)
            for c in classes])
        test_sets = {c: dataset.RealIADDataset(cfg.data_path, c, data_transform, gt_transform,
                                               phase="test") for c in classes}
    else:  # MVTec AD and prepared VisA share the layout
        train_set = dataset.mvtec_train_set(cfg.data_path, list(classes), data_transform,
                                            cache_images=cache_images)
        test_sets = {c: dataset.MVTecDataset(os.path.join(cfg.data_path, c), data_transform,
                                             gt_transform, phase="test") for c in classes}
    return train_set, test_sets


def make_train_loader(cfg: Config, train_set: Dataset) -> DataLoader:
    """Shuffled global batches of `cfg.batch_size`, last partial batch dropped (spec §4), of
    which this process loads its share. One process: the batches and random draws of the
    reference's `DataLoader(shuffle=True, drop_last=True)`. With --cache_images the workers
    live across epochs and batches are pinned for CUDA (the same batches)."""
    persistent = cfg.cache_images and cfg.num_workers > 0
    sampler = distributed.GlobalBatchSampler(len(train_set), cfg.batch_size, distributed.rank(),
                                             distributed.world_size(), persistent_loader=persistent)
    return DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers,
                      persistent_workers=persistent,
                      pin_memory=cfg.cache_images and torch.device(cfg.device).type == "cuda")


# ----------------------------------------------------------------------------- evaluation

def format_result(name: str, values: Sequence[float]) -> str:
    """`<name>: I-Auroc:0.xxxx, ...` — the reference's line."""
    return RESULT_FORMAT.format(name, *values)


def evaluate(model: nn.Module, test_sets: dict[str, Dataset], cfg: Config,
             device: torch.device, maps_dir: Path | None = None) -> dict[str, list[float]]:
    """The seven metrics per class (spec §5), one fresh DataLoader per class as the
    reference does (each iterator draws one number from the CPU generator).
    `maps_dir`: also draw every test image's heatmap and the class's score histogram into
    `maps_dir/maps/<class>/` (heatmaps.py), from the same maps the metrics use."""
    results = {}
    for name, test_set in test_sets.items():
        loader = DataLoader(test_set, batch_size=cfg.batch_size, shuffle=False,
                            num_workers=cfg.num_workers)
        # collect_maps then metrics_of is evaluation_batch, split to keep the maps for drawing
        maps = evaluation.collect_maps(model, loader, device, max_ratio=cfg.max_ratio,
                                       resize_mask=cfg.eval_resolution,
                                       gt_threshold=cfg.gt_threshold)
        results[name] = [float(v) for v in evaluation.metrics_of(maps)]
        if maps_dir is not None:
            heatmaps.save_class_heatmaps(maps_dir, name, maps.paths, maps.maps, maps.masks,
                                         maps.scores, maps.labels, cfg.image_size, cfg.crop_size)
    return results


def report(results: dict[str, list[float]], iteration: int | None, log: RunLog,
           table: ResultsTable, with_mean: bool) -> None:
    """Log one line per class (and the Mean line, with a note on the classes it leaves
    out), add them to results.csv and rewrite it (and results.md)."""
    for name, values in results.items():
        log(format_result(name, values))
        table.add(iteration, name, values)
    if with_mean:
        report_mean(results, iteration, log, table)
    table.save()


def report_mean(results: dict[str, list[float]], iteration: int | None, log: RunLog,
                table: ResultsTable) -> None:
    """Log the Mean line over the classes of `results` (with a note naming the classes it
    leaves out, see `report.mean_result`) and add it to results.csv."""
    means, note = results_report.mean_result(results)
    log(format_result("Mean", means))
    if note:
        log(f"note: {note} ({results_report.UNDEFINED_HINT})")
    table.add(iteration, "Mean", means)


# ----------------------------------------------------------------------------- training

def compile_blocks(model: models.ViTill) -> None:
    """`torch.compile` every encoder block, the bottleneck and every decoder block, in place
    (`nn.Module.compile`: the state_dict keys stay the reference's). Blocks of one kind share
    their compiled code, so compilation costs one block per kind (evaluation, in eval mode
    without gradients, compiles its own variants); the loss's gradient hooks sit on the
    decoder outputs, outside the compiled code."""
    for block in [*model.encoder.blocks, *model.bottleneck, *model.decoder]:
        block.compile(backend=COMPILE_BACKEND)


def training_module(model: models.ViTill, cfg: Config, device: torch.device) -> nn.Module:
    """What the training step runs: `model` (its blocks compiled with --compile), wrapped in
    DistributedDataParallel with several processes (the gradients averaged over ranks: with
    equal shares, the gradient of the global batch's mean loss). `model` itself is what is
    evaluated and saved."""
    if cfg.compile:
        compile_blocks(model)
    if distributed.world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


@dataclass
class Training:
    """The model and what trains it (`setup_training`)."""

    model: models.ViTill  # evaluated and saved: reference keys
    net: nn.Module  # what the step runs: `model`, in DDP with several processes
    trainable: list[nn.Parameter]  # bottleneck + decoder
    optimizer: utils.StableAdamW
    scheduler: utils.WarmCosineScheduler
    scaler: torch.amp.GradScaler  # fp16 only; disabled, every call is a no-op


def setup_training(cfg: Config, device: torch.device) -> Training:
    """A fresh model (seeded init, the reference's order of random draws), its optimizer,
    lr schedule and, with the speed options, the compiled / DDP-wrapped training module."""
    model = models.build_dinomaly(cfg.encoder, cfg.encoder_weights, cfg.dropout, device=device,
                                  fused_attn=cfg.fused_attn)
    rank = distributed.rank()
    if rank > 0:  # own dropout masks (with one seed, every rank's i-th image would share one)
        torch.manual_seed(cfg.seed + rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = utils.StableAdamW([{"params": trainable}], lr=cfg.lr, betas=cfg.betas,
                                  weight_decay=cfg.weight_decay, amsgrad=True, eps=cfg.eps)
    # sets the lr of iteration 0 now, and of iteration i+1 at each step()
    scheduler = utils.WarmCosineScheduler(optimizer, base_value=cfg.lr, final_value=cfg.final_lr,
                                          total_iters=cfg.total_iters,
                                          warmup_iters=cfg.warmup_iters)
    return Training(model, training_module(model, cfg, device), trainable, optimizer, scheduler,
                    torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16"))


def train_step(t: Training, img: torch.Tensor, it: int, cfg: Config) -> float:
    """Iteration `it` on the batch `img` (`B × 3 × H × W`, on the device; this process's
    share with several): forward → loss → backward → clip → step → next lr (spec §4).
    Returns the loss of the global batch."""
    # forward (--amp: under autocast), then the features in fp32 for the loss
    with torch.autocast(img.device.type, dtype=AMP_DTYPES[cfg.amp], enabled=cfg.amp != "none"):
        en, de = t.net(img)
    en, de = [e.float() for e in en], [d.float() for d in de]  # fp32 already: no-op
    # loss: the hard-mining share p ramps 0 -> 0.9 over the first 1000 iterations (spec §4);
    # with several processes, its threshold is the whole global batch's
    p = min(cfg.hm_p_max * it / cfg.hm_ramp_iters, cfg.hm_p_max)
    loss = utils.global_cosine_hm_percent(en, de, p=p, factor=cfg.hm_factor,
                                          across_ranks=distributed.world_size() > 1)
    # backward (several processes: DDP averages the gradients over the ranks)
    t.optimizer.zero_grad()
    t.scaler.scale(loss).backward()
    # clip: global L2 norm of the trainable gradients (fp16: unscaled first)
    t.scaler.unscale_(t.optimizer)
    nn.utils.clip_grad_norm_(t.trainable, max_norm=cfg.clip_grad)
    # step (fp16: skipped if the gradients overflowed), then the scheduler sets the next lr
    t.scaler.step(t.optimizer)
    t.scaler.update()
    value = distributed.mean_over_ranks(loss.item())
    t.scheduler.step()
    return value


@dataclass
class RunStatus:
    """How far a run got, kept up to date by the loop: what the message says when the run
    stops early (Ctrl-C, a full disk), and whether its folder is kept (`started`)."""

    started: bool = False  # a training step is done (or, --eval_only, results are written)
    # of the model in training:
    iteration: int = 0  # iterations done
    name: str | None = None  # its class, class-separated
    checkpoint: Path | None = None  # its last checkpoint.pth, written or resumed from
    saved_at: int | None = None  # that checkpoint's iteration
    evaluated: bool = False  # an evaluation of it is saved (model.pth, results.csv)

    def new_model(self, name: str | None) -> None:
        """A model starts training (class-separated: the next class): nothing of it yet."""
        self.iteration, self.name = 0, name
        self.checkpoint, self.saved_at, self.evaluated = None, None, False

    def saved(self, path: Path, iteration: int) -> None:
        self.checkpoint, self.saved_at = path, iteration


class _Restart(Exception):
    """Raised inside the loop: go back to the last checkpoint with a new seed."""


def train(cfg: Config, classes: Sequence[str], out_dir: Path, log: RunLog, table: ResultsTable,
          with_mean: bool, maps_dir: Path | None = None,
          status: RunStatus | None = None) -> dict[str, list[float]]:
    """Train one model on the union of `classes` (reference `dinomaly_*.py` loop);
    evaluate and save `out_dir/model.pth` every `eval_every` iterations and at the end, each
    time with `out_dir/checkpoint.pth` (also every `checkpoint_every`); `cfg.resume`: continue
    from that checkpoint. `maps_dir`: heatmaps at the final evaluation (`--save_maps`).
    `status` follows the iterations and checkpoints (for the message if the run stops).
    Returns the last evaluation's metrics per class (on rank 0; {} on the other ranks, which
    train on their share of each batch and wait while rank 0 evaluates and saves)."""
    status = RunStatus() if status is None else status
    status.new_model(classes[0] if cfg.separate else None)
    ckpt_path = out_dir / training_state.CHECKPOINT_NAME
    state = None
    if cfg.resume and ckpt_path.is_file():
        state = training_state.load_training_state(ckpt_path)
        status.saved(ckpt_path, int(state["iteration"]))
        status.iteration = int(state["iteration"])
        status.evaluated = bool(state["results"])
        if state["finished"]:
            log(f"{ckpt_path}: trained to the end (iteration {state['iteration']}), "
                "nothing to resume")
            return state["results"]
    utils.setup_seed(cfg.seed, cudnn_benchmark=cfg.cudnn_benchmark)
    device = torch.device(cfg.device)
    rank = distributed.rank()
    train_set, test_sets = build_datasets(cfg, classes, cache_images=cfg.cache_images)
    train_loader = make_train_loader(cfg, train_set)
    sampler = train_loader.batch_sampler  # records each epoch's order, replays it on resume
    if len(train_loader) == 0:
        raise SystemExit(f"error: --batch_size {cfg.batch_size} is larger than the training "
                         f"set ({len(train_set)} images): no full batch to train on.")
    t = setup_training(cfg, device)
    model = t.model
    log(f"train image number:{len(train_set)}")

    results: dict[str, list[float]] = {}
    progress = training_state.Progress()

    def save_checkpoint(finished: bool = False) -> None:
        """checkpoint.pth from rank 0, with every rank's generators; at the point where the
        next iteration starts (after the evaluation's random draws)."""
        rng = training_state.all_rng_states()  # collective: every rank takes part
        if rank == 0:
            training_state.save_training_state(ckpt_path, model, t.optimizer, t.scheduler,
                                               progress, dataclasses.asdict(cfg), results, rng,
                                               t.scaler, finished)
        distributed.barrier()
        status.saved(ckpt_path, progress.iteration)

    if state is not None:
        processes = distributed.world_size()
        same_processes = len(state["rng"]) == processes
        progress = training_state.restore_training_state(
            state, model, t.optimizer, t.scheduler, rng_index=rank if same_processes else 0,
            scaler=t.scaler)
        if not same_processes and rank > 0:  # rank 0's generators, but own dropout masks
            torch.manual_seed(cfg.seed + rank)
        results = state["results"]
        log(f"resumed from {ckpt_path} at iteration {progress.iteration}"
            + ("" if same_processes else f" (saved by {len(state['rng'])} processes, now "
                                         f"{processes}: not bit-identical to an unstopped run)"))
    elif cfg.resume:
        log(f"no checkpoint in {out_dir}: starting from iteration 0")
    if state is None and cfg.spike_restart:
        save_checkpoint()  # a restart before the first evaluation goes back to iteration 0
    guard = SpikeGuard(cfg.spike_factor, cfg.spike_window, warmup=cfg.spike_window)
    restarts = progress.restarts
    # the bar is closed on the way out, also by an error or Ctrl-C (before their message)
    with tqdm(total=cfg.total_iters, initial=progress.iteration,
              desc=classes[0] if cfg.separate else "train", file=sys.stderr,
              dynamic_ncols=True, disable=rank > 0) as bar:
        while True:  # runs once, unless a spike restart goes back to the last checkpoint
            it = progress.iteration
            guard.reset(progress.losses)
            recent = progress.losses[it - it % cfg.log_every:]  # since the last periodic log line
            try:
                for epoch in range(progress.epoch, math.ceil(cfg.total_iters / len(train_loader))):
                    model.train()
                    loss_list: list[float] = []
                    position = 0  # batches of this epoch done
                    batches = train_loader
                    if epoch == progress.epoch and progress.epoch_order is not None:
                        # resume mid-epoch: the rest of the saved order. Creating the iterator draws
                        # a worker seed that the stopped run drew before its checkpoint: undone.
                        position = progress.epoch_position
                        loss_list = progress.losses[it - position:]
                        sampler.resume(progress.epoch_order, position * cfg.batch_size)
                        generator_state = torch.get_rng_state()
                        batches = iter(train_loader)
                        torch.set_rng_state(generator_state)
                    for img, _label in batches:
                        lr = t.optimizer.param_groups[0]["lr"]  # set by the scheduler
                        # forward, loss, backward, clip, step
                        loss_list.append(train_step(t, img.to(device, non_blocking=True), it, cfg))
                        status.iteration, status.started = it + 1, True
                        position += 1
                        progress.losses.append(loss_list[-1])
                        # watch the loss: nan stops the run, a spike is logged (both may restart)
                        spike = guard.check(it + 1, loss_list[-1])
                        if spike is not None:
                            restart = cfg.spike_restart and restarts < cfg.max_restarts
                            log(spike.message() + ("" if restart or not cfg.spike_restart else
                                                   f" (no restart left: {restarts} done)"))
                            if restart:
                                raise _Restart()
                        # evaluate / checkpoint on rank 0, the others wait (before it += 1, as the
                        # reference)
                        evaluated = (it + 1) % cfg.eval_every == 0 or it + 1 == cfg.total_iters
                        if evaluated:
                            final = it + 1 == cfg.total_iters
                            if rank == 0:
                                results = evaluate(model, test_sets, cfg, device,
                                                   maps_dir if final and cfg.save_maps else None)
                                # the model first: results never report a model not on disk
                                save_model(model, out_dir / "model.pth")
                                report(results, it + 1, log, table, with_mean)
                                status.evaluated = True
                            distributed.barrier()
                            model.train()
                        checkpointed = cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0
                        if evaluated or checkpointed:
                            progress.iteration, progress.epoch = it + 1, epoch
                            progress.epoch_order, progress.epoch_position = sampler.order, position
                            progress.restarts = restarts
                            save_checkpoint(finished=it + 1 == cfg.total_iters)
                        it += 1
                        # log
                        recent.append(loss_list[-1])
                        bar.set_postfix(loss=f"{loss_list[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
                        bar.update()
                        if it % cfg.log_every == 0:
                            log(f"iter [{it}/{cfg.total_iters}], loss:{np.mean(recent):.4f}, "
                                f"lr:{lr:.2e}")
                            recent = []
                        if it == cfg.total_iters:
                            break
                    # per epoch
                    log(f"iter [{it}/{cfg.total_iters}], loss:{np.mean(loss_list):.4f}")
                break
            except (_Restart, NonFiniteLoss) as event:
                if isinstance(event, NonFiniteLoss) and not (cfg.spike_restart
                                                             and restarts < cfg.max_restarts):
                    stop_on_nan(event, ckpt_path, status.saved_at, cfg, restarts, log)
                if isinstance(event, NonFiniteLoss):
                    log(str(event))
                # back to the last checkpoint, with fresh generators: seed + restart count
                restarts += 1
                state = training_state.load_training_state(ckpt_path)
                progress = training_state.restore_training_state(state, model, t.optimizer,
                                                                 t.scheduler, rng_index=None,
                                                                 scaler=t.scaler)
                progress.restarts = restarts
                results = state["results"]
                utils.setup_seed(cfg.seed + restarts, cudnn_benchmark=cfg.cudnn_benchmark)
                if rank > 0:
                    torch.manual_seed(cfg.seed + restarts + rank)
                log(f"spike restart {restarts}/{cfg.max_restarts}: back to iteration "
                    f"{progress.iteration} ({ckpt_path}), seed {cfg.seed + restarts}")
                bar.n = progress.iteration
                bar.refresh()
    return results


def stop_on_nan(err: NonFiniteLoss, ckpt_path: Path, saved_at: int | None, cfg: Config,
                restarts: int, log: RunLog) -> None:
    """Log why the run stops and what is kept, then stop (SystemExit)."""
    if saved_at is None:
        kept = ("no checkpoint was written yet (one is written at every evaluation, or every "
                "--checkpoint_every N iterations)")
    else:
        kept = (f"nothing was saved after it: {ckpt_path} (iteration {saved_at}) is the last "
                "good state; continue with --resume")
        kept += (f" (all {restarts} restarts are used up)" if cfg.spike_restart else
                 "; with --spike_restart, a nan goes back to the checkpoint with a new seed")
    message = f"{err}: training stopped; {kept}"
    log(message)
    raise SystemExit(f"error: {message}")


def eval_checkpoint_paths(cfg: Config) -> dict[str, Path]:
    """`--eval_only`: the checkpoint file of each class. Class-separated runs take a folder
    holding `<class>/model.pth` (our layout) or one file used for every class."""
    ckpt = Path(cfg.checkpoint)
    per_class = cfg.separate and ckpt.is_dir()
    paths = {c: ckpt / c / "model.pth" if per_class else ckpt for c in cfg.classes}
    for path in paths.values():
        if not path.is_file():
            raise models.CheckpointError(f"checkpoint not found: {path}")
    return paths


def eval_needs_encoder_weights(cfg: Config) -> bool:
    """Whether `--eval_only` needs the encoder's weights: not when every checkpoint is a full
    state_dict, which brings its own encoder."""
    return not all(checkpoint_has_encoder(p) for p in set(eval_checkpoint_paths(cfg).values()))


def check_checkpoints_fit(cfg: Config) -> None:
    """`--eval_only`: every checkpoint fits the model of `--encoder` (keys and shapes), checked
    on a weightless ("meta") model before anything is written or downloaded."""
    with warnings.catch_warnings():  # loading into meta tensors warns that it copies nothing
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = models.build_dinomaly(cfg.encoder, "random", cfg.dropout)
        for path in sorted(set(eval_checkpoint_paths(cfg).values())):
            try:
                models.load_checkpoint(model, path)
            except models.CheckpointMismatch as err:
                raise models.CheckpointError(f"{err} This run builds --encoder {cfg.encoder}: "
                                             "pass the encoder the checkpoint was trained "
                                             "with.") from None


def evaluate_checkpoint(cfg: Config, log: RunLog, table: ResultsTable,
                        maps_dir: Path | None = None, status: RunStatus | None = None) -> None:
    """`--eval_only`: evaluate `cfg.checkpoint` on every class (see eval_checkpoint_paths);
    `maps_dir`: with heatmaps; `status.started` once the results are written."""
    utils.setup_seed(cfg.seed)
    device = torch.device(cfg.device)
    paths = eval_checkpoint_paths(cfg)
    weights = cfg.encoder_weights if eval_needs_encoder_weights(cfg) else "random"
    model = models.build_dinomaly(cfg.encoder, weights, cfg.dropout, device=device,
                                  fused_attn=cfg.fused_attn)
    _, test_sets = build_datasets(cfg, cfg.classes)
    results: dict[str, list[float]] = {}
    loaded = None
    for name, test_set in test_sets.items():
        if paths[name] != loaded:
            models.load_checkpoint(model, paths[name])
            loaded = paths[name]
            log(f"checkpoint: {loaded}")
        results.update(evaluate(model, {name: test_set}, cfg, device, maps_dir))
    report(results, None, log, table, with_mean=True)
    if status is not None:
        status.started = True


def checkpoint_has_encoder(path: Path) -> bool:
    """Whether a checkpoint file holds the encoder weights too (a full state_dict)."""
    try:
        state_dict = models.checkpoint.model_state_dict(
            models.vit_encoder.load_file(path, "checkpoint"), path)
    except models.EncoderError:
        return False  # load_checkpoint reports it properly
    return any(k.startswith("encoder.") for k in state_dict)


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
    check_results_folder(cfg)
    if cfg.demo:
        prepare_demo_data(cfg)
    notes = check_inputs(cfg)
    cfg, random_reason = fetch_encoder_weights(cfg)
    if cfg.demo and not cfg.resume:
        cfg = dataclasses.replace(cfg, save_name=free_save_name(cfg.save_dir, cfg.save_name))
    if cfg.resume:
        check_resume(cfg, Path(cfg.save_dir) / cfg.save_name)
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


def run_in_folder(cfg: Config, argv: Sequence[str], run_dir: Path, log: RunLog,
                  status: RunStatus, notes: Sequence[str],
                  random_reason: str | None) -> dict[str, list[float]]:
    """`run` once its folder exists: config.json, then the evaluation or the training."""
    main_rank = distributed.rank() == 0
    if main_rank and not cfg.resume:  # a resumed run keeps its config.json (the log says how)
        write_config(cfg, run_dir, argv)
    table = ResultsTable(run_dir / "results.csv" if main_rank else None, results_page(cfg))
    if cfg.resume:
        table.take_over(resume_limits(cfg, run_dir))
    log(f"{'evaluation of ' + str(cfg.checkpoint) if cfg.eval_only else 'training'}: "
        f"{cfg.dataset}, {len(cfg.classes)} classes, {cfg.encoder}, device {cfg.device}"
        f"{speed_options(cfg, distributed.world_size())}, results in {run_dir}")
    if cfg.resume:
        log(f"--resume: {' '.join([sys.argv[0], *argv])}")
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


def check_results_folder(cfg: Config) -> None:
    """`--save_dir` is (or can become) a folder this process can write in, and
    `<save_dir>/<save_name>` is not a file: checked before anything is written."""
    run_dir = Path(cfg.save_dir) / cfg.save_name
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise checks.CheckError(f"--save_name {cfg.save_name}: {run_dir} is a file, not a "
                                    "folder; choose another --save_name")
        checks.check_writable_folder(run_dir if run_dir.is_dir() else Path(cfg.save_dir),
                                     "--save_dir")
    except checks.CheckError as err:
        raise SystemExit(f"error: {err}") from None


def prepare_demo_data(cfg: Config) -> None:
    """`--demo`: build the demo dataset at `cfg.data_path` once (later runs reuse it)."""
    try:
        demo_data.build_demo_dataset(cfg.data_path, classes=cfg.classes)
    except (demo_data.DemoDataError, ValueError) as err:
        raise SystemExit(f"error: --demo: {err}") from None


def check_inputs(cfg: Config) -> list[str]:
    """The checks that need no model: data folders and classes (DatasetError names the
    path), the batch size against each training set, every image and mask file and every
    mask's size against its image's (unless --skip_image_check), and --eval_only
    checkpoints against --encoder. Returns the datasets' notes for the log (e.g. masks
    paired with images by sorted order)."""
    train_set, test_sets = build_datasets(cfg, cfg.classes)
    if not cfg.eval_only:
        # a training set smaller than one batch would silently train zero iterations
        parts = zip(cfg.classes, train_set.datasets) if cfg.separate else [("", train_set)]
        for name, part in parts:
            if len(part) < cfg.batch_size:
                of = f" of class {name}" if name else ""
                raise SystemExit(f"error: --batch_size {cfg.batch_size} is larger than the "
                                 f"training set{of} ({len(part)} images): no full batch to "
                                 "train on; use a smaller --batch_size.")
    if not cfg.skip_image_check:
        files = [] if cfg.eval_only else dataset.image_paths(train_set)
        for test_set in test_sets.values():
            files += dataset.image_paths(test_set)
        dataset.check_images(files)
        for test_set in test_sets.values():
            dataset.check_mask_sizes(test_set)
    if cfg.eval_only:
        check_checkpoints_fit(cfg)
    return [note for test_set in test_sets.values() for note in test_set.notes]


def fetch_encoder_weights(cfg: Config) -> tuple[Config, str | None]:
    """Make the encoder weights available now: after the data checks (a wrong data path
    costs no download), before the run folder exists (a failed download leaves nothing).
    The demo falls back to a random encoder: returns the changed config and the reason."""
    if cfg.eval_only and not eval_needs_encoder_weights(cfg):
        return cfg, None
    if cfg.encoder_weights == "random":
        return cfg, "--encoder_weights random was given"
    if cfg.encoder_weights != "official":
        if not Path(cfg.encoder_weights).is_file():
            raise models.EncoderError(f"--encoder_weights {cfg.encoder_weights}: no such file; "
                                      "pass a .pth in the official DINOv2 format, 'official' or "
                                      "'random'")
        # its first bytes now (an image passed by mistake stops here); it is read in full
        # when the model is built, and a failure there removes the new run folder again
        models.vit_encoder.check_file(cfg.encoder_weights, "encoder weights file")
        return cfg, None
    try:
        models.vit_encoder.official_weights(cfg.encoder)
    except models.EncoderError as err:
        if not cfg.demo:
            raise
        return dataclasses.replace(cfg, encoder_weights="random"), str(err)
    return cfg, None


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
            "!! pretrained DINOv2 features nothing is detected; the run only shows that every",
            "!! step works, end to end.",
            f"!! Why: {random_reason}",
            f"!! For the real demo, download {models.vit_encoder.checkpoint_url(cfg.encoder)}",
            f"!! to {cached} and run the demo again.",
            rule]


def results_page(cfg: Config) -> run_files.Page:
    """results.md's page for `cfg`: with the paper's means for the multi-class scripts."""
    paper = results_report.paper_means(cfg.dataset, cfg.separate)
    settings = dataclasses.asdict(cfg)
    if cfg.eval_only:  # the checkpoint's own training is not known here
        settings["total_iters"] = results_report.PAPER_SETTING["total_iters"]
    differences = (results_report.paper_differences(settings, ALL_CLASSES[cfg.dataset])
                   if paper else [])
    title = (f"{cfg.save_name}: Dinomaly, {results_report.DATASET_TITLES[cfg.dataset]}, "
             f"{'class-separated' if cfg.separate else 'multi-class'}")
    if cfg.eval_only:
        title += f", evaluation of {cfg.checkpoint}"

    def page(results: dict[str, list[float]], iteration: int | None) -> str:
        classes = {name: values for name, values in results.items() if name != "Mean"}
        note = results_report.mean_result(classes)[1] if "Mean" in results else ""
        return results_report.results_markdown(results, title, iteration, paper, differences,
                                                note)
    return page


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
               "image cache": cfg.cache_images, "compiled": cfg.compile,
               f"{processes} processes": processes > 1}
    return "".join(f", {name}" for name, on in options.items() if on)


def read_results(table: ResultsTable) -> dict[str, list[float]]:
    """The last row per class of the results table."""
    return table.latest()[0]


def main(defaults: Config, argv: Sequence[str] | None = None) -> None:
    """Entry point of the scripts: command line over `defaults`, then `run`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(defaults, argv)
    try:
        with distributed.launched(cfg.device) as device:  # torchrun: join the process group
            run(dataclasses.replace(cfg, device=device), argv)
    except (dataset.DatasetError, models.CheckpointError, models.EncoderError,
            training_state.TrainingStateError, checks.CheckError, OSError) as err:
        raise SystemExit(f"error: {err}") from None  # before the run folder: nothing written
    except KeyboardInterrupt:
        raise checks.stop("interrupted before the run started: nothing was written",
                          130) from None
