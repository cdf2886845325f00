"""Rotary position embedding (RoPE) on a 2-D patch grid, as in DINOv3.

References: Su et al. 2021, "RoFormer", eq. 34 (the rotation, `rotate_half` form);
Heo et al. 2024, "Rotary Position Embedding for Vision Transformer" (axial 2-D RoPE);
the DINOv3 paper (Siméoni et al. 2025) §3 for the normalised coordinates. The exact
recipe (coordinates, angle layout, float32) is written out in `RopePositionEmbedding`.
"""
import math

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`[x1, x2] -> [-x2, x1]`, the halves taken along the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate `x (…, N, D)` by the angles whose `sin`, `cos` are `(N, D)`: `x·cos + rot(x)·sin`.

    Computed in the dtype of `sin` (float32) and cast back, as the official RoPE is kept
    in float32 whatever the activations' dtype.
    """
    dtype = x.dtype
    x = x.to(sin.dtype)
    x = x * cos + rotate_half(x) * sin
    return x.to(dtype)


class RopePositionEmbedding(nn.Module):
    """`forward(H, W) -> (sin, cos)`, each `(H·W, D)` float32, for an `H × W` patch grid.

    `periods` (`D/4` values per head dimension `D`) is a stored buffer: built as
    `base^(2i/(D/2))` for a fresh model, but the released checkpoints hold it rounded to
    bf16 (1.0, 1.3359375, …, 75.0), and the loaded values are what the forward uses.
    There is no training-mode coordinate jitter or rescaling here: the encoder is frozen
    and always runs in eval mode (see `DinoVisionTransformer.train`).
    """

    def __init__(self, embed_dim: int, num_heads: int, base: float = 100.0) -> None:
        super().__init__()
        head_dim = embed_dim // num_heads
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)
        self.register_buffer("periods", base ** exponents)  # D/4

    def forward(self, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        periods = self.periods.float()
        kw = {"device": periods.device, "dtype": torch.float32}
        # patch centres, each axis normalised on its own ("separate") to (-1, 1)
        coords_h = torch.arange(0.5, H, **kw) / H  # H
        coords_w = torch.arange(0.5, W, **kw) / W  # W
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)  # H, W, 2
        coords = coords.flatten(0, 1)  # H, W, 2 -> H·W, 2 (row-major, as the patch tokens)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # H·W, 2, D/4
        angles = angles.flatten(1, 2)  # H·W, D/2: all h-angles, then all w-angles
        angles = angles.tile(2)  # H·W, D: the same angle for x1[i] and x2[i] of rotate_half
        return torch.sin(angles), torch.cos(angles)
