"""A DINOv3 ViT whose parameter and buffer names equal the official checkpoints'.

Written from published facts (Meta's code and weights are under the
DINOv3 License: no code is copied from them). `timm_keys` converts timm's port.
"""
from ..dinov2.layer_scale import LayerScale
from .attention import LinearKMaskedBias, SelfAttention
from .block import Block
from .patch_embed import PatchEmbed
from .rope import RopePositionEmbedding, apply_rope, rotate_half
from .swiglu import SwiGLUFFN, swiglu_hidden
from .timm_keys import timm_to_official
from .vision_transformer import DinoVisionTransformer

__all__ = ["Block", "DinoVisionTransformer", "LayerScale", "LinearKMaskedBias", "PatchEmbed",
           "RopePositionEmbedding", "SelfAttention", "SwiGLUFFN", "apply_rope", "rotate_half",
           "swiglu_hidden", "timm_to_official"]
