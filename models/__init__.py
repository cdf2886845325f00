"""Dinomaly models: `build_dinomaly`, `load_checkpoint` and the building blocks."""
from . import uad, vision_transformer, vit_encoder
from .build import build_dinomaly
from .checkpoint import CheckpointError, CheckpointMismatch, load_checkpoint
from .uad import ViTill
from .vision_transformer import Block, LinearAttention, LinearAttention2, NoisyBottleneck, bMlp
from .vit_encoder import ENCODER_NAMES, EncoderError

__all__ = ["Block", "CheckpointError", "CheckpointMismatch", "ENCODER_NAMES", "EncoderError",
           "LinearAttention", "LinearAttention2", "NoisyBottleneck", "ViTill", "bMlp",
           "build_dinomaly", "load_checkpoint", "uad", "vision_transformer", "vit_encoder"]
