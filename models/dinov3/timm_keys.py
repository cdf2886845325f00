"""timm's DINOv3 port (`vit_*_patch16_dinov3*`, timm's `Eva` model) → official DINOv3 keys.

timm publishes the DINOv3 weights as safetensors in its own layout, ungated (the licence
of the weights is still Meta's). Its layout, as timm's Eva class names things:
`cls_token`, `reg_token`, `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv.weight,
attn.proj, gamma_1, norm2, mlp.*, gamma_2}`, `norm.*`; the qkv bias, when the variant has
one, as separate `attn.q_bias` / `attn.v_bias` (the k bias is a fixed zero buffer, not
saved); SwiGLU as `mlp.fc1_g` (gate) / `mlp.fc1_x` / `mlp.fc2`; no `mask_token`, no
`bias_mask`, and the RoPE periods recomputed at build time rather than stored. Each rule
below is one line; keys no rule knows pass through unchanged, so strict loading names them.
"""
import re

import torch

# The released files (all five sizes, head dim 64) store periods = 100^(2i/32) rounded to
# bf16; timm's files do not store them, so they are filled with those released values.
ROPE_BASE = 100.0


def released_periods(head_dim: int = 64, base: float = ROPE_BASE) -> torch.Tensor:
    """`rope_embed.periods` as the official checkpoints hold it: `(head_dim/4,)`, bf16 values."""
    exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)
    return (base ** exponents).to(torch.bfloat16).float()


def is_timm_format(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for timm's layout (its register/LayerScale names), False for the official one."""
    return "reg_token" in state_dict or any(k.endswith(".gamma_1") for k in state_dict)


def timm_to_official(state_dict: dict[str, torch.Tensor],
                     head_dim: int = 64) -> dict[str, torch.Tensor]:
    """A pure function: timm-layout state_dict in → official DINOv3 state_dict out.

    `head_dim` sizes the filled-in RoPE periods (64 for every released DINOv3 ViT).
    """
    swiglu_blocks = {k.split(".mlp.")[0] for k in state_dict if ".mlp.fc1_g." in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        block = key.split(".mlp.")[0]
        key = re.sub(r"^reg_token$", "storage_tokens", key)  # timm's registers = storage tokens
        key = re.sub(r"^rope\.periods$", "rope_embed.periods", key)  # if a file stores them
        key = re.sub(r"\.gamma_1$", ".ls1.gamma", key)  # Eva's LayerScale: a bare parameter
        key = re.sub(r"\.gamma_2$", ".ls2.gamma", key)
        key = key.replace(".mlp.fc1_g.", ".mlp.w1.")  # SwiGLU gate branch (through SiLU)
        key = key.replace(".mlp.fc1_x.", ".mlp.w2.")  # SwiGLU linear branch
        if block in swiglu_blocks:
            key = key.replace(".mlp.fc2.", ".mlp.w3.")  # SwiGLU output (GELU MLPs keep fc2)
        if key.endswith((".attn.q_bias", ".attn.k_bias", ".attn.v_bias")):
            continue  # joined into attn.qkv.bias below
        out[key] = value
    for attn in [k[: -len("qkv.weight")] for k in out if k.endswith(".attn.qkv.weight")]:
        weight = out[attn + "qkv.weight"]  # 3C × C
        zero, one = weight.new_zeros(weight.shape[0] // 3), weight.new_ones(weight.shape[0] // 3)
        parts = [state_dict.get(f"{attn}{p}_bias", zero) for p in "qkv"]
        out.setdefault(attn + "qkv.bias", torch.cat(parts))  # q/k/v biases joined; a file with
        # none is exact with zeros: timm builds the released models without a qkv bias, their
        # official biases being zero
        out.setdefault(attn + "qkv.bias_mask", torch.cat((one, zero, one)))  # k bias off
    out.setdefault("rope_embed.periods", released_periods(head_dim))  # not stored by timm
    if "cls_token" in out:  # unused at inference (official cls = cls + 0·mask_token)
        out.setdefault("mask_token", out["cls_token"].new_zeros(1, out["cls_token"].shape[-1]))
    return out
