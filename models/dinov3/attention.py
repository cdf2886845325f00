"""Multi-head softmax self-attention of the DINOv3 encoder, with RoPE on q and k."""
import torch
import torch.nn.functional as F
from torch import nn

from ..heads import HeadProjections, softmax_attention
from .rope import apply_rope


class LinearKMaskedBias(nn.Linear):
    """The `qkv` projection: a Linear whose bias is multiplied by the stored `bias_mask`.

    `bias_mask` is 1 on the q and v thirds and 0 on the k third: DINOv3 switches the key
    bias off (it adds the same term to every logit of a query, so it is useless and only
    costs memory). The mask is a persistent buffer, as in the official checkpoints, and
    applied as loaded, so any file gives the official function.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=True)
        third = out_features // 3
        mask = torch.ones(out_features)
        mask[third: 2 * third] = 0.0  # [q | k | v]: k bias off
        self.register_buffer("bias_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype)
        return F.linear(x, self.weight, bias)


class SelfAttention(HeadProjections):
    """`(B, N, C), (sin, cos) -> (B, N, C)`; RoPE on the last `h·w` tokens (the patches).

    `fused=True` runs `F.scaled_dot_product_attention`; `fused=False` the explicit
    `softmax(q kᵀ · scale) v`. Both are the same function up to float round-off.
    """

    def __init__(self, dim: int, num_heads: int, fused: bool = True) -> None:
        super().__init__(dim, num_heads, qkv=LinearKMaskedBias(dim, dim * 3))
        self.fused = fused

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        sin, cos = rope
        prefix = x.shape[1] - sin.shape[0]  # cls + storage tokens: no position, no rotation
        q, k, v = self.split(x)  # 3 × (B, heads, N, head_dim)
        q = torch.cat((q[:, :, :prefix], apply_rope(q[:, :, prefix:], sin, cos)), dim=2)
        k = torch.cat((k[:, :, :prefix], apply_rope(k[:, :, prefix:], sin, cos)), dim=2)
        x = softmax_attention(q, k, v, self.fused)
        return self.merge(x)  # B, heads, N, hd -> B, N, C, projected
