"""A small DINOv2 ViT whose parameter names equal the official checkpoints'.

References: facebookresearch/dinov2 `dinov2/layers/` and `dinov2/models/vision_transformer.py`.
"""
from .attention import Attention
from .block import Block
from .layer_scale import LayerScale
from .patch_embed import PatchEmbed
from .vision_transformer import DinoVisionTransformer

__all__ = ["Attention", "Block", "DinoVisionTransformer", "LayerScale", "PatchEmbed"]
