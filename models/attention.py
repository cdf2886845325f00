"""Softmax self-attention with DropKey: Dinomaly2's decoder attention with `--la 0`.

References: Dinomaly2 preview code (`Attention`, `DropKey` in its `vision_transformer.py`);
DropKey: Li et al., CVPR 2023, "DropKey for Vision Transformer" (drop keys by adding a
large negative number to the logits before the softmax).
"""
import torch
from torch import nn

from .heads import HeadProjections


class DropKey(nn.Module):
    """In training mode, adds `-1e12` to each logit with probability `p` (before the softmax).

    The Bernoulli draw happens in training mode **even at p = 0**, where nothing is dropped:
    the preview code does so, and its random streams (the dropout masks after it) depend on it.
    In eval mode it draws nothing and returns its input.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return attn
        return attn + torch.bernoulli(torch.ones_like(attn) * self.p) * -1e12


class Attention(HeadProjections):
    """Softmax attention, `(B, N, C) -> (B, N, C)`: per head
    `softmax(DropKey(q kᵀ · hd^-½)) v`, then the output projection (with bias).

    `attn_mask` (`N × N`, from `Dinomaly.generate_mask`): where it is 0 the attention weight
    is set to 0 **after** the softmax, without renormalising (what the preview code does; the
    remaining weights of a row then sum to less than 1).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 attn_drop: float = 0.0) -> None:
        # qkv, proj (the drop holds no parameters and draws nothing when built)
        super().__init__(dim, num_heads, qkv_bias)
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = DropKey(attn_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.split(x)  # 3 × (B, heads, N, hd)
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn)
        attn = attn.softmax(dim=-1)
        if attn_mask is not None:
            # the preview's `attn[:, :, mask == 0] = 0` by boolean indexing, without its
            # host-device synchronisation
            attn = attn.masked_fill(attn_mask == 0, 0.0)
        return self.merge(torch.matmul(attn, v))  # B, heads, N, hd -> B, N, C, projected
