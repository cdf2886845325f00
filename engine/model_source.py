"""A trained model for the tools (predict.py, export.py): where it comes from — a run folder
(its settings from config.json, its method's recipe named there) or a bare `model.pth` —
and its inference pipeline rebuilt, the evaluation's: a normalised image `B×3×H×W` → its
anomaly map `B×1×R×R` and image score `B`.

    source = resolve_source("saved_results/run", None, None, None, None)
    pipeline = inference_pipeline(source, "cpu")     # the method's pipeline, eval mode
    maps, scores = pipeline(images)                  # B×1×256×256, B
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import models
from engine.config import RunConfig
from engine.errors import CheckError
from engine.thresholds import THRESHOLDS_NAME
from recipes import get_recipe, recipe_names, recipe_of
from recipes.anomaly_map import AnomalyPipeline  # noqa: F401  (Dinomaly's, re-exported)

DEFAULT_METHOD = "dinomaly"  # a bare model.pth, or a run folder written before methods were named


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and the settings it was evaluated with.

    `run_dir` is None for a bare `model.pth`; `class_name` is the class the model (or, for a
    multi-class model, the thresholds) belong to, None when not known."""
    model_path: Path
    encoder: str
    image_size: int
    crop_size: int
    resolution: int
    max_ratio: float
    run_dir: Path | None
    separate: bool
    classes: tuple[str, ...]
    class_name: str | None
    config: RunConfig  # the method's settings (a bare file: its defaults with the flags given)

    @property
    def thresholds_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / THRESHOLDS_NAME


