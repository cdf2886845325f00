"""Dinomaly's trainable parts: the noisy bottleneck and the linear-attention decoder block.

References: Dinomaly (Guo et al., CVPR 2025) §3.2 "Noisy Bottleneck", §3.3 "Unfocused
Linear Attention"; linear attention: Katharopoulos et al. 2020, "Transformers are RNNs",
eq. 4-6 with the feature map φ(x) = elu(x) + 1.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .heads import HeadProjections, merge_heads, split_heads
from .mlp import Mlp


class bMlp(Mlp):
    """Noisy bottleneck: Dropout → Linear(C, 4C) → GELU → Dropout → Linear(4C, C) → Dropout.

    `(B, N, C) -> (B, N, C)`. Dropout on the *input* is what makes it a denoising
    bottleneck (paper §3.2): the decoder must restore features it never sees intact.
    One Dropout module serves all three places, in this order, as in the reference.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(x)
        return super().forward(x)


class LinearAttention2(HeadProjections):
    """Linear attention, `(B, N, C) -> (B, N, C)`.

    Per head, with `q' = elu(q) + 1`, `k' = elu(k) + 1`:
    `out_i = q'_i · (Σ_j k'_j v_jᵀ) / (q'_i · Σ_j k'_j + eps)`, then the output projection.
    No softmax, no scale: the attention stays "unfocused" (paper §3.3), which keeps the
    decoder from copying the identity mapping.

    `eps` is added once to the scalar denominator (Dinomaly2's guard against an exact
    zero; its scripts use 1e-8). The default 0 is Dinomaly's: no addition at all, so the
    computation is the reference's operation for operation.

    While `torch.export` traces it (the ONNX / OpenVINO export), the same function is taken
    in matmul form (`linear_attention_matmul`): deployment runtimes do not all take the
    einsums. Training and evaluation never see that branch.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 eps: float = 0.0) -> None:
        super().__init__(dim, num_heads, qkv_bias)
        self.eps = eps

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attn_mask` is ignored (there are no attention weights to mask), as in the
        preview code."""
        q, k, v = split_heads(self.qkv(x), self.num_heads)  # 3 × (B, heads, N, hd)
        # The sums run over all N tokens: at 789 tokens with trained weights the normaliser
        # q'·Σk' exceeds fp16's range (65504) and tokens silently become 0. Under --amp they
        # run in fp32; in fp32 `.float()` and the disabled autocast change nothing.
        with torch.autocast(x.device.type, enabled=False):
            q = F.elu(q.float()) + 1.0
            k = F.elu(k.float()) + 1.0
            v = v.float()
            if is_exporting():
                x = linear_attention_matmul(q, k, v, self.eps)
            else:
                kv = torch.einsum("...sd,...se->...de", k, v)  # B, heads, hd, hd: Σ_j k'_j v_jᵀ
                denominator = torch.einsum("...sd,...d->...s", q, k.sum(dim=-2))  # B, heads, N
                if self.eps:
                    denominator = denominator + self.eps
                z = 1.0 / denominator
                x = torch.einsum("...de,...sd,...s->...se", kv, q, z)  # B, heads, N, hd
        x = merge_heads(x)  # B, heads, N, hd -> B, N, C
        x = self.proj(x)
        return x


LinearAttention = LinearAttention2  # the paper's name


def is_exporting() -> bool:
    """True while `torch.export` traces a model (the ONNX export); False in training and
    evaluation, under `torch.compile` too."""
    check = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(check is not None and check())


def linear_attention_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            eps: float = 0.0) -> torch.Tensor:
    """LinearAttention2's core written with matmuls, the form exported models carry:
    `q', k', v` as `B × heads × N × hd` (after elu + 1) → `B × heads × N × hd`.

    The same function as the einsum form up to float round-off (a test pins it): a different
    order of the same sums. Exported models need it because deployment runtimes decompose
    a three-operand einsum badly or not at all (OpenVINO's CPU plugin rejects the decoder's);
    training keeps the einsum, operation for operation the reference's."""
    kv = k.transpose(-2, -1) @ v  # B, heads, hd, hd
    denominator = q @ k.sum(dim=-2).unsqueeze(-1)  # B, heads, N, 1
    if eps:
        denominator = denominator + eps
    return (q @ kv) / denominator  # a Div: TensorRT's ONNX parser long lacked Reciprocal


class Block(nn.Module):
    """Pre-norm decoder block, `(B, N, C) -> (B, N, C)`; no LayerScale, no drop path.

    `attn_layer`: None for `LinearAttention2(eps=attn_eps)`, else a class called as
    `attn_layer(dim, num_heads, qkv_bias=qkv_bias)` (e.g. `attention.Attention`, softmax).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-8, attn_eps: float = 0.0,
                 attn_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = (LinearAttention2(dim, num_heads, qkv_bias=qkv_bias, eps=attn_eps)
                     if attn_layer is None else attn_layer(dim, num_heads, qkv_bias=qkv_bias))
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attn_mask`: see `Dinomaly.generate_mask` (the linear attention ignores it)."""
        y = self.norm1(x)
        x = x + (self.attn(y) if attn_mask is None else self.attn(y, attn_mask=attn_mask))
        x = x + self.mlp(self.norm2(x))
        return x


NoisyBottleneck = bMlp  # the paper's name
LinearAttentionBlock = Block
