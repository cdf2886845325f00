"""Multi-head softmax self-attention of the DINOv2 encoder."""
import torch
import torch.nn.functional as F
from torch import nn


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
        self.scale = (dim // num_heads) ** -0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, heads, N, head_dim)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            x = attn.softmax(dim=-1) @ v
        x = x.transpose(1, 2).reshape(B, N, C)  # B, heads, N, hd -> B, N, C
        x = self.proj(x)
        return x