def read_run_config(run_dir: Path) -> dict[str, object]:
    """The run's config.json (CheckpointError when missing or unreadable: not a run folder)."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise models.CheckpointError(f"--checkpoint {run_dir}: a folder, but not a run folder (no config.json); "
                         "pass a run folder of dinomaly_*.py or a model.pth")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise models.CheckpointError(f"--checkpoint {run_dir}: cannot read {path}: {err}") from None
    if not isinstance(config, dict) or not {"encoder", "image_size", "crop_size"} <= config.keys():
        raise models.CheckpointError(f"--checkpoint {run_dir}: {path} is not a run's config.json")
    return config


def resolve_source(checkpoint: str, class_name: str | None, encoder: str | None,
                   image_size: int | None, crop_size: int | None) -> ModelSource:
    """`--checkpoint` as a `ModelSource`: a run folder (settings from its config.json; the
    class-separated `<class>/model.pth` of `class_name`), or a `model.pth` with `encoder` and
    the sizes (defaults 448 / 392, the paper's), its method told by its keys (the method's
    default settings otherwise). A flag that does not fit raises CheckError
    (exit status 2), a missing or unreadable file CheckpointError (1)."""
    path = Path(checkpoint)
    if not path.exists():
        raise models.CheckpointError(f"--checkpoint {checkpoint}: no such file or folder")
    if path.is_file():
        if encoder is None:
            raise CheckError(f"--checkpoint {checkpoint} is a bare model file: pass --encoder "
                             "(and --image_size / --crop_size if not 448 / 392), or the run folder")
        models.find_encoder(encoder)  # EncoderError lists the names
        cfg = get_recipe(bare_file_method(path)).Config(encoder=encoder,
                                                        image_size=image_size or 448,
                                                        crop_size=crop_size or 392)
        return ModelSource(path, encoder, cfg.image_size, cfg.crop_size, cfg.eval_resolution,
                           float(getattr(cfg, "max_ratio", 0.01)), None, False, (), class_name, cfg)
    config = read_run_config(path)
    try:
        run_cfg = get_recipe(str(config.get("method", DEFAULT_METHOD))).Config.from_record(config)
    except (ValueError, TypeError) as err:
        raise models.CheckpointError(f"--checkpoint {path}: its config.json does not fit this "
                                     f"version ({err})") from None
    for flag, given in (("--encoder", encoder), ("--image_size", image_size), ("--crop_size", crop_size)):
        if given is not None and given != config[flag[2:]]:
            raise CheckError(f"{flag} {given}: the run in {path} has {config[flag[2:]]}; "
                             f"leave {flag} out for a run folder")
    classes = tuple(config.get("classes", ()))
    separate = bool(config.get("separate", False))
    if class_name is not None and classes and class_name not in classes:
        raise CheckError(f"--class {class_name}: not a class of the run in {path}; "
                         f"its classes: {', '.join(classes)}")
    if separate and class_name is None:
        raise CheckError(f"--checkpoint {path} is a class-separated run (one model per class): "
                         f"pass --class NAME, one of {', '.join(classes)}")
    model_path = path / class_name / "model.pth" if separate else path / "model.pth"
    if config.get("eval_only"):  # an --eval_only run evaluated a model kept elsewhere
        model_path = evaluated_checkpoint(path, config, class_name)
    if not model_path.is_file():
        raise models.CheckpointError(f"--checkpoint {path}: no model at {model_path} (the run saves it "
                         "at its first evaluation)")
    return ModelSource(model_path, str(config["encoder"]), int(config["image_size"]),
                       int(config["crop_size"]), int(config.get("eval_resolution", 256)),
                       float(config.get("max_ratio", 0.01)), path, separate, classes, class_name,
                       run_cfg)


def bare_file_method(path: Path) -> str:
    """The method of a bare model file, told by its keys (`models.checkpoint.checkpoint_method`:
    the model it belongs to, matched to the recipe of that title); DEFAULT_METHOD when
    they say nothing (loading it then names what does not fit). An unreadable file raises
    CheckpointError (through EncoderError) naming it."""
    state_dict = models.checkpoint.model_state_dict(
        models.vit_encoder.load_file(path, "checkpoint"), path)
    found = models.checkpoint.checkpoint_method(state_dict)
    titles = {get_recipe(name).title: name for name in reversed(recipe_names())}
    return titles.get(found[0], DEFAULT_METHOD) if found else DEFAULT_METHOD


def evaluated_checkpoint(run_dir: Path, config: dict[str, object], class_name: str | None) -> Path:
    """The model an `--eval_only` run evaluated: as its thresholds.json records it (an
    absolute path), else its config.json's `checkpoint` (`<class>/model.pth` in a folder)."""
    try:
        data = json.loads((run_dir / THRESHOLDS_NAME).read_text())
        entries = data["classes"]
        entry = entries.get(class_name) if class_name else data.get("pooled") or next(iter(entries.values()))
        return Path(entry["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        path = Path(str(config.get("checkpoint")))
        return path / class_name / "model.pth" if path.is_dir() and class_name else path


def load_model(source: ModelSource, device: torch.device | str) -> nn.Module:
    """The model of `source` in eval mode on `device`, built by its method's recipe. A full
    state_dict (ours, the reference's) brings its encoder; one with only the trained part
    needs the official encoder weights (downloaded once, as for training). A file that is
    not a checkpoint raises CheckpointError before anything is built or downloaded."""
    state_dict = models.checkpoint.model_state_dict(
        models.vit_encoder.load_file(source.model_path, "checkpoint"), source.model_path)
    weights = "random" if any(k.startswith("encoder.") for k in state_dict) else "official"
    del state_dict  # load_checkpoint reads it again, strictly
    model = recipe_of(source.config).build_model(source.config, device, weights)
    models.load_checkpoint(model, source.model_path)
    return model.eval()


def inference_pipeline(source: ModelSource, device: torch.device | str) -> nn.Module:
    """The method's pipeline around the model of `source` (images → maps, scores), in eval
    mode on `device`: what the evaluation computed, what predict runs and export exports."""
    pipeline = recipe_of(source.config).pipeline(load_model(source, device), source.config)
    return pipeline.to(device).eval()
