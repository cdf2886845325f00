"""`build_dinomaly2` and `build_dinomaly2_rgbd`: Dinomaly2's models from an encoder name,
built as the preview code's 2D and 3D scripts build them (their order of construction fixes
every random draw).

References: the Dinomaly2 preview code (`dinomaly_2D.py`, `dinomaly_mvtec3d.py`: bottleneck, decoder, `--la`,
`--lc`, `--cr`, `--dropout`).
"""
import torch
from torch import nn

from . import vit_encoder
from .attention import Attention
from .dinomaly2 import Dinomaly
from .rgbd import DinomalyRGBD
from .vision_transformer import Block

# `--lc`: the fusion groups, indices into the 8 kept encoder layers and into the reversed
# decoder outputs (the same groups on both sides)
LOOSE_GROUPS = {
    0: [[0], [1], [2], [3], [4], [5], [6], [7]],  # layer to layer
    1: [[0, 1, 2, 3, 4, 5, 6, 7]],  # one group
    2: [[0, 1, 2, 3], [4, 5, 6, 7]],  # two groups: the default (Dinomaly's setting)
    3: [[0, 1, 2], [3, 4, 5], [6, 7]],
    4: [[0, 1], [2, 3], [4, 5], [6, 7]],
    11: [[7]],  # sparse: the deepest kept layer only
    12: [[3], [7]],
    14: [[1], [3], [5], [7]],
}
BOTTLENECK_WIDTH = 256  # the first bottleneck layer's output width
NORM_EPS = 1e-8  # the decoder's LayerNorm epsilon
ATTN_EPS = 1e-8  # LinearAttention2's denominator guard in every script of the preview code


def loose_group_list(lc: int) -> list[list[int]]:
    """The fusion groups of an `--lc` value; ValueError naming the allowed values."""
    if isinstance(lc, bool) or lc not in LOOSE_GROUPS:
        allowed = ", ".join(str(k) for k in LOOSE_GROUPS)
        raise ValueError(f"--lc {lc!r} is not a fusion grouping; allowed values: {allowed}")
    return [list(g) for g in LOOSE_GROUPS[lc]]


def dinomaly2_bottleneck(dim: int, dropout: float) -> nn.ModuleList:
    """`C -> 256 -> 4C -> C`: `[Sequential(Linear(C, 256), Dropout),
    Sequential(Linear(256, 4C), GELU, Dropout, Linear(4C, C), Dropout)]`, `B × N × C` in and
    out; no dropout on the input (Dinomaly's had one). Two modules, as the preview code has
    them (state_dict `bottleneck.0.0`, `bottleneck.1.0`, `bottleneck.1.3`; the first one is
    the layer that gets the smaller learning rate)."""
    return nn.ModuleList([
        nn.Sequential(nn.Linear(dim, BOTTLENECK_WIDTH), nn.Dropout(dropout)),
        nn.Sequential(nn.Linear(BOTTLENECK_WIDTH, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                      nn.Linear(4 * dim, dim), nn.Dropout(dropout)),
    ])


def dinomaly2_decoder(dim: int, num_heads: int, linear_attention: bool = True,
                      depth: int = 8, attn_eps: float = ATTN_EPS) -> nn.ModuleList:
    """`depth` pre-norm blocks (MLP ×4, qkv bias, LayerNorm eps 1e-8): linear attention with
    `attn_eps` (1e-8, `--la 1`) or softmax attention with DropKey p = 0 (`--la 0`)."""
    attn_layer = None if linear_attention else Attention
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_eps=NORM_EPS,
                               attn_eps=attn_eps, attn_layer=attn_layer) for _ in range(depth))


