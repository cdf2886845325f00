"""Dinomaly's reconstruction model (paper §3, Fig. 2): frozen encoder → noisy bottleneck →
linear-attention decoder, compared group by group ("loose reconstruction", §3.4)."""
import torch
from torch import nn

from .dinomaly2 import Dinomaly  # noqa: F401  (Dinomaly2's model, here as in the preview code)
from .rgbd import DinomalyRGBD  # noqa: F401  (and its RGB + depth model)
from .encoder_family import Encoder
from .encoder_pass import LayerReconstruction


class ViTill(LayerReconstruction):
    """`forward(x)`: `(B, 3, H, W) -> (en, de)`, two lists of `len(fuse_layer_*)` maps
    `B × C × H/p × W/p`, p the encoder's patch (14 or 16) (encoder groups, decoder groups).

    `patch_tokens_only=False` (the reference, DINOv2): all tokens, cls and registers
    included, enter the bottleneck and the decoder, and are dropped only for the maps.
    `True` (the DINOv3 fork): cls and storage tokens are dropped right after the encoder.
    The encoder is any `encoder_family.Encoder`.
    """

    def __init__(self, encoder: Encoder, bottleneck: nn.ModuleList,
                 decoder: nn.ModuleList, target_layers: list[int] = (2, 3, 4, 5, 6, 7, 8, 9),
                 fuse_layer_encoder: list[list[int]] = ((0, 1, 2, 3, 4, 5, 6, 7),),
                 fuse_layer_decoder: list[list[int]] = ((0, 1, 2, 3, 4, 5, 6, 7),),
                 patch_tokens_only: bool = False) -> None:
        super().__init__(encoder, bottleneck, decoder, target_layers, fuse_layer_encoder,
                         fuse_layer_decoder)
        self.patch_tokens_only = patch_tokens_only

    def to_maps(self, tokens: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
        """Drop cls and register tokens: `(B, 1 + R + h·w, C) -> (B, C, h, w)` (with
        `patch_tokens_only`, they are gone already: `(B, h·w, C) -> (B, C, h, w)`)."""
        B, _, C = tokens.shape
        patches = tokens[:, 0 if self.patch_tokens_only else self.num_prefix_tokens:, :]
        return patches.permute(0, 2, 1).reshape(B, C, n_h, n_w).contiguous()  # B, N, C -> B, C, h, w

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n_h, n_w = x.shape[-2] // self.encoder.patch_size, x.shape[-1] // self.encoder.patch_size
        en_list = self.encode(x)
        if self.patch_tokens_only:  # the DINOv3 fork: B, 5 + h·w, C -> B, h·w, C
            en_list = [e[:, self.num_prefix_tokens:] for e in en_list]
        x = self.fuse_feature(en_list)  # DINOv2: all tokens, cls and registers included
        for blk in self.bottleneck:
            x = blk(x)
        de_list = []
        for blk in self.decoder:
            x = blk(x)
            de_list.append(x)
        de_list = de_list[::-1]  # index 0 = last decoder block, mirrors the encoder order
        en = [self.fuse_feature([en_list[i] for i in g]) for g in self.fuse_layer_encoder]
        de = [self.fuse_feature([de_list[i] for i in g]) for g in self.fuse_layer_decoder]
        en = [self.to_maps(e, n_h, n_w) for e in en]
        de = [self.to_maps(d, n_h, n_w) for d in de]
        return en, de
