"""Dinomaly (Guo et al., CVPR 2025, "The Less Is More Philosophy in Multi-Class Unsupervised
Anomaly Detection"): everything that makes the method, in one place.

- model: frozen DINOv2-R encoder → noisy bottleneck (dropout) → 8 linear-attention decoder
  blocks, compared in two groups of four layers (`models.build_dinomaly`, §3);
- loss: global cosine with hard mining, its share `p` ramped 0 → 0.9 over the first 1000
  iterations, the gradient of the easy points damped by 0.1 (§3.4, `HardMiningCosineLoss`);
- optimizer: StableAdamW (AMSGrad, eps 1e-10, decoupled weight decay 1e-4) over bottleneck
  and decoder, gradient clipping at a global norm of 0.1;
- lr schedule: linear warm-up over 100 iterations, cosine decay 2e-3 → 2e-4;
- anomaly map and score: `recipes.anomaly_map` (cosine maps, blur, top-1 % mean);
- evaluation: image- and pixel-level AUROC, AP, F1-max and AUPRO;
- the paper's numbers (Table 1, multi-class, ViT-B, 10 000 iterations) shown beside a run's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

import models
import utils
from engine.config import RunConfig, setting
from engine.stable_adamw import StableAdamW
from recipes.anomaly_map import TopRatioScore
from recipes.base import Optimization, Recipe, Reference, setting_differences
from recipes.registry import register_recipe


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """Dinomaly's settings over the run's. Defaults: the paper's MVTec AD multi-class run."""

    METHOD = "dinomaly"

    # model
    dropout: float = setting(0.2, "noisy-bottleneck dropout; 0 turns every dropout off",
                             check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    attn_eps: float = setting(0.0, "added to the linear attention's denominator (0: the "
                                   "reference; the official README now suggests 1e-8 against "
                                   "NaN losses)")
    # loss: hard mining (paper §3.4)
    hm_p_max: float = setting(0.9, "hard mining: the share of easy points whose gradient is "
                                   "damped, reached linearly …")
    hm_ramp_iters: int = setting(1000, "… over this many iterations")
    hm_factor: float = setting(0.1, "gradient multiplier of the easy points")
    # optimisation
    lr: float = setting(2e-3, "peak learning rate, after warm-up")
    final_lr: float = setting(2e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = setting(100, "linear warm-up from 0 over this many iterations")
    weight_decay: float = setting(1e-4, "StableAdamW's decoupled weight decay")
    betas: tuple[float, float] = setting((0.9, 0.999), "StableAdamW's betas", metavar="B")
    eps: float = setting(1e-10, "StableAdamW's eps")
    amsgrad: bool = setting(True, "StableAdamW's AMSGrad (the reference's; the DINOv3 fork: off)")
    clip_grad: float = setting(0.1, "global gradient-norm clip")
    # anomaly score
    max_ratio: float = setting(0.01, "image score: the mean of this share of the map's highest "
                                     "values (0: the maximum)")


class HardMiningCosineLoss:
    """`loss(outputs, iteration)`: the global cosine loss with hard mining
    (`utils.global_cosine_hm_percent`) on `outputs = (encoder groups, decoder groups)`, the
    features in fp32 (a no-op without --amp). The share `p` of easy points ramps linearly
    from 0 to `p_max` over `ramp_iters` iterations; their gradient is multiplied by `factor`.
    `across_ranks`: the threshold is taken over the whole global batch."""

    def __init__(self, p_max: float = 0.9, ramp_iters: int = 1000, factor: float = 0.1,
                 across_ranks: bool = False) -> None:
        self.p_max, self.ramp_iters, self.factor = p_max, ramp_iters, factor
        self.across_ranks = across_ranks

    def share(self, iteration: int) -> float:
        """p at `iteration` (0-based): `min(p_max · iteration / ramp_iters, p_max)`."""
        return min(self.p_max * iteration / self.ramp_iters, self.p_max)

    def __call__(self, outputs: tuple[list[torch.Tensor], list[torch.Tensor]],
                 iteration: int) -> torch.Tensor:
        en, de = outputs
        en, de = [e.float() for e in en], [d.float() for d in de]
        return utils.global_cosine_hm_percent(en, de, p=self.share(iteration), factor=self.factor,
                                              across_ranks=self.across_ranks)


# The paper's multi-class means (Table 1: ViT-B, 10 000 iterations; percent) and its setting
PAPER_MEANS: dict[str, tuple[float, ...]] = {
    "mvtec": (99.6, 99.8, 99.0, 98.4, 69.3, 69.2, 94.8),
    "visa": (98.7, 98.9, 96.2, 98.7, 53.2, 55.7, 94.5),
    "realiad": (89.3, 86.8, 80.2, 98.8, 42.8, 47.1, 93.9),
}
PAPER_SETTING: dict[str, object] = {"encoder": "dinov2reg_vit_base_14", "encoder_weights": "official",
                                    "total_iters": 10_000, "batch_size": 16, "image_size": 448,
                                    "crop_size": 392}
PAPER_NOTE = "The paper's row: Dinomaly, multi-class, ViT-B, 10 000 iterations (its Table 1)."
# The DINOv3 fork's MVTec AD multi-class means (10k iterations, 512 -> 448 px, StableAdamW
# without AMSGrad, batch 16, 12 for ViT-L), shown instead of the paper's for its encoders
DINOV3_FORK_MEANS: dict[str, tuple[float, ...]] = {
    "dinov3_vitb16": (99.51, 99.77, 98.96, 98.52, 73.38, 70.76, 94.91),
    "dinov3_vitl16": (99.62, 99.85, 99.18, 98.74, 73.70, 71.52, 95.55),
}


def paper_means(dataset: str, separate: bool) -> tuple[float, ...] | None:
    """The paper's mean numbers for a multi-class run on `dataset`, else None."""
    return None if separate else PAPER_MEANS.get(dataset)


def paper_differences(config: dict[str, object], all_classes: Sequence[str]) -> list[str]:
    """The settings of `config` in which it differs from the paper's."""
    return setting_differences(config, all_classes, PAPER_SETTING)


@register_recipe
class Dinomaly(TopRatioScore, Recipe):
    """Dinomaly (CVPR 2025): the module docstring says what each part is."""

    name = "dinomaly"
    title = "Dinomaly"
    Config = Config

    def build_model(self, cfg: Config, device: torch.device | str,
                    weights: str | None = None) -> nn.Module:
        return models.build_dinomaly(cfg.encoder, cfg.encoder_weights if weights is None else weights,
                                     cfg.dropout, device=device, fused_attn=cfg.fused_attn,
                                     attn_eps=cfg.attn_eps)

    def loss(self, cfg: Config, across_ranks: bool = False) -> HardMiningCosineLoss:
        return HardMiningCosineLoss(cfg.hm_p_max, cfg.hm_ramp_iters, cfg.hm_factor, across_ranks)

    def optimization(self, model: nn.Module, cfg: Config) -> Optimization:
        trainable = [p for p in model.parameters() if p.requires_grad]  # bottleneck + decoder
        optimizer = StableAdamW([{"params": trainable}], lr=cfg.lr, betas=cfg.betas,
                                weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad, eps=cfg.eps)
        # sets the lr of iteration 0 now, and of iteration i+1 at each step()
        scheduler = utils.WarmCosineScheduler(optimizer, base_value=cfg.lr, final_value=cfg.final_lr,
                                              total_iters=cfg.total_iters,
                                              warmup_iters=cfg.warmup_iters)
        return Optimization(optimizer, scheduler, trainable, cfg.clip_grad)

    def reference(self, cfg: Config, all_classes: Sequence[str]) -> Reference | None:
        """The DINOv3 fork's means for its ViT-B/L on MVTec AD multi-class, else the paper's
        for the three multi-class settings, else None."""
        settings = dataclasses.asdict(cfg)
        if cfg.eval_only:  # the checkpoint's own training is not known here
            settings["total_iters"] = PAPER_SETTING["total_iters"]
        if cfg.encoder in DINOV3_FORK_MEANS and cfg.dataset == "mvtec" and not cfg.separate:
            fork = {**PAPER_SETTING, "encoder": cfg.encoder,
                    **{k: v for k, v in models.encoder_settings(cfg.encoder).items()
                       if k in PAPER_SETTING}}
            note = (f"The DINOv3 fork's row: Dinomaly with {cfg.encoder}, MVTec AD, multi-class, "
                    f"10 000 iterations, {fork['image_size']} -> {fork['crop_size']} px (as "
                    "reported by the fork the official Dinomaly README points to).")
            return Reference("DINOv3 fork (mean)", DINOV3_FORK_MEANS[cfg.encoder], note,
                             setting_differences(settings, all_classes, fork, whose="fork"))
        paper = paper_means(cfg.dataset, cfg.separate)
        if paper is None:
            return None
        return Reference("paper (mean)", paper, PAPER_NOTE, paper_differences(settings, all_classes))
