"""The command line of the six scripts: `main(config)` parses the flags over the script's
`Config` (`parse_args`), joins a torchrun process group if there is one, and runs.

Every flag is checked here (ranges, `--device`, `--classes`); a bad one ends in one
`error: …` line with exit status 2 and nothing written (`checks.stop`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import dataset
import models
from engine import checks, distributed, training_state
from engine.config import AMP_DTYPES, DEMO, Config, default_device, encoder_settings
from engine.data import discover_classes
from engine.run import run

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
    add("--encoder", d.encoder, "DINOv2 (patch 14) or DINOv3 (patch 16) encoder; a DINOv3 "
        "encoder brings the DINOv3 fork's settings (resize 512, crop 448, no AMSGrad, batch 12 "
        "for ViT-L) unless those flags are given", choices=models.ENCODER_NAMES, metavar="NAME")
    add("--encoder_weights", d.encoder_weights,
        "'official' (DINOv2: downloaded once; DINOv3: from the cache, see README), 'random', "
        "or a path to a .pth in the official format (DINOv3: also a timm-format file)")
    add("--total_iters", d.total_iters, "training iterations (per class when class-separated)",
        type=int)
    add("--batch_size", d.batch_size, "training (and evaluation) batch size", type=int)
    add("--image_size", d.image_size, "images are resized to this side", type=int)
    add("--crop_size", d.crop_size, "then centre-cropped to this side (a multiple of the "
                                    "encoder's patch, 14 or 16)",
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
        "are exactly the uncached ones): 3 x image_size^2 bytes per image, 0.6 MB at 448 px "
        "(MVTec AD 2.2 GB, VisA 5.2 GB); one copy per machine under torchrun (shared "
        "memory)", action="store_true")
    add("--compile", d.compile, "torch.compile every transformer block (the first iterations "
                                "and the first evaluation take a minute or more longer; "
                                "dropout draws the eager masks: rounding differs only)",
        action="store_true")
    add("--tf32", d.tf32, "CUDA: float32 matrix products on TF32 tensor cores (inputs "
                          "rounded to 10-bit mantissas, fp32 sums): faster fp32 training and "
                          "evaluation, not bit-identical to the reference's full fp32",
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
    a, encoder_changed = take_encoder_settings(p, a, d, argv)

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
    try:  # a script may name any encoder: checked now
        patch = models.vit_encoder.patch_size(a.encoder)
    except models.EncoderError as err:
        p.error(str(err))
    if a.crop_size % patch:
        p.error(f"--crop_size {a.crop_size}: must be a positive multiple of the {patch}-pixel "
                f"patch of {a.encoder} (e.g. {28 * patch} = 28 x {patch})")
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
        compile=a.compile, tf32=a.tf32, fused_attn=not a.explicit_attn, save_maps=a.save_maps,
        resume=a.resume, checkpoint_every=a.checkpoint_every, spike_factor=a.spike_factor,
        spike_restart=a.spike_restart, max_restarts=a.max_restarts,
        skip_image_check=a.skip_image_check, amsgrad=a.amsgrad, encoder_changed=encoder_changed)


def take_encoder_settings(p: argparse.ArgumentParser, a: argparse.Namespace, d: Config,
                          argv: Sequence[str] | None) -> tuple[argparse.Namespace, tuple[str, ...]]:
    """The settings of `--encoder` (`config.encoder_settings`: the DINOv3 fork's) over the
    script's, except those given on the command line. Returns the parsed flags with them
    (and `amsgrad`, which has no flag) and what changed, e.g. `('crop_size 392 -> 448',)`."""
    unset = object()  # parse again, every flag pre-set to `unset`: those still unset were not given
    marked = p.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in vars(a)}))
    given = {name for name, value in vars(marked).items() if value is not unset}
    a.amsgrad = d.amsgrad
    changed = []
    for name, value in encoder_settings(a.encoder).items():
        if name not in given and getattr(a, name) != value:
            changed.append(f"{name} {getattr(a, name)} -> {value}")
            setattr(a, name, value)
    return a, tuple(changed)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends in one line `error: <message>` on stderr (no usage
    block), exit status 2 as argparse's, and the `SystemExit` carries the line."""

    def error(self, message: str) -> NoReturn:
        raise checks.stop(f"error: {message}")


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
