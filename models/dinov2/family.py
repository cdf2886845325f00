"""The two DINOv2 families, the reference's encoders: `dinov2reg_vit_{small,base,large}_14`
(with 4 register tokens, the paper's) and `dinov2_vit_{small,base,large}_14`.

Patch 14, built for 518 px (a 37 × 37 grid of absolute position embeddings, resized for
other inputs with DINOv2's own recipe), LayerScale, LayerNorm eps 1e-6. All tokens, cls
and registers included, enter the bottleneck (the reference). Official weights are
downloaded once from Meta's public URLs.
"""
from pathlib import Path

from torch import nn

from ..encoder_family import EncoderArch, EncoderFamily, register_encoder_family
from ..reference_rng import advance_like_dinov1_vit
from ..weights_file import read_state_dict
from .vision_transformer import DinoVisionTransformer

URL_ROOT = "https://dl.fbaipublicfiles.com/dinov2"
SHAPES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}  # C, depth, heads
# the blocks whose outputs are reconstructed (the paper); large has twice the depth
TARGET_LAYERS = {"small": (2, 3, 4, 5, 6, 7, 8, 9), "base": (2, 3, 4, 5, 6, 7, 8, 9),
                 "large": (4, 6, 8, 10, 12, 14, 16, 18)}


def _archs(family: str) -> dict[str, EncoderArch]:
    return {f"{family}_vit_{size}_14": EncoderArch(size, *SHAPES[size], TARGET_LAYERS[size])
            for size in SHAPES}


def _builder(registers: int):
    def build(arch: EncoderArch, fused_attn: bool) -> DinoVisionTransformer:
        # init_values 1e-8 and offset 0.1: what the reference passes when it builds the encoder
        return DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=arch.embed_dim,
                                     depth=arch.depth, num_heads=arch.num_heads, init_values=1e-8,
                                     num_register_tokens=registers, interpolate_offset=0.1,
                                     fused_attn=fused_attn)
    return build


def _url(registers: int):
    def url(name: str, arch: EncoderArch) -> str:
        model = f"dinov2_vit{arch.size[0]}14"  # e.g. dinov2_vitb14
        return f"{URL_ROOT}/{model}/{model}{'_reg4' if registers else ''}_pretrain.pth"
    return url


def _read(path: Path, model: nn.Module) -> dict:
    return read_state_dict(path)


def _before_build(arch: EncoderArch) -> None:
    # The reference's loader first builds, and drops, a DINOv1 ViT of this size: its CPU
    # generator draws, made whatever the weights, keep every later draw the reference's.
    advance_like_dinov1_vit(arch.size)


def _family(name: str, title: str, registers: int) -> EncoderFamily:
    return EncoderFamily(
        name=name, title=title, patch_size=14, register_tokens=registers, archs=_archs(name),
        patch_tokens_only=False,
        position="absolute, the 37 × 37 grid resized bicubically by scale_factor (n + 0.1) / 37",
        build=_builder(registers), weights_url=_url(registers), read_weights=_read,
        before_build=_before_build)


DINOV2_REG = register_encoder_family(_family("dinov2reg", "DINOv2 with registers", 4))
DINOV2 = register_encoder_family(_family("dinov2", "DINOv2", 0))
