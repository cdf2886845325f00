"""Encoder families, by registration: one `EncoderFamily` spec per family (DINOv2, DINOv2
with registers, DINOv3 today), looked up by encoder name.

A family says everything the rest of the code needs to know about its encoders: their
names and shapes, the patch size, the register tokens, which blocks Dinomaly reconstructs,
which tokens go to the bottleneck, how position enters, where the official weights come
from and how a weights file is read, and the run settings the family brings. Adding a
family is one new spec passed to `register_encoder_family` (see docs/EXTENDING.md).

The encoder a family builds follows one protocol (`Encoder` below): the model calls
nothing else of it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn


class EncoderError(ValueError):
    """A bad encoder name or weights that cannot be found, fetched or loaded."""


class Encoder(Protocol):
    """What the Dinomaly models use of a frozen encoder."""

    embed_dim: int  # C, the width of every token
    num_heads: int  # the decoder takes as many heads
    patch_size: int  # p: an H × W input gives (H/p) × (W/p) patch tokens
    num_register_tokens: int  # R: tokens between cls and the patches
    blocks: nn.ModuleList  # transformer blocks, in depth order

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`B × 3 × H × W -> B × (1 + R + h·w) × C`, tokens `[cls, registers, patches]`."""

    def block_args(self, height: int, width: int) -> tuple:
        """The extra arguments every block takes for an input of `height × width` pixels,
        computed once per input: `blk(x, *block_args)` (DINOv3: the RoPE sin/cos; none for
        an absolute position embedding)."""


@dataclass(frozen=True)
class EncoderArch:
    """One encoder of a family."""

    size: str  # 'small', 'base', 'large', 'small_plus', 'huge_plus', …
    embed_dim: int
    depth: int
    num_heads: int
    target_layers: tuple[int, ...]  # the 8 blocks whose outputs are reconstructed
    options: Mapping[str, object] = field(default_factory=dict)  # what else the builder needs


@dataclass(frozen=True)
class EncoderFamily:
    """One family of encoders (one file under models/, registered at import)."""

    name: str  # e.g. 'dinov2reg'
    title: str  # e.g. 'DINOv2 with registers'
    patch_size: int
    register_tokens: int  # R
    archs: Mapping[str, EncoderArch]  # encoder name -> its arch, in the order --help lists them
    patch_tokens_only: bool  # True: cls and registers are dropped before the bottleneck
    position: str  # how position enters (for readers; the builder implements it)
    build: Callable[[EncoderArch, bool], nn.Module]  # (arch, fused_attn) -> untrained Encoder
    weights_url: Callable[[str, EncoderArch], str]  # the official checkpoint's URL
    read_weights: Callable[[Path, nn.Module], dict[str, torch.Tensor]]  # file -> state_dict
    downloadable: bool = True  # False: gated, looked up in the cache only
    missing_weights: Callable[[str, Path], str] | None = None  # a gated file's absence, said
    before_build: Callable[[EncoderArch], None] | None = None  # draws the reference makes first
    settings: Mapping[str, object] = field(default_factory=dict)  # run settings it brings
    settings_note: str = ""  # whose settings they are, for the log (e.g. "the DINOv3 fork's settings")
    # the Dinomaly2 preview code takes this family's layers through its hub model's
    # get_intermediate_layers (`use_get_intermediate`; the same tensors as the block loop)
    intermediate_layers: bool = False
    arch_settings: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # per name


ENCODER_FAMILIES: dict[str, EncoderFamily] = {}


def register_encoder_family(family: EncoderFamily) -> EncoderFamily:
    """Add `family` (its encoder names must be new); returns it."""
    taken = [n for n in family.archs if n in _by_name()]
    if family.name in ENCODER_FAMILIES or taken:
        raise ValueError(f"encoder family {family.name!r} or its names {taken} are registered already")
    ENCODER_FAMILIES[family.name] = family
    return family


def _by_name() -> dict[str, tuple[EncoderFamily, EncoderArch]]:
    return {name: (family, arch) for family in ENCODER_FAMILIES.values()
            for name, arch in family.archs.items()}


def encoder_names() -> tuple[str, ...]:
    """Every registered encoder name, family by family in registration order."""
    return tuple(_by_name())


def find_encoder(name: str) -> tuple[EncoderFamily, EncoderArch]:
    """The family and arch of encoder `name`; EncoderError listing the valid names."""
    found = _by_name().get(name)
    if found is None:
        raise EncoderError(f"unknown encoder {name!r}; valid names: {', '.join(encoder_names())}")
    return found


def encoder_settings(name: str) -> dict[str, object]:
    """The run settings encoder `name` brings (its family's, then its own): {} for DINOv2."""
    family, _ = find_encoder(name)
    return {**family.settings, **family.arch_settings.get(name, {})}
