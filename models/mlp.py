"""Transformer MLP, shared by the DINOv2 encoder and the Dinomaly decoder.

References: dinov2 `layers/mlp.py`; timm `layers/mlp.py`.
"""
import torch
from torch import nn


class Mlp(nn.Module):
    """Linear → GELU → Dropout → Linear → Dropout.  `(B, N, C) -> (B, N, C_out)`"""

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        # Construction order (fc1, act, fc2, drop) is the reference's: it fixes RNG consumption.
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop(x)
        x = self.fc2(x)
        x = self.drop(x)
        return x
