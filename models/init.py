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
