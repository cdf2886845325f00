"""Training utilities of Dinomaly and Dinomaly2 (losses, optimizer groups, schedules,
seeding), the references' evaluations (`evaluation_batch`; Dinomaly2's multi-view and
RGB + infrared ones, `evaluation_batch_multiview`, `evaluation_batch_rgbinfra`, built on the
engine's maps and metrics) and, re-exported under the
reference's names, the anomaly maps (from `recipes.anomaly_map`), the optimizer
(`StableAdamW`, from `engine.stable_adamw`, where its flat-buffer step lives) and the metrics
(from `engine.metrics`).
"""
import math
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from engine.eval_spec import MULTIVIEW_METRICS, EvalSpec, modality_metric_names
from engine.evaluation import metrics_of
from engine.generators import setup_seed  # noqa: F401
from engine.maps import collect_maps
from engine.metrics import compute_pro, f1_score_max  # noqa: F401
from engine.objects import ObjectScore, ObjectSpec, unpack_modalities
from engine.stable_adamw import StableAdamW  # noqa: F401
from recipes.anomaly_map import (AnomalyPipeline, cal_anomaly_maps, get_gaussian_kernel,  # noqa: F401
                                 image_scores)


# ---------------------------------------------------------------------------------- losses

def global_cosine(a: list[torch.Tensor], b: list[torch.Tensor], stop_grad: bool = True) -> torch.Tensor:
    """Sum over groups of the batch mean of `1 - cos(flatten(a_i), flatten(b_i))`, one cosine
    per image over all of C×H×W (paper §3.4, eq. 2). `a`, `b`: lists of `B × C × H × W`."""
    loss = 0
    for a_, b_ in zip(a, b):
        a_ = a_.detach() if stop_grad else a_
        loss = loss + torch.mean(1 - F.cosine_similarity(a_.reshape(a_.shape[0], -1),
                                                         b_.reshape(b_.shape[0], -1)))
    return loss


def modify_grad(grad: torch.Tensor, inds: torch.Tensor, factor: float = 0.0) -> torch.Tensor:
    """Gradient hook: scale the gradient at the locations `inds` (`B × 1 × H × W`, broadcast
    over channels) by `factor`. The reference's `grad[inds] *= factor` computes the same values;
    its boolean indexing (`nonzero`) waits for the GPU twice per hook, `where` never does."""
    return torch.where(inds, grad * factor, grad)


def point_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`1 - cos(a, b)` along channels, without gradient: `B × C × H × W -> B × 1 × H × W`."""
    with torch.no_grad():
        return 1 - F.cosine_similarity(a, b).unsqueeze(1)


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """`t` of every process of a torch.distributed run concatenated along dim 0, in rank
    order (`t` itself with one process). Equal shapes on every rank; no gradient flows
    through the gathered parts."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def hard_mining_threshold(point_dist: torch.Tensor, p: float,
                          across_ranks: bool = False) -> torch.Tensor:
    """The k-th largest point distance, `k = int(n · (1 - p))`: points below it are "easy".

    `across_ranks`: over the point distances of every process (torch.distributed, each
    holding an equal share of the batch), i.e. the threshold of the whole global batch.
    """
    flat = (all_gather_cat(point_dist) if across_ranks else point_dist).reshape(-1)
    k = int(flat.numel() * (1 - p))
    return torch.topk(flat, k=k)[0][-1]


def global_cosine_hm_percent(a: list[torch.Tensor], b: list[torch.Tensor], p: float = 0.9,
                             factor: float = 0.0, across_ranks: bool = False) -> torch.Tensor:
    """Global cosine loss with hard-mining (paper §3.4, eq. 3), mean over groups.

    The value is the plain global cosine loss; a gradient hook on `b` multiplies the
    gradient at the `p` fraction of easiest locations (point distance below the threshold,
    taken over the whole batch) by `factor`. `a` (encoder) is detached.
    `across_ranks`: the batch is split over the processes of a torch.distributed run; the
    threshold is then the global batch's (the returned value stays this rank's mean).
    """
    loss = 0
    for a_, b_ in zip(a, b):
        a_ = a_.detach()
        point_dist = point_distances(a_, b_)
        thresh = hard_mining_threshold(point_dist, p, across_ranks)
        loss = loss + torch.mean(1 - F.cosine_similarity(a_.reshape(a_.shape[0], -1),
                                                         b_.reshape(b_.shape[0], -1)))
        if b_.requires_grad:
            b_.register_hook(partial(modify_grad, inds=point_dist < thresh, factor=factor))
    return loss / len(a)


# -------------------------------------------------------------------------------- schedule

