"""Truncated-normal initialisation as the reference draws it (inverse CDF, one uniform draw).

torch ≤ 1.12's `nn.init.trunc_normal_` and its copies in timm and DINO, with which
the reference initialises its models, sample `u ~ U(2Φ(α) − 1, 2Φ(β) − 1)`,
`α = (a − μ)/σ`, `β = (b − μ)/σ`, and return `μ + σ·√2·erfinv(u)` clamped to `[a, b]`.
Recent torch (2.x) rejection-samples instead: other values, and a data-dependent number
of generator draws, so every later draw (the next layer's weights, the data order, the
dropout masks) moves too.

References: torch 1.12 `torch/nn/init.py::_no_grad_trunc_normal_` (inverse-transform
sampling); timm `layers/weight_init.py::trunc_normal_`.
"""
import math

import torch
from torch import nn


def _norm_cdf(x: float) -> float:
    """Φ(x), the standard normal CDF."""
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0,
                  a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place from N(mean, std²) truncated to `[a, b]` (absolute bounds).

    One `uniform_` call over the whole tensor — one draw per element from the generator of
    the tensor's device (CUDA tensor → CUDA generator) — then the inverse normal CDF.
    Returns `tensor`, as `nn.init` functions do.
    """
    with torch.no_grad():
        lo = _norm_cdf((a - mean) / std)
        hi = _norm_cdf((b - mean) / std)
        tensor.uniform_(2 * lo - 1, 2 * hi - 1)  # u = 2Φ(z) − 1 = erf(z/√2), z = (x − μ)/σ
        tensor.erfinv_()  # z/√2
        tensor.mul_(std * math.sqrt(2.0))
        tensor.add_(mean)
        tensor.clamp_(min=a, max=b)  # erfinv's float round-off may step just past a bound
        return tensor


def init_trainable(*modules: nn.Module) -> None:
    """Truncated normal std 0.01 cut at ±0.03 for Linear weights, zero biases; LayerNorm 1/0.

    Walks each of `modules` in turn, in registration order (`module.modules()`), drawing with
    `trunc_normal_` above from the generator of the weights' device: Dinomaly's and
    Dinomaly2's init of the bottleneck and the decoder.
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.01, a=-0.03, b=0.03)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)
