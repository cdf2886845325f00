"""Dinomaly models: `build_dinomaly` (Dinomaly), `build_dinomaly2` (Dinomaly2),
`build_dinomaly2_rgbd` (Dinomaly2, RGB + depth),
`load_checkpoint`, the building blocks, and the encoder families: every
`models/<package>/family.py` registers its family when `models` is imported (DINOv2, DINOv2
with registers, DINOv3; a new family is a new such file)."""
import importlib
import importlib.util
import pkgutil

from . import uad, vision_transformer, vit_encoder
from .attention import Attention, DropKey
from .build import build_dinomaly
from .build2 import LOOSE_GROUPS, build_dinomaly2, build_dinomaly2_rgbd, loose_group_list
from .checkpoint import CheckpointError, CheckpointMismatch, load_checkpoint
from .encoder_family import (ENCODER_FAMILIES, EncoderArch, EncoderError, EncoderFamily,
                             encoder_names, encoder_settings, find_encoder,
                             register_encoder_family)
from .uad import Dinomaly, DinomalyRGBD, ViTill
from .vision_transformer import Block, LinearAttention, LinearAttention2, NoisyBottleneck, bMlp

__all__ = ["Attention", "Block", "CheckpointError", "CheckpointMismatch", "Dinomaly", "DinomalyRGBD", "DropKey",
           "ENCODER_FAMILIES", "ENCODER_NAMES", "EncoderArch", "EncoderError", "EncoderFamily",
           "LOOSE_GROUPS", "LinearAttention", "LinearAttention2", "NoisyBottleneck", "ViTill",
           "bMlp", "build_dinomaly", "build_dinomaly2", "build_dinomaly2_rgbd", "encoder_names", "encoder_settings",
           "find_encoder", "load_checkpoint", "loose_group_list", "register_encoder_family", "uad",
           "vision_transformer", "vit_encoder"]


for _package in pkgutil.iter_modules(__path__):  # the encoder families, in name order
    if _package.ispkg and importlib.util.find_spec(f"{__name__}.{_package.name}.family"):
        importlib.import_module(f"{__name__}.{_package.name}.family")


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "ENCODER_NAMES":  # every registered encoder name (a live view of the registry)
        return encoder_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
