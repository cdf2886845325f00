"""Dinomaly2 on RGB + depth (the preview code's `dinomaly_mvtec3d.py`): MVTec 3D-AD, each
image's depth (from its xyz points, `prepare_data/prepare_mvtec3d.py`) rendered as a
3-channel heat map beside its RGB.

What differs from `recipes.dinomaly2`, as the preview's 3D script does it:
- the input: `B × 6 × H × W`, RGB then depth (`dataset.MVTec3DDataset`, `cat_3D`);
- the model: `models.DinomalyRGBD` (`models.build_dinomaly2_rgbd`): one frozen encoder for
  both halves, its kept layers averaged `rgb_ratio · rgb + (1 − rgb_ratio) · depth`, the
  targets `patches − cls` layer normalised (the recentering of the averaged features);
- optimizer: two parameter groups, the bottleneck and the decoder, both at 2e-3;
- 392 px images (the preview's README command: 448 resized, 392 cropped);
- the paper's MVTec 3D-AD image AUROC shown beside a run's.

The preview's 3D script parses `--cr` and `--ll` and ignores them (its targets are always
recentred, its loss always hard-mining): here both act (`--cr 0`: the averaged patch tokens,
not normalised; `--ll 0`: the plain global cosine loss). Their defaults are its behaviour.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

import models
from dataset.mvtec3d import read_rgbd
from engine.config import setting
from recipes.base import Reference
from recipes.dinomaly2 import PAPER_NOTE, Config as Dinomaly2Config, Dinomaly2, paper_row
from recipes.dinomaly2 import lr_groups_setting
from recipes.registry import register_recipe


@dataclasses.dataclass(frozen=True)
class Config(Dinomaly2Config):
    """Dinomaly2's settings and the RGB share. Defaults: the preview's 3D script."""

    METHOD = "dinomaly2_mvtec3d"

    image_size: int = setting(392, "images (RGB and depth) are resized to this side (the preview's "
                                   "3D script: 392; its README command: 448)")
    crop_size: int = setting(392, "then centre-cropped to this side (the preview: 392)")
    lr_groups: int = lr_groups_setting(2)  # the preview's script: bottleneck, decoder
    rgb_ratio: float = setting(0.5, "the RGB share of the averaged encoder layers (depth: the rest)",
                               check=(lambda v: 0 <= v <= 1, "in [0, 1]"))
    save_name: str = setting("dinomaly2_mvtec3d", "results folder name (with --eval_only: "
                                                  "<name>_eval unless given)")


PAPER_MVTEC3D_I_AUROC = 97.4  # the preview's README figure (multi-class, ViT-B)


@register_recipe
class Dinomaly2MVTec3D(Dinomaly2):
    name = "dinomaly2_mvtec3d"
    title = "Dinomaly2, RGB + depth"
    Config = Config
    input_channels = 6  # RGB, then the depth heat map

    def build_model(self, cfg: Config, device: torch.device | str,
                    weights: str | None = None) -> nn.Module:
        recenter = bool(cfg.cr)
        return models.build_dinomaly2_rgbd(
            cfg.encoder, cfg.encoder_weights if weights is None else weights, cfg.dropout,
            linear_attention=bool(cfg.la), loose_groups=cfg.lc, rgb_ratio=cfg.rgb_ratio,
            add_class_token_weight=-1.0 if recenter else 0.0, norm_encoder_token=recenter,
            device=device, fused_attn=cfg.fused_attn, attn_eps=cfg.attn_eps)

    def read_image(self, path: str | os.PathLike, transform: Callable) -> torch.Tensor:
        """predict.py: an RGB file of the layout and its depth (`<sub>/z/<name>.tiff`) → 6×H×W."""
        return read_rgbd(path, transform)

    def paper_means(self, cfg: Config) -> tuple[float | None, ...] | None:
        return None if cfg.separate else paper_row(PAPER_MVTEC3D_I_AUROC)

    def reference(self, cfg: Config, all_classes: Sequence[str]) -> Reference | None:
        ref = super().reference(cfg, all_classes)
        return None if ref is None else ref._replace(note=PAPER_NOTE.format(extra=" (MVTec 3D-AD)"))
