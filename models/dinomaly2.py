"""Dinomaly2's reconstruction model (`Dinomaly`, as the preview code names it): Dinomaly's
frozen encoder → bottleneck → decoder, with the encoder targets recentred on the image's
context ("context-aware recentering").

Differences from Dinomaly (`uad.ViTill`): each encoder fusion group's patch tokens minus
that group's cls token, layer normalised without affine parameters, are the reconstruction
target (the decoder side stays raw); the kept layers averaged into the bottleneck are a
choice (`fuse_layer_bottleneck`, default all); optional neighbour masking of the decoder's
softmax attention; the three-layer bottleneck (`build2.dinomaly2_bottleneck`).

References: the Dinomaly2 preview code (`models/uad.py: Dinomaly`); Guo et al., "One
Dinomaly2 Detect Them All" (arXiv 2510.17611).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .encoder_pass import LayerReconstruction
from .init import init_trainable

EIGHT = (0, 1, 2, 3, 4, 5, 6, 7)
RECENTER_EPS = 1e-8  # the preview code's layer-norm epsilon of the recentred targets


def ensure_register_tokens(encoder: nn.Module) -> int:
    """The preview code's rule: an encoder without `num_register_tokens` gets one, equal to
    its `n_storage_tokens` (DINOv3) if it has that, else 0. Returns the count."""
    if not hasattr(encoder, "num_register_tokens"):
        encoder.num_register_tokens = getattr(encoder, "n_storage_tokens", 0)
    return encoder.num_register_tokens


def recenter(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """Context-aware recentering of one fused encoder group, `B × (prefix + N) × C ->
    B × N × C`: the patch tokens minus the group's own cls token (token 0), then
    `(d − mean_c d) / sqrt(var_c d + 1e-8)` over channels (biased variance, no affine)."""
    centred = tokens[:, prefix:] - tokens[:, :1]
    return F.layer_norm(centred, centred.shape[-1:], eps=RECENTER_EPS)


def neighbour_mask(side: int, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """`side² × side²` ones, 0 where the key lies in the `size` window of the query:
    `|Δrow| ≤ size // 2` and `|Δcol| ≤ size // 2` (clipped at the borders; an even
    `size` therefore gives a `size + 1` window, as the preview code's loop does)."""
    idx = torch.arange(side, device=device)
    near = (idx[:, None] - idx[None, :]).abs() <= size // 2  # side × side
    blocked = near[:, None, :, None] & near[None, :, None, :]  # h1, w1, h2, w2
    return (~blocked).float().view(side * side, side * side)


class Dinomaly(LayerReconstruction):
    """`forward(x)`: `B × 3 × H × W -> (en, de)`, two lists with one map `B × C × h × w` per
    fusion group (h = H / patch); `en` the recentred encoder targets (with
    `context_aware_recenter`), `de` the decoder's reconstructions.

    Args (the preview code's, with its defaults):
        encoder, bottleneck (`ModuleList`, applied in order), decoder (`ModuleList` of blocks).
        target_layers: encoder blocks whose outputs are kept (ascending).
        fuse_layer_encoder, fuse_layer_decoder: fusion groups, indices into the kept layers
            and into the decoder outputs reversed (index 0 = the last block).
        fuse_layer_bottleneck: kept layers averaged into the bottleneck input.
        mask_neighbor_size: > 0 blocks each query's neighbour window in the decoder's
            softmax attention (`generate_mask`; linear attention ignores it).
        remove_class_token: the cls and register tokens never enter the bottleneck.
        context_aware_recenter: the recentred targets (`recenter`); False: raw patch tokens.
        use_get_intermediate: the preview code's switch to take the kept layers with the
            encoder's own intermediate-layer function (all blocks run) instead of its
            early-stopping loop. Kept for the preview's signature; with this project's
            encoders both give the same tensors, so the early-stopping pass serves both.
    """

    def __init__(self, encoder: nn.Module, bottleneck: nn.ModuleList, decoder: nn.ModuleList,
                 target_layers: list[int] = (2, 3, 4, 5, 6, 7, 8, 9),
                 fuse_layer_encoder: list[list[int]] = ((0, 1, 2, 3), (4, 5, 6, 7)),
                 fuse_layer_decoder: list[list[int]] = ((0, 1, 2, 3), (4, 5, 6, 7)),
                 fuse_layer_bottleneck: list[int] = EIGHT, mask_neighbor_size: int = 0,
                 remove_class_token: bool = False, context_aware_recenter: bool = True,
                 use_get_intermediate: bool = False) -> None:
        ensure_register_tokens(encoder)
        super().__init__(encoder, bottleneck, decoder, target_layers, fuse_layer_encoder,
                         fuse_layer_decoder)
        self.fuse_layer_bottleneck = list(fuse_layer_bottleneck)
        self.mask_neighbor_size = mask_neighbor_size
        self.remove_class_token = remove_class_token
        self.context_aware_recenter = context_aware_recenter
        self.use_get_intermediate = use_get_intermediate


    def init_weights(self) -> None:
        """The preview code's init of the bottleneck, then the decoder, in registration order:
        Linear weights truncated normal (std 0.01, cut at ±0.03), biases 0; LayerNorm 1/0.
        Draws from the generator of the weights' device: call it after `.to(device)`."""
        init_trainable(self.bottleneck, self.decoder)

    def generate_mask(self, feature_size: int, device: torch.device | str | None = None
                      ) -> torch.Tensor:
        """The decoder's attention mask for a `feature_size²` patch grid: 1 = attend, 0 =
        blocked (`neighbour_mask`); unless `remove_class_token`, embedded in ones of side
        `feature_size² + prefix` (the cls and register rows and columns attend everywhere).
        `device`: None = the model's."""
        device = device if device is not None else next(self.decoder.parameters()).device
        mask = neighbour_mask(feature_size, self.mask_neighbor_size, device)
        if self.remove_class_token:
            return mask
        n = mask.shape[0] + self.num_prefix_tokens
        mask_all = torch.ones(n, n, device=device)
        mask_all[self.num_prefix_tokens:, self.num_prefix_tokens:] = mask
        return mask_all

    def patch_grid(self, x: torch.Tensor, n_tokens: int) -> tuple[int, int]:
        """Patch rows and columns of input `x`. The preview code takes
        `side = int(sqrt(n_tokens − prefix))` for both: the same for a square input, and
        still the rule for an encoder without `patch_size`; with one, rectangles work too."""
        patch = getattr(self.encoder, "patch_size", None)
        if not isinstance(patch, int):
            side = int(math.sqrt(n_tokens - self.num_prefix_tokens))
            return side, side
        return x.shape[-2] // patch, x.shape[-1] // patch

    def decode(self, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Bottleneck, then every decoder block; the block outputs, last block first."""
        for blk in self.bottleneck:
            x = blk(x)
        de_list = []
        for blk in self.decoder:
            x = blk(x, attn_mask=mask)
            de_list.append(x)
        return de_list[::-1]

    def reconstruct(self, kept: list[torch.Tensor], n_h: int, n_w: int) -> list[torch.Tensor]:
        """The decoder's outputs, last block first, from the kept encoder layers
        `B × T × C`: the mean of the `fuse_layer_bottleneck` layers, detached, through the
        bottleneck and the decoder (with the neighbour mask when `mask_neighbor_size > 0`)."""
        fused = self.fuse_feature([kept[i] for i in self.fuse_layer_bottleneck]).detach()
        mask = None
        if self.mask_neighbor_size > 0:
            if n_h != n_w:
                raise ValueError(f"mask_neighbor_size needs a square input, got {n_h} × {n_w} "
                                 "patches")
            mask = self.generate_mask(n_h, fused.device)
        return self.decode(fused, mask)

    def decoder_groups(self, de_list: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's fusion groups `B × N × C` (the prefix cut unless `remove_class_token`
        took it before the bottleneck)."""
        de = [self.fuse_feature([de_list[i] for i in g]) for g in self.fuse_layer_decoder]
        return de if self.remove_class_token else [d[:, self.num_prefix_tokens:] for d in de]

    def encoder_target(self, group: torch.Tensor) -> torch.Tensor:
        """One fused encoder group `B × (prefix + N) × C` -> its target `B × N × C`: recentred
        (`context_aware_recenter`), else its patch tokens."""
        prefix = self.num_prefix_tokens
        return recenter(group, prefix) if self.context_aware_recenter else group[:, prefix:]

    @staticmethod
    def to_maps(tokens: list[torch.Tensor], n_h: int, n_w: int) -> list[torch.Tensor]:
        """`B × N × C -> B × C × h × w` for every group."""
        return [t.permute(0, 2, 1).reshape(t.shape[0], -1, n_h, n_w).contiguous() for t in tokens]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        prefix = self.num_prefix_tokens
        en_list = self.encode(x)
        n_h, n_w = self.patch_grid(x, en_list[0].shape[1])
        kept = [e[:, prefix:] for e in en_list] if self.remove_class_token else en_list
        de = self.decoder_groups(self.reconstruct(kept, n_h, n_w))
        en = [self.fuse_feature([en_list[i] for i in g]) for g in self.fuse_layer_encoder]
        en = [self.encoder_target(e) for e in en]
        return self.to_maps(en, n_h, n_w), self.to_maps(de, n_h, n_w)
