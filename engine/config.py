"""Every setting of a run (`Config`), as the six `dinomaly_*.py` scripts fill it in.

A script is one `Config(...)` of visible constants passed to `engine.cli.main`; the
command line overrides any of them (`engine.cli.parse_args`); `config.json` in the run
folder records every field. Defaults are the reference's MVTec multi-class run (spec §4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import dataset
from engine import demo_data

DATASETS = ("mvtec", "visa", "realiad", "mpdd")
MVTEC_CLASSES = tuple(dataset.MVTEC_CLASSES)  # (Config's field `dataset` hides the module there)
ALL_CLASSES = {"mvtec": MVTEC_CLASSES, "visa": tuple(dataset.VISA_CLASSES),
               "realiad": tuple(dataset.REALIAD_CLASSES), "mpdd": tuple(dataset.MPDD_CLASSES)}
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --amp


# The DINOv3 fork's settings (shared/DINOV3.md): a script run with a DINOv3 encoder takes
# them over its own DINOv2 ones, except those given on the command line (engine.cli).
DINOV3_SETTINGS = {
    "image_size": 512,  # resize side
    "crop_size": 448,   # 28 × 28 patches of 16 px, as 392 = 28 × 14 for DINOv2
    "amsgrad": False,   # StableAdamW without AMSGrad
}
DINOV3_LARGE_BATCH = 12  # the fork's batch for ViT-L/16 (memory)


def encoder_settings(encoder: str) -> dict[str, object]:
    """The settings `encoder` brings with it: {} for DINOv2 (the reference's settings)."""
    if not encoder.startswith("dinov3_"):
        return {}
    if encoder == "dinov3_vitl16":
        return {**DINOV3_SETTINGS, "batch_size": DINOV3_LARGE_BATCH}
    return dict(DINOV3_SETTINGS)


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Defaults are the reference MVTec multi-class run (spec §4);
    the scripts set their own values explicitly."""

    # data
    dataset: str = "mvtec"  # 'mvtec', 'visa' and 'mpdd' (MVTec layout) or 'realiad'
    data_path: str = "../mvtec_anomaly_detection"
    classes: tuple[str, ...] = MVTEC_CLASSES
    image_size: int = 448  # resize side
    crop_size: int = 392  # centre crop side (28 × 28 patches of 14 px)
    num_workers: int = 4
    # model
    encoder: str = "dinov2reg_vit_base_14"
    encoder_weights: str = "official"  # 'official', 'random' or a .pth path
    # settings the encoder set over the script's (`encoder_settings`), e.g. 'crop_size 392 -> 448'
    encoder_changed: tuple[str, ...] = ()
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
    amsgrad: bool = True  # StableAdamW's AMSGrad (the reference's; the DINOv3 fork: off)
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
    tf32: bool = False  # CUDA fp32 matmuls on TF32 tensor cores (10-bit mantissa products)
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


def default_device() -> str:
    """CUDA when available, else CPU (the reference hard-codes cuda:1)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
