"""`build_dinomaly`: the paper's model from an encoder name, with the reference's init."""
import torch
from torch import nn

from . import vit_encoder
from .init import init_trainable
from .uad import ViTill
from .vision_transformer import Block, bMlp

# encoder blocks whose outputs are reconstructed (spec §3); large has twice the depth
TARGET_LAYERS = {"small": [2, 3, 4, 5, 6, 7, 8, 9], "base": [2, 3, 4, 5, 6, 7, 8, 9],
                 "large": [4, 6, 8, 10, 12, 14, 16, 18],
                 # DINOv3 (the fork: S/B as small/base, L as large). S+ has 12 blocks, as S.
                 "small_plus": [2, 3, 4, 5, 6, 7, 8, 9],
                 # H+ has 32 blocks: the rule behind the lists above, block round(depth·(2+k)/12)
                 # for k = 0…7 (from 1/6 to 3/4 of the depth, evenly), gives for 32:
                 "huge_plus": [5, 8, 11, 13, 16, 19, 21, 24]}
# two groups of four layers each: "loose" group-to-group reconstruction (paper §3.4)
FUSE_LAYERS = [[0, 1, 2, 3], [4, 5, 6, 7]]


def build_dinomaly(encoder_name: str = "dinov2reg_vit_base_14", weights: str = "official",
                   dropout: float = 0.2, device: str | torch.device | None = None,
                   fused_attn: bool = True) -> ViTill:
    """The Dinomaly model: frozen encoder, noisy bottleneck (`dropout`), 8 decoder blocks.

    Built in the reference's order (encoder, bottleneck, decoder, move to `device`, then
    init) so that for the same seed the initial weights equal the reference's — on CUDA
    the init draws from the CUDA generator, as the reference's does.
    `dropout=0.0` turns every dropout of the model off.
    """
    encoder = vit_encoder.load(encoder_name, weights, fused_attn=fused_attn)
    size, _ = vit_encoder.parse_name(encoder_name)
    dim, heads = encoder.embed_dim, encoder.num_heads
    bottleneck = nn.ModuleList([bMlp(dim, dim * 4, dim, drop=dropout)])
    decoder = nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-8)
                            for _ in range(8))
    model = ViTill(encoder, bottleneck, decoder, target_layers=TARGET_LAYERS[size],
                   fuse_layer_encoder=FUSE_LAYERS, fuse_layer_decoder=FUSE_LAYERS,
                   # the DINOv3 fork feeds patch tokens only; DINOv2: all tokens (reference)
                   patch_tokens_only=encoder_name in vit_encoder.DINOV3_ARCHS)
    if device is not None:
        model = model.to(device)
    init_trainable(nn.ModuleList([bottleneck, decoder]))
    return model
