"""Dinomaly models: `build_dinomaly` (Dinomaly), `build_dinomaly2` (Dinomaly2),
`load_checkpoint` and the building blocks."""
from . import uad, vision_transformer, vit_encoder
from .attention import Attention, DropKey
from .build import build_dinomaly
from .build2 import LOOSE_GROUPS, build_dinomaly2, loose_group_list
from .checkpoint import CheckpointError, CheckpointMismatch, load_checkpoint
from .uad import Dinomaly, ViTill
from .vision_transformer import Block, LinearAttention, LinearAttention2, NoisyBottleneck, bMlp
from .vit_encoder import ENCODER_NAMES, EncoderError

__all__ = ["Attention", "Block", "CheckpointError", "CheckpointMismatch", "Dinomaly", "DropKey",
           "ENCODER_NAMES", "EncoderError", "LOOSE_GROUPS", "LinearAttention", "LinearAttention2",
           "NoisyBottleneck", "ViTill", "bMlp", "build_dinomaly", "build_dinomaly2",
           "load_checkpoint", "loose_group_list", "uad", "vision_transformer", "vit_encoder"]
