"""Pre-norm transformer block with LayerScale (DINOv2)."""
import torch
from torch import nn

from ..mlp import Mlp
from .attention import Attention
from .layer_scale import LayerScale


class Block(nn.Module):
    """`(B, N, C) -> (B, N, C)`: `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 init_values: float = 1e-5, fused_attn: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=True, fused=fused_attn)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x
