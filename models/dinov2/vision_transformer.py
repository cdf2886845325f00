"""DINOv2 ViT (Oquab et al. 2023; registers: Darcet et al. 2024), inference part only.

The module keeps every parameter of the official checkpoints (all blocks, the final
norm, the mask token) so that `state_dict()` matches them key for key, though Dinomaly
never runs the final norm or the mask token.
References: facebookresearch/dinov2 `dinov2/models/vision_transformer.py`.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..init import trunc_normal_
from .block import Block
from .patch_embed import PatchEmbed


class DinoVisionTransformer(nn.Module):
    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 init_values: float = 1e-8, num_register_tokens: int = 0,
                 interpolate_offset: float = 0.1, fused_attn: bool = True) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.interpolate_offset = interpolate_offset
        # Construction and init order follow the official code, so that building the
        # encoder consumes the RNG exactly as the reference does (the decoder's initial
        # weights, drawn afterwards, then match the reference's for the same seed).
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values, fused_attn) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        # The reference's truncated normal (inverse CDF, cut at ±2 absolute), not torch 2.x's:
        # same values, same generator draws.
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():  # Linear modules in the official (depth-first) order
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, H: int, W: int) -> torch.Tensor:
        """Position embeddings for an `H × W` pixel input: `(1, 1 + n_h·n_w, C)`.

        The official recipe: bicubic resize of the 37×37 grid by `scale_factor`
        `(n + 0.1) / 37`, no antialias. A `size=` resize (or timm's antialiased
        resampler) gives different embeddings.
        """
        n_h, n_w = H // self.patch_size, W // self.patch_size
        pos_embed = self.pos_embed.float()
        n = pos_embed.shape[1] - 1
        side = int(math.sqrt(n))
        if n_h * n_w == n and H == W:  # the official shortcut: pixel sizes, not grid sizes
            return self.pos_embed
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # 1, N, C -> 1, C, 37, 37
        scale = ((n_h + self.interpolate_offset) / side, (n_w + self.interpolate_offset) / side)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=False)
        assert patch_pos.shape[-2:] == (n_h, n_w), "position grid interpolation went off size"
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, n_h * n_w, -1)  # 1, C, h, w -> 1, h*w, C
        return torch.cat((cls_pos, patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W) -> (B, 1 + R + h·w, C)`, tokens `[cls, registers, patches row-major]`."""
        B, _, H, W = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(H, W).to(x.dtype)
        if self.register_tokens is not None:  # registers carry no position embedding
            x = torch.cat((x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]), dim=1)
        return x

    # the official name, kept for code moved over from the reference
    prepare_tokens_with_masks = prepare_tokens

    def block_args(self, height: int, width: int) -> tuple:
        """Nothing: position entered with the tokens (the `Encoder` protocol)."""
        return ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All blocks and the final norm: `(B, 3, H, W) -> (B, 1 + R + h·w, C)`."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)
