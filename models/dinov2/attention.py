"""Multi-head softmax self-attention of the DINOv2 encoder."""
import torch

from ..heads import HeadProjections, softmax_attention


class Attention(HeadProjections):
    """`(B, N, C) -> (B, N, C)`.

    `fused=True` runs `F.scaled_dot_product_attention` (flash / memory-efficient kernels);
    `fused=False` the explicit `softmax(q kᵀ · scale) v` of the reference. Both are the
    same function up to float round-off (pinned by a test).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 fused: bool = True) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)  # 3 × (B, heads, N, head_dim)
        x = softmax_attention(q, k, v, self.fused)
        return self.merge(x)  # B, heads, N, hd -> B, N, C, projected
