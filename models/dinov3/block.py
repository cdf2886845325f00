"""Pre-norm transformer block of the DINOv3 ViTs (LayerScale, RoPE attention)."""
import torch
from torch import nn

from ..dinov2.layer_scale import LayerScale
from ..mlp import Mlp
from .attention import SelfAttention
from .swiglu import SwiGLUFFN


class Block(nn.Module):
    """`(B, N, C), (sin, cos) -> (B, N, C)`: `x + ls1(attn(norm1(x)))`, `x + ls2(mlp(norm2(x)))`.

    LayerNorm eps 1e-5 (DINOv2: 1e-6). `ffn` is `'mlp'` (GELU MLP: S, B, L) or
    `'swiglu'` (S+, H+); either is stored under `mlp.` as in the official checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float = 4.0, ffn: str = "mlp",
                 init_values: float = 1e-5, fused_attn: bool = True) -> None:
        super().__init__()
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
        hidden = int(dim * ffn_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = SelfAttention(dim, num_heads, fused=fused_attn)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = SwiGLUFFN(dim, hidden) if ffn == "swiglu" else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x
