"""The DINOv3 family (Siméoni et al. 2025): `dinov3_vit{s16,s16plus,b16,l16,h16plus}`.

Patch 16, no absolute position embedding (RoPE in every attention layer), 4 storage tokens
(DINOv2's registers), as the Dinomaly fork that the official Dinomaly README points to uses
them: patch tokens only into the bottleneck, and the fork's run settings (resize 512, crop
448 = 28 × 28 patches of 16 px, StableAdamW without AMSGrad, batch 12 for ViT-L). Meta gates
the weights: 'official' is looked up in the cache, never downloaded; timm's port is
accepted too (`timm_keys.timm_to_official`).
"""
from pathlib import Path

from torch import nn

from ..encoder_family import EncoderArch, EncoderFamily, register_encoder_family
from ..weights_file import is_safetensors, read_safetensors, read_state_dict
from .timm_keys import is_timm_format, timm_to_official
from .vision_transformer import DinoVisionTransformer

URL_ROOT = "https://dl.fbaipublicfiles.com/dinov3"  # gated: the links come by mail
FORM = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


def _target_layers(depth: int) -> tuple[int, ...]:
    """The rule behind the DINOv2 lists, block round(depth·(2+k)/12) for k = 0…7 (from 1/6 to
    3/4 of the depth, evenly): [2..9] for 12 blocks, [4, 6, …, 18] for 24, and for 32 (H+)
    [5, 8, 11, 13, 16, 19, 21, 24]."""
    return tuple(round(depth * (2 + k) / 12) for k in range(8))


def _arch(size: str, dim: int, depth: int, heads: int, ffn: str, ffn_ratio: float,
          file: str) -> EncoderArch:
    """`ffn`: 'mlp' (GELU, ratio 4) or 'swiglu' (ratio 6); `file`: the official checkpoint."""
    return EncoderArch(size, dim, depth, heads, _target_layers(depth),
                       {"ffn": ffn, "ffn_ratio": ffn_ratio, "file": file})


ARCHS = {
    "dinov3_vits16": _arch("small", 384, 12, 6, "mlp", 4.0,
                           "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
    "dinov3_vits16plus": _arch("small_plus", 384, 12, 6, "swiglu", 6.0,
                               "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth"),
    "dinov3_vitb16": _arch("base", 768, 12, 12, "mlp", 4.0,
                           "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
    "dinov3_vitl16": _arch("large", 1024, 24, 16, "mlp", 4.0,
                           "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
    "dinov3_vith16plus": _arch("huge_plus", 1280, 32, 20, "swiglu", 6.0,
                               "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth"),
}


def build(arch: EncoderArch, fused_attn: bool) -> DinoVisionTransformer:
    """An untrained DINOv3 ViT/16 (a sane random init)."""
    return DinoVisionTransformer(patch_size=16, embed_dim=arch.embed_dim, depth=arch.depth,
                                 num_heads=arch.num_heads, ffn_ratio=arch.options["ffn_ratio"],
                                 ffn=arch.options["ffn"], n_storage_tokens=4, init_values=1e-5,
                                 fused_attn=fused_attn)


def url(name: str, arch: EncoderArch) -> str:
    """The gated download link's pattern, e.g. `.../dinov3/dinov3_vitb16/dinov3_vitb16_…pth`."""
    return f"{URL_ROOT}/{name}/{arch.options['file']}"


def read_weights(path: Path, model: nn.Module) -> dict:
    """An official-format state_dict from an official `.pth` or a timm-format file
    (safetensors or `.pth`)."""
    state_dict = read_safetensors(path) if is_safetensors(path) else read_state_dict(path)
    if is_timm_format(state_dict):
        state_dict = timm_to_official(state_dict, head_dim=model.embed_dim // model.num_heads)
    return state_dict


def missing_weights(name: str, path: Path) -> str:
    """The one message for official weights absent from the cache."""
    file = ARCHS[name].options["file"]
    return (f"the official {name} weights, {file}, are not in the cache ({path} does not "
            f"exist), and Meta's DINOv3 weights cannot be downloaded without permission: "
            f"request access with Meta's DINOv3 download form ({FORM}); the links it "
            f"mails you follow the pattern {url(name, ARCHS[name])}. Put the file at {path} "
            f"(or set DINOMALY_CACHE to the folder holding it), or pass its path as the weights "
            f"(e.g. --encoder_weights /path/to/{file}); a timm-format DINOv3 file "
            f"(.safetensors or .pth) is accepted the same way.")


DINOV3 = register_encoder_family(EncoderFamily(
    name="dinov3", title="DINOv3", patch_size=16, register_tokens=4, archs=ARCHS,
    patch_tokens_only=True, position="RoPE on q and k of the patch tokens, in every block",
    build=build, weights_url=url, read_weights=read_weights, downloadable=False,
    missing_weights=missing_weights,
    settings={"image_size": 512,  # resize side
              "crop_size": 448,   # 28 × 28 patches of 16 px, as 392 = 28 × 14 for DINOv2
              "amsgrad": False},  # StableAdamW without AMSGrad
    settings_note="the DINOv3 fork's settings", intermediate_layers=True,
    arch_settings={"dinov3_vitl16": {"batch_size": 12}}))  # the fork's ViT-L batch (memory)
