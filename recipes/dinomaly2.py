"""Dinomaly2 (Guo et al., "One Dinomaly2 Detect Them All: A Unified Framework for
Full-Spectrum Unsupervised Anomaly Detection", arXiv 2510.17611), the 2D method as the
authors' preview code trains it (its `dinomaly_2D.py`): everything that makes it, in one place.

Over Dinomaly (`recipes.dinomaly`):
- model: the same frozen encoder and 8 linear-attention decoder blocks; a three-layer
  bottleneck `C → 256 → 4C → C` with dropout after each layer (0.4), no dropout on its
  input; the encoder targets recentred on the image's context (each fusion group's patch
  tokens minus its cls token, layer normalised): `models.build_dinomaly2`;
- loss: the same global cosine loss with hard mining (`--ll 1`), or without it (`--ll 0`,
  the preview's `global_cosine`: a mean over the groups);
- optimizer: StableAdamW without AMSGrad, three parameter groups (the bottleneck's first
  layer at 2e-4, the rest at 2e-3), a step with a non-finite gradient abandoned
  (`utils.dinomaly2_optimizer`); gradient clipping at 0.1 as before;
- lr schedule: warm-up over 100 iterations, then constant (`utils.WarmupCosineScheduler`
  with `final_ratio` 1: the preview's `--lr_decay_ratio`);
- anomaly map and score: Dinomaly's (`recipes.anomaly_map`);
- the paper's numbers (only the image AUROC is known) shown beside a run's.

The switches keep the preview's names and values: `--la` (linear attention), `--lc` (the
fusion groups, `models.LOOSE_GROUPS`), `--ll`, `--ll_ratio`, `--ll_factor` (the loss),
`--cr` (context-aware recentering), `--lr_decay_ratio`, `--dropout`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

import models
import utils
from engine.config import RunConfig, setting
from engine.eval_spec import EvalSpec
from recipes.anomaly_map import TopRatioScore
from recipes.base import Optimization, Recipe, Reference, setting_differences
from recipes.dinomaly import HardMiningCosineLoss
from recipes.registry import register_recipe

ALLOWED_LC = ", ".join(str(k) for k in models.LOOSE_GROUPS)


def switch(default: int, help: str) -> dataclasses.Field:
    """A 0/1 switch of the preview's command line (`--la 1`, `--cr 0`)."""
    return setting(default, help, check=(lambda v: v in (0, 1), "0 or 1"))


