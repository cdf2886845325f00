"""DINOv3 ViT (Siméoni et al. 2025), inference part only, for a frozen Dinomaly encoder.

Differences from DINOv2: patch 16, no absolute position embedding (RoPE inside every
attention layer instead), 4 "storage" tokens (DINOv2's registers), a masked k bias,
LayerNorm eps 1e-5, SwiGLU in S+ and H+. The module keeps every parameter and buffer of
the official checkpoints (all blocks, the final norm, the mask token, the RoPE periods)
so that `state_dict()` matches them key for key, though Dinomaly never runs the final
norm or the mask token. Written from the published facts; no code taken from Meta's release.
"""
import torch
from torch import nn

from ..init import trunc_normal_
from .block import Block
from .patch_embed import PatchEmbed
from .rope import RopePositionEmbedding


class DinoVisionTransformer(nn.Module):
    """`forward(x)`: all blocks and the final norm, `(B, 3, H, W) -> (B, 5 + h·w, C)`."""

    def __init__(self, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, ffn_ratio: float = 4.0, ffn: str = "mlp",
                 n_storage_tokens: int = 4, init_values: float = 1e-5, rope_base: float = 100.0,
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.n_storage_tokens = n_storage_tokens
        self.num_register_tokens = n_storage_tokens  # DINOv2's name for the same tokens
        self.num_prefix_tokens = 1 + n_storage_tokens  # cls + storage, before the patches
        # own parameters first: the state_dict then lists keys in the official order
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # kept for the keys; unused
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.rope_embed = RopePositionEmbedding(embed_dim, num_heads, base=rope_base)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, ffn_ratio, ffn, init_values, fused_attn)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)  # kept for the keys; Dinomaly skips it
        self.init_weights()
        self.train(False)

    def init_weights(self) -> None:
        """A sane random model (tests, smoke runs): small tokens, truncated-normal Linear
        weights, zero biases. `bias_mask`, `periods` and LayerScale are set by their modules."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)  # the project's one truncated normal
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "DinoVisionTransformer":
        """Always eval mode, whatever `mode` (and so whatever `model.train()` asks).

        In training mode the official RoPE rescales the patch coordinates at random in every
        block (an augmentation of DINOv3's own training); a frozen Dinomaly encoder must
        give the same features at every step, so it can never be put in that mode. Our RoPE
        has no such branch; refusing the mode keeps `training` honest for any code that
        reads it.
        """
        return super().train(False)

    def rope(self, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(sin, cos)`, each `(h·w, head_dim)` float32, for an `H × W` pixel input."""
        return self.rope_embed(H // self.patch_size, W // self.patch_size)

    def block_args(self, height: int, width: int) -> tuple:
        """`(rope,)`: what every block takes besides the tokens (the `Encoder` protocol)."""
        return (self.rope(height, width),)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W) -> (B, 5 + h·w, C)`, tokens `[cls, storage ×4, patches row-major]`.

        No position is added here: it enters through RoPE in every attention layer.
        (The official cls is `cls + 0·mask_token`: the same value.)
        """
        B = x.shape[0]
        x = self.patch_embed(x)  # B, h·w, C
        prefix = torch.cat((self.cls_token, self.storage_tokens), dim=1).expand(B, -1, -1)
        return torch.cat((prefix, x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        x = self.prepare_tokens(x)
        rope = self.rope(H, W)
        for blk in self.blocks:
            x = blk(x, rope)
        return self.norm(x)
