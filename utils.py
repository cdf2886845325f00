"""Training utilities of Dinomaly (losses, optimizer, schedule, seeding) and, re-exported
under the reference's names, the evaluation API (anomaly maps, metrics, evaluation).
"""
import math
import random
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from engine.evaluation import cal_anomaly_maps, evaluation_batch, get_gaussian_kernel  # noqa: F401
from engine.metrics import compute_pro, f1_score_max  # noqa: F401


def setup_seed(seed: int, cudnn_benchmark: bool = False) -> None:
    """Seed torch (CPU and CUDA), numpy and random; cuDNN deterministic unless benchmark."""
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.backends.cudnn.deterministic = not cudnn_benchmark
    torch.backends.cudnn.benchmark = cudnn_benchmark


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
    """Gradient hook: scale the gradient at the locations `inds` (`B × 1 × H × W`) by `factor`."""
    inds = inds.expand_as(grad)
    grad = grad.clone()
    grad[inds] *= factor
    return grad


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


# ------------------------------------------------------------------------------- optimizer

class StableAdamW(Optimizer):
    """AdamW with AMSGrad and update clipping (Wortsman et al. 2023, "Stable and low-precision
    training for large-scale vision-language models", Alg. 2), as in the reference:

    `w *= 1 - lr·wd`; `denom = sqrt(v̂_max) / sqrt(1 - β2^t) + eps`;
    `step = lr / (1 - β1^t) / max(1, rms(g / denom) / clip_threshold)`; `w -= step · m / denom`.
    The learning rate is read from each param group at every step.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 clip_threshold: float = 1.0) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid StableAdamW settings: lr={lr}, eps={eps}, betas={betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)
        self.clip_threshold = clip_threshold

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            # pass 1: moments and rms(g / denom) of every parameter, fetched from the device
            # in one transfer (one sync per step instead of one per parameter)
            rms = [self._update_moments(p, group) for p in params]
            rms = torch.stack(rms).tolist() if rms else []
            # pass 2: the clipped update (denom recomputed: the same values, no extra memory)
            for p, r in zip(params, rms):
                state = self.state[p]
                p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled weight decay
                step_size = (group["lr"] / (1 - group["betas"][0] ** state["step"])
                             / max(1.0, r / self.clip_threshold))
                p.addcdiv_(state["exp_avg"], self._denom(state, group), value=-step_size)
        return loss

    def _update_moments(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Advance the step count and moments of `p`; returns `rms(grad / denom)` (0-dim)."""
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError("StableAdamW does not support sparse gradients")
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], state["exp_avg_sq"], out=state["max_exp_avg_sq"])
        return grad.div(self._denom(state, group)).pow(2).mean().sqrt()

    @staticmethod
    def _denom(state: dict, group: dict) -> torch.Tensor:
        """`sqrt(v) / sqrt(1 - β2^t) + eps`, v the (max, with AMSGrad) second moment."""
        second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        bias_correction2 = 1 - group["betas"][1] ** state["step"]
        return (second.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])


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
