"""The frozen encoder's pass, shared by Dinomaly (`uad.ViTill`) and Dinomaly2
(`dinomaly2.Dinomaly`): its tokens, the outputs of the target blocks, the mean of layers,
and what the two models hold (`LayerReconstruction`).
Any encoder of the `encoder_family.Encoder` protocol: the extra arguments its blocks take
(DINOv3: the rotary position embedding) come from its `block_args`, once per input.
"""
from collections.abc import Sequence

import torch
from torch import nn


def encode_layers(encoder: nn.Module, x: torch.Tensor, target_layers: list[int],
                  grad_layers: Sequence[int] = ()) -> list[torch.Tensor]:
    """Outputs `B × (1 + R + N) × C` of the blocks listed in `target_layers` (ascending), in
    that order, without gradient and without the final norm. `x`: `B × 3 × H × W`.
    `grad_layers`: blocks that run in the caller's gradient mode instead (the preview code's
    `encoder_require_grad_layer` of its RGB-D model; none in its scripts).

    Blocks past the last target never run: their outputs could not change the earlier ones,
    so this equals running every block and keeping the listed outputs (the preview code's
    `use_get_intermediate` path for DINOv3), with fewer blocks computed.
    """
    if grad_layers:
        return _encode_with_grad(encoder, x, target_layers, set(grad_layers))
    H, W = x.shape[-2:]
    with torch.no_grad():
        x = encoder.prepare_tokens(x)
        args = encoder.block_args(H, W)  # once per input (DINOv3: the RoPE sin/cos)
        en_list = []
        for i, blk in enumerate(encoder.blocks[: target_layers[-1] + 1]):
            x = blk(x, *args)
            if i in target_layers:
                en_list.append(x)
    return en_list


def _encode_with_grad(encoder: nn.Module, x: torch.Tensor, target_layers: list[int],
                      grad_layers: set[int]) -> list[torch.Tensor]:
    """`encode_layers` with the blocks of `grad_layers` run in the caller's gradient mode."""
    H, W = x.shape[-2:]
    caller = torch.is_grad_enabled()
    with torch.no_grad():
        x = encoder.prepare_tokens(x)
        args = encoder.block_args(H, W)
    en_list = []
    for i, blk in enumerate(encoder.blocks[: target_layers[-1] + 1]):
        with torch.set_grad_enabled(caller and i in grad_layers):
            x = blk(x, *args)
        if i in target_layers:
            en_list.append(x)
    return en_list


def fuse_feature(feat_list: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise mean of equally shaped tensors (the layers of one fusion group)."""
    return torch.stack(feat_list, dim=1).mean(dim=1)


class LayerReconstruction(nn.Module):
    """What the Dinomaly models share: a frozen `encoder` (an `encoder_family.Encoder`) whose
    `target_layers` outputs a `bottleneck` and a `decoder` reconstruct, compared in groups of
    layers (`fuse_layer_encoder`, `fuse_layer_decoder`). The state_dict's prefixes are
    `encoder.`, `bottleneck.`, `decoder.`, in that order (the reference's)."""

    def __init__(self, encoder: nn.Module, bottleneck: nn.ModuleList, decoder: nn.ModuleList,
                 target_layers, fuse_layer_encoder, fuse_layer_decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.bottleneck = bottleneck
        self.decoder = decoder
        self.target_layers = [int(i) for i in target_layers]
        self.fuse_layer_encoder = [list(g) for g in fuse_layer_encoder]
        self.fuse_layer_decoder = [list(g) for g in fuse_layer_decoder]

    @property
    def num_prefix_tokens(self) -> int:
        """cls + register (DINOv3: storage) tokens, before the patch tokens."""
        return 1 + self.encoder.num_register_tokens

    fuse_feature = staticmethod(fuse_feature)  # element-wise mean of equally shaped tensors

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs `B × (prefix + N) × C` of the target blocks; blocks past the last one never run."""
        return encode_layers(self.encoder, x, self.target_layers)
