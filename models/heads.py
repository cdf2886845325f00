"""Multi-head plumbing shared by the attentions of the encoders and the decoder: the qkv
projection split into heads, scaled-dot-product attention, and the heads merged back.

References: timm `layers/attention.py` (`Attention.forward`); dinov2 `layers/attention.py`.
"""
import torch
import torch.nn.functional as F
from torch import nn


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor]:
    """The output of a qkv projection as q, k, v per head:
    `B × N × 3C -> 3 × (B × heads × N × C/heads)`."""
    B, N, C3 = qkv.shape
    qkv = qkv.reshape(B, N, 3, num_heads, C3 // (3 * num_heads))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`B × heads × N × hd -> B × N × (heads·hd)`."""
    B, heads, N, hd = x.shape
    return x.transpose(1, 2).reshape(B, N, heads * hd)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      fused: bool = True) -> torch.Tensor:
    """`softmax(q kᵀ / √hd) v` per head, `B × heads × N × hd` in and out.

    `fused=True`: `F.scaled_dot_product_attention` (flash / memory-efficient kernels);
    `fused=False`: written out as the reference does. The same function up to float
    round-off (pinned by a test)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


class HeadProjections(nn.Module):
    """What every multi-head attention here holds: the `qkv` projection `C -> 3C` and the
    output projection `proj` `C -> C`, built in that order (the order of their init draws
    and of their state_dict keys). `qkv` may be given (DINOv3's masked-bias one)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 qkv: nn.Module | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias) if qkv is None else qkv
        self.proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`B × N × C -> 3 × (B × heads × N × C/heads)`: q, k, v of the tokens."""
        return split_heads(self.qkv(x), self.num_heads)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """`B × heads × N × hd -> B × N × C`, through the output projection."""
        return self.proj(merge_heads(x))
