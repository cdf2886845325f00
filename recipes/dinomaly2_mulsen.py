"""Dinomaly2 on RGB + infrared (the preview code's `dinomaly_mulsen.py`): MulSen-AD, each
sample photographed in RGB and in infrared (its point cloud's label counts too).

What differs from `recipes.dinomaly2`, as the preview's MulSen script does it:
- training: batches of 8 `(rgb, infrared)` pairs; the model sees the 16 images as one batch,
  the 8 RGB first (`train_images`); one model serves both modalities;
- the model: ViT-L (`dinov2reg_vit_large_14`, layers 4, 6, …, 18), dropout 0.2, 20 000
  iterations;
- evaluation: each modality through the pipeline on its own, its own maps and image score
  (top 1 %); the sample's score is the sum of the two, its label anomalous where any of the
  three modalities' labels is (point cloud included); reported: the sample level
  (I-AUROC/AP/F1), then RGB's and infrared's pixel metrics, each over its own images.
The preview's MulSen script saves no model; here `model.pth` is saved as everywhere.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from engine.config import setting
from engine.eval_spec import EvalSpec, modality_metric_names
from engine.objects import ObjectScore, ObjectSpec, unpack_modalities
from recipes.dinomaly2 import Config as Dinomaly2Config, Dinomaly2
from recipes.registry import register_recipe

MODALITIES = ("RGB", "Infra")  # the preview's names in its metric lines


@dataclasses.dataclass(frozen=True)
class Config(Dinomaly2Config):
    """Dinomaly2's settings. Defaults: the preview's MulSen script."""

    METHOD = "dinomaly2_mulsen"

    encoder: str = setting("dinov2reg_vit_large_14", "the frozen encoder (the preview's MulSen "
                                                     "script: ViT-L)", metavar="NAME")
    dropout: float = setting(0.2, "the bottleneck's dropout, after each of its 3 layers (the "
                                  "preview's MulSen script: 0.2)",
                             check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    total_iters: int = setting(20_000, "training iterations (the preview's MulSen script: 20 000)")
    batch_size: int = setting(8, "training batch size, in (RGB, infrared) pairs: the model sees "
                                 "twice as many images (the preview: 8)")
    save_name: str = setting("dinomaly2_mulsen", "results folder name (with --eval_only: "
                                                 "<name>_eval unless given)")


@register_recipe
class Dinomaly2MulSen(Dinomaly2):
    name = "dinomaly2_mulsen"
    title = "Dinomaly2, RGB + infrared"
    Config = Config
    metrics = modality_metric_names(MODALITIES)

    def train_images(self, batch: Sequence, device: torch.device) -> torch.Tensor:
        """`((rgb B×3×H×W, infrared B×3×H×W), label)` → `2B×3×H×W`, RGB first."""
        return torch.cat([m.to(device, non_blocking=True) for m in batch[0]], dim=0)

    def eval_spec(self, cfg: Config) -> EvalSpec:
        objects = ObjectSpec(ObjectScore("sum"), unpack_modalities, forward="per_view")
        return EvalSpec(self.metrics, objects, "exact", MODALITIES, aupro_thresholds="numpy2")

    def paper_means(self, cfg: Config) -> tuple[float | None, ...] | None:
        return None  # the paper's MulSen-AD numbers are not in the material available