class WarmCosineScheduler(LRScheduler):
    """Linear warm-up then cosine decay, one value per iteration (as in DINO/DINOv2):
    `linspace(start_warmup_value, base_value, warmup_iters)`, then
    `final + 0.5 (base - final)(1 + cos(π i / (total - warmup)))`, then `final_value`.
    Iteration 0 uses the first value (0 with the defaults)."""

    def __init__(self, optimizer: Optimizer, base_value: float, final_value: float,
                 total_iters: int, warmup_iters: int = 0, start_warmup_value: float = 0) -> None:
        self.final_value = final_value
        self.total_iters = total_iters
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
        iters = np.arange(total_iters - warmup_iters)
        schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
        self.schedule = np.concatenate((warmup_schedule, schedule))
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.total_iters:
            return [self.final_value for _ in self.base_lrs]
        return [float(self.schedule[self.last_epoch]) for _ in self.base_lrs]


class WarmupCosineScheduler(LRScheduler):
    """Dinomaly2's schedule (the preview code's), per parameter group: with `L` the group's
    lr when the scheduler is made, `W = warmup_epochs`, `T = total_epochs`, `r = final_ratio`,
    the optimizer step of iteration t (0-based) uses
    `L·t/W` for t < W (iteration 0 trains with lr 0), then
    `L·(r + (1 − r)·½(1 + cos(π(t − W)/(T − W))))`, reaching `L·r` at t = T (after the
    last iteration; no clamp past it). The preview's scripts pass r = 1: a constant lr after
    the warm-up. Call `step()` once after every optimizer step.

    `last_epoch` and `verbose` are accepted and ignored, as in the preview code (it always
    starts from the beginning).
    """

    def __init__(self, optimizer: Optimizer, warmup_epochs: int, total_epochs: int,
                 final_ratio: float = 0.01, last_epoch: int = -1, verbose: bool = False) -> None:
        self.warmup_epochs = warmup_epochs
        self.total_epochs = total_epochs
        self.final_ratio = final_ratio
        self.initial_lrs = [group["lr"] for group in optimizer.param_groups]
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        t, W, T, r = self.last_epoch, self.warmup_epochs, self.total_epochs, self.final_ratio
        if t < W:
            return [L * t / W for L in self.initial_lrs]
        cosine = 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))
        return [L * (r + (1 - r) * cosine) for L in self.initial_lrs]


# ------------------------------------------------------------------------------ optimizer

def dinomaly2_optimizer(model: torch.nn.Module, lr: float = 2e-3,
                        first_layer_lr: float | None = 2e-4,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-10,
                        weight_decay: float = 1e-4, amsgrad: bool = False,
                        clip_threshold: float = 1.0, skip_nonfinite: bool = True,
                        flat: bool = True) -> StableAdamW:
    """Dinomaly2's StableAdamW over `model.bottleneck` and `model.decoder`, with the preview
    code's settings and parameter groups, in its parameter order:

    - `first_layer_lr` set (the 2D, few-shot and MulSen scripts): three groups,
      `bottleneck[0]` at `first_layer_lr` (for stability, the preview's README says),
      `bottleneck[1]` at `lr`, `decoder` at `lr`;
    - `first_layer_lr=None` (the multi-view and 3D scripts): `bottleneck`, `decoder`, at `lr`.

    `skip_nonfinite`: the step is abandoned at the first parameter with a non-finite
    gradient (see `StableAdamW`), as in the preview code.
    """
    if first_layer_lr is None:
        groups = [{"params": list(model.bottleneck.parameters())},
                  {"params": list(model.decoder.parameters())}]
    else:
        groups = [{"params": list(model.bottleneck[0].parameters()), "lr": first_layer_lr},
                  {"params": list(model.bottleneck[1].parameters())},
                  {"params": list(model.decoder.parameters())}]
    return StableAdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                       amsgrad=amsgrad, clip_threshold=clip_threshold, flat=flat,
                       skip_nonfinite=skip_nonfinite)


# ------------------------------------------------------------------------------ evaluation

def evaluation_batch(model: nn.Module, dataloader: DataLoader, device: torch.device | str,
                     _class_: str | None = None, max_ratio: float = 0,
                     resize_mask: int | tuple[int, int] | None = None,
                     gt_threshold: float = 0.0) -> list[float]:
    """The reference's evaluation of one test set of `(img, gt, label, img_path)` batches:
    `[auroc_sp, ap_sp, f1_sp, auroc_px, ap_px, f1_px, aupro_px]` as Python floats (nan where
    a metric is not defined, where the reference fails). Maps: `AnomalyPipeline(model,
    resize_mask, max_ratio)`; masks nearest-resized to `resize_mask`, anomalous where
    `> gt_threshold` (the reference: 0). `_class_` is unused, kept for the reference's
    signature. The reference calls it with `max_ratio=0.01, resize_mask=256`."""
    model.eval()
    pipeline = AnomalyPipeline(model, resize_mask, max_ratio)
    return metrics_of(collect_maps(pipeline, dataloader, device, resize_mask, gt_threshold))


