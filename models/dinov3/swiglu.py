"""SwiGLU feed-forward of the DINOv3 S+ and H+ encoders.

References: Shazeer 2020, "GLU Variants Improve Transformer", eq. 6 (FFN_SwiGLU), with
the hidden size scaled by 2/3 to keep the parameter count of a ratio-`r` MLP.
"""
import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(hidden_features: int, align_to: int = 8) -> int:
    """`int(h·2/3)` rounded up to a multiple of `align_to`: S+ 2304 → 1536, H+ 7680 → 5120."""
    d = int(hidden_features * 2 / 3)
    return d + (-d % align_to)


class SwiGLUFFN(nn.Module):
    """`(B, N, C) -> (B, N, C)`: `w3(silu(w1 x) · w2 x)`, all three Linear with bias."""

    def __init__(self, dim: int, hidden_features: int) -> None:
        super().__init__()
        hidden = swiglu_hidden(hidden_features)
        self.w1 = nn.Linear(dim, hidden)  # gate branch, through SiLU
        self.w2 = nn.Linear(dim, hidden)  # linear branch
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.silu(self.w1(x))
        x = gate * self.w2(x)
        x = self.w3(x)
        return x