def build_dinomaly2(encoder_name: str, weights: str = "official", dropout: float = 0.4,
                    recenter: bool = True, linear_attention: bool = True, loose_groups: int = 2,
                    *, device: str | torch.device | None = None,
                    fused_attn: bool = True, attn_eps: float = ATTN_EPS) -> Dinomaly:
    """Dinomaly2's model as the preview code's 2D script builds it.

    In its order: the encoder (for DINOv2, after the draws of the DINOv1 ViT the preview's
    loader builds and drops), the bottleneck and the decoder (their default `nn.Linear`
    init), the model, `.to(device)`, then `init_weights()` (on CUDA from the CUDA generator).
    So for the same seed the initial weights and generator states are the preview's.

    Args:
        encoder_name: a registered encoder name (`models.encoder_names()`).
        weights: `'official'`, `'random'` (skips only the file load: the draws stay the
            same) or a path to the encoder's weights file.
        dropout: the bottleneck's dropout (`--dropout`; 0.2 in the MulSen script).
        recenter: context-aware recentering of the targets (`--cr`).
        linear_attention: the decoder's attention (`--la`): linear, or softmax.
        loose_groups: the fusion groups, an `--lc` value (`LOOSE_GROUPS`).
        device: where the model goes before `init_weights` (None: stays on the CPU).
        fused_attn: the encoder's attention through `F.scaled_dot_product_attention`.
        attn_eps: the linear attention's denominator guard (1e-8 in every preview script).
    """
    groups = loose_group_list(loose_groups)
    family, arch, encoder, bottleneck, decoder = _parts(encoder_name, weights, dropout,
                                                        linear_attention, fused_attn, attn_eps)
    model = Dinomaly(encoder, bottleneck, decoder, target_layers=list(arch.target_layers),
                     fuse_layer_encoder=groups, fuse_layer_decoder=groups,
                     context_aware_recenter=recenter,
                     # what the preview code's README asks for DINOv3 (same tensors here)
                     use_get_intermediate=family.intermediate_layers)
    return _placed(model, device)


def build_dinomaly2_rgbd(encoder_name: str, weights: str = "official", dropout: float = 0.4,
                         linear_attention: bool = True, loose_groups: int = 2,
                         rgb_ratio: float = 0.5, add_class_token_weight: float = -1.0,
                         norm_encoder_token: bool = True, *,
                         device: str | torch.device | None = None,
                         fused_attn: bool = True, attn_eps: float = ATTN_EPS) -> DinomalyRGBD:
    """Dinomaly2's RGB + depth model as the preview code's 3D script builds it: the same
    construction and draws as `build_dinomaly2` (same rules for `weights`, `device`), the
    model a `DinomalyRGBD` with the script's arguments (the `--lc` groups on both sides,
    the targets `patches − cls` layer normalised, RGB and depth layers averaged 0.5 / 0.5).
    The script has no `--cr` (its targets are always recentred)."""
    groups = loose_group_list(loose_groups)
    _, arch, encoder, bottleneck, decoder = _parts(encoder_name, weights, dropout,
                                                   linear_attention, fused_attn, attn_eps)
    model = DinomalyRGBD(encoder, bottleneck, decoder, target_layers=list(arch.target_layers),
                         fuse_layer_encoder=groups, fuse_layer_decoder=groups,
                         add_class_token_weight=add_class_token_weight,
                         norm_encoder_token=norm_encoder_token, rgb_ratio=rgb_ratio)
    return _placed(model, device)


def _parts(encoder_name: str, weights: str, dropout: float, linear_attention: bool,
           fused_attn: bool, attn_eps: float = 1e-8) -> tuple:
    """(family, arch, encoder, bottleneck, decoder), built in the preview scripts' order."""
    family, arch = vit_encoder.find_encoder(encoder_name)
    encoder = vit_encoder.load(encoder_name, weights, fused_attn=fused_attn)
    dim, heads = encoder.embed_dim, encoder.num_heads
    bottleneck = dinomaly2_bottleneck(dim, dropout)
    decoder = dinomaly2_decoder(dim, heads, linear_attention, attn_eps=attn_eps)
    return family, arch, encoder, bottleneck, decoder


def _placed(model: Dinomaly, device: str | torch.device | None) -> Dinomaly:
    """`.to(device)`, then `init_weights()` (the draws from that device's generator)."""
    if device is not None:
        model = model.to(device)
    model.init_weights()
    return model