class ViewsPipeline(AnomalyPipeline):
    """`AnomalyPipeline` for the multi-view evaluation: images `N×C×H×W` (or, with
    `views_model`, objects `B×V×C×H×W` for a model that sees the whole object and returns
    5-D features) -> maps `N×1×R×R` and scores `N`, N = B·V. A model that returns one tensor
    instead of `(en, de)` gives the anomaly map itself (`N×1×H×W`, or 5-D), as the preview
    takes it."""

    def __init__(self, model: nn.Module, resolution: int | None = 256, max_ratio: float = 0.01,
                 views_model: bool = False) -> None:
        super().__init__(model, resolution, max_ratio)
        self.views_model = views_model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        size = x.shape[-1]
        if isinstance(out, torch.Tensor):
            anomaly_map = out.reshape(-1, 1, *out.shape[-2:])
        else:
            en, de = ([t.reshape(-1, *t.shape[-3:]) for t in group] for group in out)  # 5-D: flattened
            anomaly_map, _ = cal_anomaly_maps(en, de, size)
        if self.resolution is not None:
            anomaly_map = F.interpolate(anomaly_map, size=self.resolution, mode="bilinear",
                                        align_corners=False)
        anomaly_map = self.blur(anomaly_map)
        return anomaly_map, image_scores(anomaly_map, self.max_ratio)


def evaluation_batch_multiview(model: nn.Module, dataloader: DataLoader, device: torch.device | str,
                               _class_: str | None = None, max_ratio_image: float = 0,
                               max_ratio_object: float = 0,
                               resize_mask: int | tuple[int, int] | None = None,
                               multi_view_model: bool = False, use_max_view: bool = False,
                               pixel_level_metrics: bool = True, adeval: bool = False) -> list[float]:
    """The Dinomaly2 preview's evaluation of one multi-view test set (`(img B×V×3×H×W,
    gt B×V×1×H×W, label B×V, paths)` batches): `[I-AUROC, I-AP, I-F1, P-AUROC, P-AP, P-F1,
    P-AUPRO, O-AUROC, O-AP, O-F1]` as Python floats (nan where a metric is not defined).

    Every view through the model (the B·V views of a batch in one pass; `multi_view_model`:
    the 5-D batch), its map as `evaluation_batch`'s at `resize_mask`, blurred; a view's score
    the mean of its top `max_ratio_image` share of pixels (0: the maximum); an object's score
    the mean of the top `max_ratio_object` share of all its views' pixels together, or with
    `use_max_view` its highest view score; an object is anomalous where any view is. Image
    metrics over every view, object metrics over the objects; pixel metrics over every view:
    exact, or with `adeval` ADEval's histogram metrics (`engine.hist_metrics`), or all 0
    without `pixel_level_metrics`. `_class_` is unused. The multi-view script calls it with
    `max_ratio_image=0.01, max_ratio_object=0.01, resize_mask=256, adeval=True`."""
    model.eval()
    score = ObjectScore("max_view") if use_max_view else ObjectScore("top_ratio", max_ratio_object)
    objects = ObjectSpec(score, forward="objects" if multi_view_model else "views")
    pixel = "none" if not pixel_level_metrics else "histogram" if adeval else "exact"
    pipeline = ViewsPipeline(model, resize_mask, max_ratio_image, views_model=multi_view_model)
    maps = collect_maps(pipeline, dataloader, device, resize_mask, objects=objects)
    # the exact AUPRO as the preview computes it under the numpy it pins
    return metrics_of(maps, EvalSpec(MULTIVIEW_METRICS, objects, pixel, aupro_thresholds="numpy2"))


RGBINFRA_METRICS = modality_metric_names(("RGB", "Infra"))


def evaluation_batch_rgbinfra(model: nn.Module, dataloader: DataLoader, device: torch.device | str,
                              class_: str | None = None, max_ratio: float = 0,
                              resize_mask: int | tuple[int, int] | None = None) -> dict[str, list[float]]:
    """The Dinomaly2 preview's evaluation of one RGB + infrared test set
    (`dataset.MulSenTestDataset`: `((rgb, ir), (l_rgb, l_ir, l_pc), (rgb_mask, ir_mask),
    paths)` batches): `{'object_level': [auroc, ap, f1], 'pixel_rgb': [auroc, ap, f1, aupro],
    'pixel_infra': [auroc, ap, f1, aupro]}` (Python floats, nan where a metric is not
    defined: where the preview stops, e.g. a class whose infrared masks are all empty).

    The model runs on the RGB images, then on the infrared ones; each map as
    `evaluation_batch`'s at `resize_mask`, blurred; each image's score the mean of its top
    `max_ratio` share of pixels (0: the maximum); a sample's score the RGB score plus the
    infrared one, its label the highest of its three labels (the point cloud's included).
    Object metrics over the samples, pixel metrics (exact) per modality. `class_` is unused;
    the MulSen script calls it with `max_ratio=0.01, resize_mask=256`."""
    model.eval()
    objects = ObjectSpec(ObjectScore("sum"), unpack_modalities, forward="per_view")
    maps = collect_maps(AnomalyPipeline(model, resize_mask, max_ratio), dataloader, device,
                        resize_mask, objects=objects)
    values = metrics_of(maps, EvalSpec(RGBINFRA_METRICS, objects, modalities=("RGB", "Infra"),
                                       aupro_thresholds="numpy2"))
    return {"object_level": values[:3], "pixel_rgb": values[3:7], "pixel_infra": values[7:11]}
