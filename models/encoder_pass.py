"""The frozen encoder's pass, shared by Dinomaly (`uad.ViTill`) and Dinomaly2
(`dinomaly2.Dinomaly`): its tokens, the outputs of the target blocks, and the mean of layers.

The one encoder-family rule of the pass lives here: DINOv3 blocks take the rotary position
embedding with the tokens (`blk(x, rope)`), DINOv2 blocks the tokens alone.
"""
import torch
from torch import nn

from .dinov3 import DinoVisionTransformer as DinoV3VisionTransformer


def uses_rope(encoder: nn.Module) -> bool:
    """Whether the encoder's blocks take `(x, rope)` (DINOv3) rather than `x` (DINOv2)."""
    return isinstance(encoder, DinoV3VisionTransformer)


def encode_layers(encoder: nn.Module, x: torch.Tensor, target_layers: list[int],
                  rope: bool) -> list[torch.Tensor]:
    """Outputs `B × (1 + R + N) × C` of the blocks listed in `target_layers` (ascending), in
    that order, without gradient and without the final norm. `x`: `B × 3 × H × W`.

    Blocks past the last target never run: their outputs could not change the earlier ones,
    so this equals running every block and keeping the listed outputs (the preview code's
    `use_get_intermediate` path for DINOv3), with fewer blocks computed.
    """
    H, W = x.shape[-2:]
    with torch.no_grad():
        x = encoder.prepare_tokens(x)
        position = encoder.rope(H, W) if rope else None  # DINOv3: once per input
        en_list = []
        for i, blk in enumerate(encoder.blocks[: target_layers[-1] + 1]):
            x = blk(x) if position is None else blk(x, position)
            if i in target_layers:
                en_list.append(x)
    return en_list


def fuse_feature(feat_list: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise mean of equally shaped tensors (the layers of one fusion group)."""
    return torch.stack(feat_list, dim=1).mean(dim=1)
