"""Non-overlapping patch embedding."""
import torch
from torch import nn


class PatchEmbed(nn.Module):
    """`(B, 3, H, W) -> (B, N, C)` with `N = (H/p)·(W/p)`, row-major patches."""

    def __init__(self, img_size: int = 518, patch_size: int = 14, in_chans: int = 3,
                 embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # B, C, h, w
        x = x.flatten(2).transpose(1, 2)  # B, C, h, w -> B, h*w, C
        return x
