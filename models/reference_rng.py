"""The generator draws of the DINOv1 ViT that the reference builds and throws away.

The reference's encoder loader first builds a DINOv1 ViT of the requested size (patch 14,
224 px: 16 × 16 patches + cls) and only then the DINOv2 ViT it returns. The DINOv1 model
is discarded, but its construction moves the CPU generator, and so every later draw: the
DINOv2 and decoder initial weights, the data order, the dropout masks. To start where the
reference starts, we make the same draws, one scratch tensor at a time, without the model.

References: facebookresearch/dino `vision_transformer.py` (`VisionTransformer.__init__`,
`_init_weights`, `vit_small/base/large`).
"""
import torch
from torch import nn

from .init import trunc_normal_

# DINOv1 `vit_<size>`: size -> (embed_dim, depth); MLP ratio 4, qkv bias, no classifier head
DINOV1_ARCHS = {"small": (384, 12), "base": (768, 12), "large": (1024, 24)}
PATCH, IMG_SIZE = 14, 224  # the loader's patch size; DINOv1's default `img_size=[224]`


def dinov1_linear_shapes(dim: int, depth: int) -> list[tuple[int, int]]:
    """`(in, out)` of every Linear in construction (= module) order: per block
    `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`."""
    block = [(dim, 3 * dim), (dim, dim), (dim, 4 * dim), (4 * dim, dim)]
    return block * depth


def advance_like_dinov1_vit(size: str) -> None:
    """Advance the CPU generator exactly as building DINOv1 `vit_<size>(patch_size=14)` does.

    1. construction, each layer's default init (kaiming-uniform weight, uniform bias):
       the patch embedding Conv2d, then every block's Linears;
    2. `trunc_normal_(pos_embed, std=.02)` (1 × 257 × dim), then `cls_token` (1 × 1 × dim);
    3. `self.apply(_init_weights)`: every Linear weight `trunc_normal_(std=.02)` in module
       order (biases 0 and LayerNorms 1/0 draw nothing).
    The layers of step 1 are built one at a time and dropped at once (the same calls as the
    model's own construction); steps 2-3 draw into scratch tensors of the same shapes.
    """
    dim, depth = DINOV1_ARCHS[size]
    shapes = dinov1_linear_shapes(dim, depth)
    num_tokens = (IMG_SIZE // PATCH) ** 2 + 1  # 256 patches + cls
    cpu = torch.device("cpu")  # the reference builds it on the CPU, whatever comes next
    nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH, device=cpu)  # patch_embed.proj
    for fan_in, fan_out in shapes:
        nn.Linear(fan_in, fan_out, device=cpu)
    trunc_normal_(torch.empty(1, num_tokens, dim, device=cpu), std=0.02)  # pos_embed
    trunc_normal_(torch.empty(1, 1, dim, device=cpu), std=0.02)  # cls_token
    for fan_in, fan_out in shapes:
        trunc_normal_(torch.empty(fan_out, fan_in, device=cpu), std=0.02)
