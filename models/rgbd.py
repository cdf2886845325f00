"""Dinomaly2's RGB + depth model (`DinomalyRGBD`, as the preview code names it): one frozen
encoder for both modalities, their layers averaged, then Dinomaly2's bottleneck, decoder
and targets.

The input is `B × 6 × H × W`: RGB, then the depth rendered as a 3-channel image
(`dataset.MVTec3DDataset`). Both halves go through the encoder as one `2B` batch; each kept
layer is merged `rgb_ratio · rgb + (1 − rgb_ratio) · depth`; from there on the model is
`dinomaly2.Dinomaly` (it inherits the bottleneck input, the decoder, the groups), except for
the encoder targets: `cls · add_class_token_weight + patches` (patches only for a weight of
0), layer normalised without affine parameters with `norm_encoder_token`. The 3D script's
arguments (weight −1, normalised) make that exactly Dinomaly2's context-aware recentering of
the merged features.

References: the Dinomaly2 preview code (`models/uad.py: DinomalyRGBD`, `dinomaly_mvtec3d.py`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .dinomaly2 import EIGHT, RECENTER_EPS, Dinomaly
from .encoder_pass import encode_layers

ONE_GROUP = (EIGHT,)


class DinomalyRGBD(Dinomaly):
    """`forward(x)`: `B × 6 × H × W -> (en, de)`, one map `B × C × h × w` per fusion group.

    Args (the preview code's, with its defaults; the 3D script passes the `--lc` groups,
    `add_class_token_weight=-1.`, `norm_encoder_token=True`, `rgb_ratio=0.5`):
        encoder, bottleneck, decoder, target_layers, fuse_layer_encoder, fuse_layer_decoder,
            fuse_layer_bottleneck, mask_neighbor_size: as `Dinomaly`'s (one group by default).
        remove_class_token: the prefix tokens are cut from the kept layers before the merge
            (no cls token left for the targets).
        add_class_token_weight: the targets are `cls · weight + patches` (0: patches only).
        norm_encoder_token: layer norm (eps 1e-8, no affine) of the targets.
        encoder_require_grad_layer: encoder blocks run in the caller's gradient mode.
        rgb_ratio: the RGB share of the merged layers.

    An encoder without `num_register_tokens` gets 0 (the preview's rule here; this project's
    encoders all have one, DINOv3's storage tokens included).
    """

    def __init__(self, encoder: nn.Module, bottleneck: nn.ModuleList, decoder: nn.ModuleList,
                 target_layers: list[int] = (2, 3, 4, 5, 6, 7, 8, 9),
                 fuse_layer_encoder: list[list[int]] = ONE_GROUP,
                 fuse_layer_decoder: list[list[int]] = ONE_GROUP,
                 fuse_layer_bottleneck: list[int] = EIGHT, mask_neighbor_size: int = 0,
                 remove_class_token: bool = False, add_class_token_weight: float = 0.,
                 norm_encoder_token: bool = False, encoder_require_grad_layer: list[int] = (),
                 rgb_ratio: float = 0.5) -> None:
        if not hasattr(encoder, "num_register_tokens"):
            encoder.num_register_tokens = 0
        super().__init__(encoder, bottleneck, decoder, target_layers, fuse_layer_encoder,
                         fuse_layer_decoder, fuse_layer_bottleneck, mask_neighbor_size,
                         remove_class_token, context_aware_recenter=False)
        self.add_class_token_weight = add_class_token_weight
        self.norm_encoder_token = norm_encoder_token
        self.encoder_require_grad_layer = [int(i) for i in encoder_require_grad_layer]
        self.rgb_ratio = rgb_ratio

    def merged_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The kept layers of RGB `x[:, :3]` and depth `x[:, 3:]` (one `2B` encoder pass; the
        prefix cut with `remove_class_token`), merged `rgb_ratio · rgb + (1 − rgb_ratio) ·
        depth` -> `B × T × C` each."""
        if x.dim() != 4 or x.shape[1] != 6:
            raise ValueError(f"DinomalyRGBD takes B × 6 × H × W (RGB then depth), got {tuple(x.shape)}")
        B = x.shape[0]
        en_list = encode_layers(self.encoder, torch.cat([x[:, :3], x[:, 3:]], dim=0),
                                self.target_layers, self.encoder_require_grad_layer)
        if self.remove_class_token:
            en_list = [e[:, self.num_prefix_tokens:] for e in en_list]
        return [self.rgb_ratio * e[:B] + (1 - self.rgb_ratio) * e[B:] for e in en_list]

    def encoder_target(self, group: torch.Tensor) -> torch.Tensor:
        """`B × T × C -> B × N × C`: `cls · add_class_token_weight + patches` (patches only
        for a weight of 0, or when `remove_class_token` left no cls), then the layer norm
        with `norm_encoder_token`."""
        if not self.remove_class_token:
            patches = group[:, self.num_prefix_tokens:]
            weight = self.add_class_token_weight
            group = group[:, :1] * weight + patches if weight != 0 else patches
        if self.norm_encoder_token:
            group = F.layer_norm(group, group.shape[-1:], eps=RECENTER_EPS)
        return group

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        en_list = self.merged_layers(x)
        n_h, n_w = self.patch_grid(x, en_list[0].shape[1] + (
            self.num_prefix_tokens if self.remove_class_token else 0))
        de = self.decoder_groups(self.reconstruct(en_list, n_h, n_w))
        en = [self.fuse_feature([en_list[i] for i in g]) for g in self.fuse_layer_encoder]
        en = [self.encoder_target(e) for e in en]
        return self.to_maps(en, n_h, n_w), self.to_maps(de, n_h, n_w)
