"""LayerScale (CaiT, Touvron et al. 2021): a learnt per-channel residual gain."""
import torch
from torch import nn


class LayerScale(nn.Module):
    """`x * gamma`, gamma of shape `(C,)`; key `gamma` as in the official checkpoints."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