def lr_groups_setting(default: int) -> dataclasses.Field:
    """StableAdamW's parameter groups: 3 (the preview's 2D, few-shot and MulSen scripts) or 2
    (its multi-view and 3D scripts)."""
    return setting(default, "StableAdamW's parameter groups: 3, the bottleneck's first layer at "
                            "--first_layer_lr, its last layers and the decoder at --lr (the preview's "
                            "2D, few-shot and MulSen scripts); 2, the bottleneck and the decoder at "
                            "--lr (its multi-view and 3D scripts)",
                   check=(lambda v: v in (2, 3), "2 or 3"))


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    """Dinomaly2's settings over the run's. Defaults: the preview code's 2D script, except
    where the paper says otherwise (the encoder: the paper's reference model is ViT-B, the
    preview's 2D script defaults to ViT-S)."""

    METHOD = "dinomaly2"

    # the encoder: the paper's ViT-B (the preview's 2D and few-shot scripts: ViT-S)
    encoder: str = setting("dinov2reg_vit_base_14", "the frozen encoder (the paper's reference: "
                           "ViT-B; the preview's 2D script: dinov2reg_vit_small_14)",
                           metavar="NAME")
    total_iters: int = setting(40_000, "training iterations (the preview's 2D script: 40 000; "
                                       "the paper's are not known)")
    save_name: str = setting("dinomaly2_2d", "results folder name (with --eval_only: "
                                             "<name>_eval unless given)")
    # model (the preview's switches; the paper gives no other values)
    dropout: float = setting(0.4, "the bottleneck's dropout, after each of its 3 layers "
                                  "(the preview: 0.4; 0.2 in its MulSen script)",
                             check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    la: int = switch(1, "the decoder's attention: 1 linear (eps --attn_eps), 0 softmax "
                        "(with DropKey p = 0, which still draws random numbers)")
    lc: int = setting(2, "the fusion groups (encoder layers ↔ reversed decoder blocks): 0 layer "
                         "to layer, 1 one group, 2 two groups of 4, 3, 4 groups of 3/3/2 and 2, "
                         "11, 12, 14 sparse single layers", metavar="N",
                      check=(lambda v: v in models.LOOSE_GROUPS, f"one of {ALLOWED_LC}"))
    cr: int = switch(1, "context-aware recentering of the encoder targets (1) or raw patch "
                        "tokens, as Dinomaly (0)")
    attn_eps: float = setting(1e-8, "added to the linear attention's denominator (every preview "
                                    "script: 1e-8)", check=(lambda v: v >= 0, "0 or more"))
    # loss
    ll: int = switch(1, "the loss: 1 global cosine with hard mining, 0 plain global cosine "
                        "(mean over the groups)")
    ll_ratio: float = setting(0.9, "hard mining: the share of easy points whose gradient is "
                                   "damped, reached linearly …",
                              check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    ll_ramp_iters: int = setting(1000, "… over this many iterations (the preview: fixed at 1000)",
                                 check=(lambda v: v > 0, "positive"))
    ll_factor: float = setting(0.1, "gradient multiplier of the easy points",
                               check=(lambda v: 0 <= v <= 1, "in [0, 1]"))
    # optimisation: StableAdamW, three parameter groups
    lr: float = setting(2e-3, "learning rate after warm-up, the bottleneck's last layers and "
                              "the decoder", check=(lambda v: v > 0, "positive"))
    first_layer_lr: float = setting(2e-4, "learning rate of the bottleneck's first layer (the "
                                          "preview's README: smaller, for stability)",
                                    check=(lambda v: v > 0, "positive"))
    lr_groups: int = lr_groups_setting(3)
    lr_decay_ratio: float = setting(1.0, "after warm-up, cosine decay to lr × this (1: constant "
                                         "lr, the preview's default)",
                                    check=(lambda v: v >= 0, "0 or more"))
    warmup_iters: int = setting(100, "linear warm-up from 0 over this many iterations")
    weight_decay: float = setting(1e-4, "StableAdamW's decoupled weight decay")
    betas: tuple[float, float] = setting((0.9, 0.999), "StableAdamW's betas", metavar="B")
    eps: float = setting(1e-10, "StableAdamW's eps")
    amsgrad: bool = setting(False, "StableAdamW's AMSGrad (Dinomaly2: off; Dinomaly: on)")
    clip_grad: float = setting(0.1, "global gradient-norm clip, over the bottleneck and the "
                                    "decoder", check=(lambda v: v > 0, "positive"))
    # anomaly score (Dinomaly's)
    max_ratio: float = setting(0.01, "image score: the mean of this share of the map's highest "
                                     "values (0: the maximum)",
                               check=(lambda v: 0 <= v <= 1, "in [0, 1]"))


class Dinomaly2Loss(HardMiningCosineLoss):
    """`loss(outputs, iteration)` on `outputs = (encoder groups, decoder groups)`, in fp32:
    with `hard_mining` (`--ll 1`) Dinomaly's hard-mining cosine loss (`p` ramped from 0 to
    `p_max` over `ramp_iters`, easy points' gradient × `factor`); without, the preview's
    `global_cosine`: the mean over the groups of `1 − cos(flatten(e), flatten(d))`, batch
    mean, the encoder side detached (`utils.global_cosine` sums over the groups)."""

    def __init__(self, hard_mining: bool = True, p_max: float = 0.9, ramp_iters: int = 1000,
                 factor: float = 0.1, across_ranks: bool = False) -> None:
        super().__init__(p_max, ramp_iters, factor, across_ranks)
        self.hard_mining = hard_mining

    def __call__(self, outputs: tuple[list[torch.Tensor], list[torch.Tensor]],
                 iteration: int) -> torch.Tensor:
        if self.hard_mining:
            return super().__call__(outputs, iteration)
        en, de = outputs
        return utils.global_cosine([e.float() for e in en], [d.float() for d in de]) / len(en)


# The paper's published numbers (percent). Only the image AUROC is known (the preview's
# README figure); the other metrics of the row are not (None: a dash in the tables).
PAPER_I_AUROC = {"mvtec": 99.9, "visa": 99.3, "realiad": 92.1}
PAPER_SETTING: dict[str, object] = {"encoder": "dinov2reg_vit_base_14",
                                    "encoder_weights": "official"}
PAPER_NOTE = ("The paper's row: Dinomaly2, multi-class, ViT-B; only its image AUROC is "
              "published in the material available (the other cells are not known){extra}. "
              "Its iterations, batch and input size are not known: the run's are the preview "
              "code's.")
REALIAD_NOTE = "; whether its Real-IAD number is per image or per object is not known"


def paper_row(value: float | None) -> tuple[float | None, ...] | None:
    """A reference row with only the image AUROC, or None."""
    return None if value is None else (value, None, None, None, None, None, None)


@register_recipe
class Dinomaly2(TopRatioScore, Recipe):
    name = "dinomaly2"
    title = "Dinomaly2"
    Config = Config

    def loss(self, cfg: Config, across_ranks: bool = False) -> Dinomaly2Loss:
        return Dinomaly2Loss(bool(cfg.ll), cfg.ll_ratio, cfg.ll_ramp_iters, cfg.ll_factor,
                             across_ranks)

    def build_model(self, cfg: Config, device: torch.device | str,
                    weights: str | None = None) -> nn.Module:
        return models.build_dinomaly2(
            cfg.encoder, cfg.encoder_weights if weights is None else weights, cfg.dropout,
            recenter=bool(cfg.cr), linear_attention=bool(cfg.la), loose_groups=cfg.lc,
            device=device, fused_attn=cfg.fused_attn, attn_eps=cfg.attn_eps)

    def optimization(self, model: nn.Module, cfg: Config) -> Optimization:
        """The preview's groups and order: bottleneck[0], bottleneck[1], decoder (or, with
        `lr_groups` 2, bottleneck, decoder); clipping over bottleneck then decoder (its
        `ModuleList([bottleneck, decoder])`)."""
        optimizer = utils.dinomaly2_optimizer(
            model, lr=cfg.lr, first_layer_lr=cfg.first_layer_lr if cfg.lr_groups == 3 else None,
            betas=cfg.betas, eps=cfg.eps,
            weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad, skip_nonfinite=True)
        # sets the lr of iteration 0 (0: warm-up) now, and of iteration i+1 at each step()
        scheduler = utils.WarmupCosineScheduler(optimizer, cfg.warmup_iters, cfg.total_iters,
                                                final_ratio=cfg.lr_decay_ratio)
        trainable = [*model.bottleneck.parameters(), *model.decoder.parameters()]
        return Optimization(optimizer, scheduler, trainable, cfg.clip_grad)

    def eval_spec(self, cfg: Config) -> EvalSpec:
        """The seven metrics, AUPRO's thresholds as the preview computes them under the numpy
        it pins (numpy 2: a float32 step, float64 comparisons; Dinomaly's are numpy 1's)."""
        return EvalSpec(metrics=self.metrics, aupro_thresholds="numpy2")

    def paper_means(self, cfg: Config) -> tuple[float | None, ...] | None:
        """The paper's row for `cfg`'s setting (multi-class only), else None."""
        return None if cfg.separate else paper_row(PAPER_I_AUROC.get(cfg.dataset))

    def reference(self, cfg: Config, all_classes: Sequence[str]) -> Reference | None:
        means = self.paper_means(cfg)
        if means is None:
            return None
        extra = REALIAD_NOTE if cfg.dataset == "realiad" else ""
        return Reference("paper (mean)", means, PAPER_NOTE.format(extra=extra),
                         setting_differences(dataclasses.asdict(cfg), all_classes, PAPER_SETTING))
