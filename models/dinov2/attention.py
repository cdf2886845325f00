"""Multi-head softmax self-attention of the DINOv2 encoder."""
import torch
from torch import nn

from ..heads import merge_heads, softmax_attention, split_heads


class Attention(nn.Module):
    """`(B, N, C) -> (B, N, C)`.

    `fused=True` runs `F.scaled_dot_product_attention` (flash / memory-efficient kernels);
    `fused=False` the explicit `softmax(q kᵀ · scale) v` of the reference. Both are the
    same function up to float round-off (pinned by a test).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 fused: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), self.num_heads)  # 3 × (B, heads, N, head_dim)
        x = softmax_attention(q, k, v, self.fused)
        x = merge_heads(x)  # B, heads, N, hd -> B, N, C
        x = self.proj(x)
        return x
