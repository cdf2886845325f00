"""The run's pre-flight checks: everything that can be known wrong before anything is
written or downloaded — the results folder, the data (folders, image files, mask sizes,
the batch size against each training set), the encoder weights, `--eval_only`
checkpoints against `--encoder`, and `--resume` against the run it continues.

A problem stops the run with one line naming the path or flag (an `engine.errors` type).
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch

import dataset
import models
from engine import checks, demo_data, training_state
from engine.config import RunConfig
from engine.data import build_datasets
from engine.errors import RunError
from engine.jobs import eval_checkpoint_paths
from engine.run_folder import free_save_name
from recipes import recipe_of


def preflight(cfg: RunConfig) -> tuple[RunConfig, list[str], str | None]:
    """Every check before the run writes anything, then the encoder weights made available:
    the config to run (the demo may fall back to a random encoder and a free folder name),
    the datasets' notes for the log and, for a random encoder, why."""
    check_results_folder(cfg)
    if cfg.demo:
        try:  # built once, at --data_path; later runs reuse it
            demo_data.build_demo_dataset(cfg.data_path, classes=cfg.classes)
        except (demo_data.DemoDataError, ValueError) as err:
            raise RunError(f"--demo: {err}") from None
    notes = check_inputs(cfg)
    cfg, random_reason = fetch_encoder_weights(cfg)
    if cfg.demo and not cfg.resume:
        cfg = dataclasses.replace(cfg, save_name=free_save_name(cfg.save_dir, cfg.save_name))
    if cfg.resume:
        check_resume(cfg, Path(cfg.save_dir) / cfg.save_name)
    return cfg, notes, random_reason


def check_resume(cfg: RunConfig, run_dir: Path) -> None:
    """`--resume`: the folder holds a run (config.json) whose settings that matter equal
    ours (training_state.RESUME_FREE lists those that may change; a setting the run's
    config.json does not record, added since, counts at its default)."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise RunError(f"--resume: there is no run to continue in {run_dir} (no config.json); "
                       "check --save_dir and --save_name, or start the run without --resume.")
    try:
        saved = json.loads(config_path.read_text())
        saved = dataclasses.asdict(type(cfg).from_record(saved))
    except (OSError, ValueError, TypeError) as err:
        raise RunError(f"--resume: cannot read {config_path}: {err}") from None
    differences = training_state.config_differences(saved, dataclasses.asdict(cfg))
    if differences:
        raise RunError(f"--resume: these settings differ from the run in {run_dir} "
                       f"({config_path}): {'; '.join(differences)}. Resume with the run's "
                       "settings, or start a new run under another --save_name.")


def check_results_folder(cfg: RunConfig) -> None:
    """`--save_dir` is (or can become) a folder this process can write in, and
    `<save_dir>/<save_name>` is not a file: checked before anything is written."""
    run_dir = Path(cfg.save_dir) / cfg.save_name
    if run_dir.exists() and not run_dir.is_dir():
        raise checks.CheckError(f"--save_name {cfg.save_name}: {run_dir} is a file, not a "
                                "folder; choose another --save_name")
    checks.check_writable_folder(run_dir if run_dir.is_dir() else Path(cfg.save_dir), "--save_dir")


def check_inputs(cfg: RunConfig) -> list[str]:
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
                raise RunError(f"--batch_size {cfg.batch_size} is larger than the training "
                               f"set{of} ({len(part)} images): no full batch to train on; use "
                               "a smaller --batch_size.")
    if not cfg.skip_image_check:
        files = [] if cfg.eval_only else dataset.image_paths(train_set)
        for test_set in test_sets.values():
            files += dataset.image_paths(test_set)
        dataset.check_images(files)
        for test_set in test_sets.values():
            dataset.check_mask_sizes(test_set)
    if cfg.eval_only:
        check_checkpoints_fit(cfg)
    return [*getattr(train_set, "notes", []),
            *(note for test_set in test_sets.values() for note in test_set.notes)]


def fetch_encoder_weights(cfg: RunConfig) -> tuple[RunConfig, str | None]:
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
                                      "pass a .pth in the official format (DINOv3: or a "
                                      "timm-format file), 'official' or 'random'")
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


def eval_needs_encoder_weights(cfg: RunConfig) -> bool:
    """Whether `--eval_only` needs the encoder's weights: not when every checkpoint is a full
    state_dict, which brings its own encoder."""
    return not all(checkpoint_has_encoder(p) for p in set(eval_checkpoint_paths(cfg).values()))


def check_checkpoints_fit(cfg: RunConfig) -> None:
    """`--eval_only`: every checkpoint fits the method's model with `--encoder` (keys and
    shapes), checked on a weightless ("meta") model before anything is written or
    downloaded."""
    with warnings.catch_warnings():  # loading into meta tensors warns that it copies nothing
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = recipe_of(cfg).build_model(cfg, "meta", "random")
        for path in sorted(set(eval_checkpoint_paths(cfg).values())):
            try:
                models.load_checkpoint(model, path)
            except models.checkpoint.MethodMismatch:
                raise  # its line says which model and script it is for
            except models.CheckpointMismatch as err:
                raise models.CheckpointError(f"{err} This run builds --encoder {cfg.encoder}: "
                                             "pass the encoder the checkpoint was trained "
                                             "with.") from None


def checkpoint_has_encoder(path: Path) -> bool:
    """Whether a checkpoint file holds the encoder weights too (a full state_dict)."""
    try:
        state_dict = models.checkpoint.model_state_dict(
            models.vit_encoder.load_file(path, "checkpoint"), path)
    except models.EncoderError:
        return False  # load_checkpoint reports it properly
    return any(k.startswith("encoder.") for k in state_dict)
