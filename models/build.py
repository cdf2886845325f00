"""`build_dinomaly`: the paper's model from an encoder name, with the reference's init."""
import torch
from torch import nn

from . import vit_encoder
from .init import init_trainable
from .uad import ViTill
from .vision_transformer import Block, bMlp

# two groups of four layers each: "loose" group-to-group reconstruction (paper §3.4)
FUSE_LAYERS = [[0, 1, 2, 3], [4, 5, 6, 7]]


def build_dinomaly(encoder_name: str = "dinov2reg_vit_base_14", weights: str = "official",
                   dropout: float = 0.2, device: str | torch.device | None = None,
                   fused_attn: bool = True, attn_eps: float = 0.0) -> ViTill:
    """The Dinomaly model: frozen encoder, noisy bottleneck (`dropout`), 8 decoder blocks.

    Built in the reference's order (encoder, bottleneck, decoder, move to `device`, then
    init) so that for the same seed the initial weights equal the reference's — on CUDA
    the init draws from the CUDA generator, as the reference's does.
    `dropout=0.0` turns every dropout of the model off; `attn_eps` is added to the decoder's
    linear-attention denominator (0, the reference: nothing added).
    """
    family, arch = vit_encoder.find_encoder(encoder_name)
    encoder = vit_encoder.load(encoder_name, weights, fused_attn=fused_attn)
    dim, heads = encoder.embed_dim, encoder.num_heads
    bottleneck = nn.ModuleList([bMlp(dim, dim * 4, dim, drop=dropout)])
    decoder = nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-8,
                                  attn_eps=attn_eps) for _ in range(8))
    model = ViTill(encoder, bottleneck, decoder, target_layers=list(arch.target_layers),
                   fuse_layer_encoder=FUSE_LAYERS, fuse_layer_decoder=FUSE_LAYERS,
                   # DINOv2: all tokens (the reference); the DINOv3 fork: patch tokens only
                   patch_tokens_only=family.patch_tokens_only)
    if device is not None:
        model = model.to(device)
    init_trainable(nn.ModuleList([bottleneck, decoder]))
    return model
