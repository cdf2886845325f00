"""The settings every run has (`RunConfig`), whatever the method: data, encoder, schedule
length, device, speed options, evaluation, outputs and robustness.

A method's recipe adds its own settings by subclassing it (`recipes.dinomaly.Config`), and a
script is one such `Config(...)` of visible constants passed to `engine.cli.main`. Every
field is a setting: the command line has a flag of the same name for each (`engine.cli`,
help text from the field's `setting(...)`), and `config.json` in the run folder records
them all. Defaults are Dinomaly's MVTec AD multi-class run.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from engine import demo_data

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --amp


def setting(default: object, help: str, **flag: object) -> dataclasses.Field:
    """A Config field with its command-line help; `flag` adds argparse options (`choices`,
    `metavar`, `aliases` = extra flag names that set this field to a value) and `check`
    = (test of the value, what it must be), checked with the command line."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run that no method owns. A recipe's `Config` adds its own."""

    METHOD: typing.ClassVar[str] = ""  # the recipe that reads this config (its `name`)

    # data
    dataset: str = setting("mvtec", "the dataset's layout and class list (a registered dataset; "
                                    "auto: the one named in --data_path, else its folders)",
                           metavar="NAME")
    data_path: str = setting("../mvtec_anomaly_detection", "dataset root")
    classes: tuple[str, ...] = setting(
        (), "comma-separated subset, or 'auto' (every class found under --data_path); "
            "empty: the dataset's whole list")
    image_size: int = setting(448, "images are resized to this side")
    crop_size: int = setting(392, "then centre-cropped to this side (a multiple of the "
                                  "encoder's patch, 14 or 16)")
    num_workers: int = setting(4, "data-loading processes")
    # model
    encoder: str = setting("dinov2reg_vit_base_14", "the frozen encoder; a DINOv3 encoder "
                           "brings the DINOv3 fork's settings (resize 512, crop 448, no AMSGrad, "
                           "batch 12 for ViT-L) unless those flags are given", metavar="NAME")
    encoder_weights: str = setting("official", "'official' (DINOv2: downloaded once; DINOv3: "
                                   "from the cache, see README), 'random', or a weights file "
                                   "(the official format; DINOv3: also timm's)")
    # training
    separate: bool = setting(False, "one model per class (class-separated) instead of one for "
                                    "all (multi-class)")
    total_iters: int = setting(10_000, "training iterations (per class when class-separated)")
    batch_size: int = setting(16, "training (and evaluation) batch size")
    eval_batch_size: int = setting(0, "evaluation batch size, in test items (objects for a "
                                      "method evaluated on objects); 0: --batch_size",
                                   check=(lambda v: v >= 0, "0 or more"))
    seed: int = setting(1, "seed of torch, numpy and random")
    cudnn_benchmark: bool = setting(False, "cuDNN benchmark mode (off: deterministic, the "
                                           "reference's default)")
    device: str = setting("", "e.g. cuda, cuda:1, cpu (default: cuda when available, else cpu)")
    # speed; the defaults compute as the reference
    fused_attn: bool = setting(True, "encoder attention by F.scaled_dot_product_attention; "
                                     "--no-fused_attn (or --explicit_attn): the reference's "
                                     "explicit softmax(q k^T) v, equal to round-off",
                               aliases={"--explicit_attn": False})
    amp: str = setting("none", "mixed precision: the model's forward under autocast in bf16 "
                               "or fp16 (fp16 with loss scaling); the loss, gradients and "
                               "optimizer stay fp32. 'none' computes as the reference",
                       choices=tuple(AMP_DTYPES))
    cache_images: bool = setting(False, "decode and resize every training image once and keep "
                                        "it in RAM as uint8 (the tensors are exactly the "
                                        "uncached ones): 3 x image_size^2 bytes per image; one "
                                        "copy per machine under torchrun (shared memory)")
    compile: bool = setting(False, "torch.compile every transformer block (the first iterations "
                                   "and evaluation take a minute or more longer; dropout draws "
                                   "the eager masks: rounding differs only)")
    tf32: bool = setting(False, "CUDA: float32 matrix products on TF32 tensor cores: faster, not "
                                "bit-identical to the reference's full fp32")
    # evaluation and logging
    eval_every: int = setting(5_000, "evaluate and save every N iterations, and after the last")
    eval_resolution: int = setting(256, "anomaly maps and masks are resized to this side for "
                                        "the metrics")
    metrics_on_device: bool = setting(False, "compute the exact pixel metrics with torch on --device "
                                             "(a GPU: a Real-IAD-sized test set without minutes "
                                             "of host work); equal to the host's to float round-off")
    gt_threshold: float = setting(0.0, "a mask pixel is anomalous if above this, on the mask's "
                                       "0-1 scale (the reference: 0; 0.5 is common)")
    log_every: int = setting(100, "log the mean loss every N iterations")
    save_dir: str = setting("./saved_results", "results go to <save_dir>/<save_name>/")
    save_name: str = setting("dinomaly_mvtec_uni", "results folder name (with --eval_only: "
                                                   "<name>_eval unless given)")
    checkpoint: str | None = setting(None, "with --eval_only: a model.pth (ours or the "
                                           "reference's); class-separated: a folder holding "
                                           "<class>/model.pth, or one file for every class")
    eval_only: bool = setting(False, "evaluate --checkpoint on every class, no training")
    # robustness and outputs; none changes what is computed
    save_maps: bool = setting(False, "write a heatmap per test image and a score histogram per "
                                     "class to <run>/maps/<class>/, at the final evaluation of "
                                     "each model")
    resume: bool = setting(False, "continue the stopped run in <save_dir>/<save_name> from its "
                                  "last checkpoint.pth, exactly as if it had not stopped")
    checkpoint_every: int = setting(0, "also write checkpoint.pth every N iterations (0: only at "
                                       "evaluations)")
    spike_factor: float = setting(3.0, "log a loss spike when the loss exceeds this many times "
                                       "the running median (0: off)")
    spike_window: int = setting(100, "the running median is over this many losses; no spike "
                                     "check before")
    spike_restart: bool = setting(False, "after a loss spike or a nan loss, go back to the last "
                                         "checkpoint and continue with seed + restart count")
    max_restarts: int = setting(3, "spike restarts per model, at most")
    skip_image_check: bool = setting(False, "do not decode every image and mask file before "
                                            "training (a bad file then stops the run when "
                                            "reached)")
    demo: bool = setting(False, "the demo: builds demo_data/ (3 textures with synthetic "
                                "defects) once, trains ViT-S for a few minutes on a CPU, prints "
                                "the table and writes heatmaps")

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> RunConfig:
        """The config a run folder's config.json records (keys of other settings ignored,
        settings it lacks at their defaults; lists back to tuples)."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in record:
                value = record[f.name]
                if isinstance(value, list) and str(hints[f.name]).startswith("tuple"):
                    value = tuple(value)
                values[f.name] = value
        return cls(**values)


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


def default_device() -> str:
    """CUDA when available, else CPU (the reference hard-codes cuda:1)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
