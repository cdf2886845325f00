"""Non-overlapping 16×16 patch embedding of the DINOv3 ViTs."""
import torch
from torch import nn


class PatchEmbed(nn.Module):
    """`(B, 3, H, W) -> (B, N, C)` with `N = (H/p)·(W/p)`, row-major patches; no norm.

    The official code floors silently when a side is not a multiple of the patch (the
    last pixels are dropped); here that is an error, so a wrong crop cannot go unnoticed.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"input of {H}×{W} px: each side must be a multiple of the "
                             f"encoder's patch size {self.patch_size} (e.g. a crop of 448 "
                             f"or 224 px)")
        x = self.proj(x)  # B, C, h, w
        x = x.flatten(2).transpose(1, 2)  # B, C, h, w -> B, h*w, C
        return x
