"""DINOv3 test helpers: random checkpoints written key by key in the official and timm
layouts, and plain float64 oracles of the RoPE, one block and the token recipe, all
written from the published facts, independently of `models.dinov3`."""
import math

import torch
import torch.nn.functional as F

DIM, DEPTH, HEADS, HD = 384, 12, 6, 64  # ViT-S/16 and S+/16
# 100^(2i/32), i = 0…15, rounded to bf16: what the released checkpoints store
BF16_PERIODS = torch.tensor([100 ** (2 * i / 32) for i in range(16)],
                            dtype=torch.float64).to(torch.bfloat16).float()


def official_v3_state_dict(swiglu: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ViT-S/16 (or S+/16) checkpoint written key by key in the official DINOv3
    format (the published key list), independently of our module. The qkv bias is random on all
    three thirds, so that the stored mask has something to switch off."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.02):
        return torch.randn(*shape, generator=g) * std

    third = torch.ones(DIM)
    sd = {"cls_token": r(1, 1, DIM, std=1.0), "storage_tokens": r(1, 4, DIM, std=1.0),
          "mask_token": r(1, DIM), "patch_embed.proj.weight": r(DIM, 3, 16, 16, std=0.05),
          "patch_embed.proj.bias": r(DIM), "rope_embed.periods": BF16_PERIODS.clone()}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(DIM, std=0.1), b + "norm1.bias": r(DIM, std=0.1),
                   b + "attn.qkv.weight": r(3 * DIM, DIM, std=0.06),
                   b + "attn.qkv.bias": r(3 * DIM, std=0.5),
                   b + "attn.qkv.bias_mask": torch.cat((third, 0 * third, third)),
                   b + "attn.proj.weight": r(DIM, DIM, std=0.05), b + "attn.proj.bias": r(DIM),
                   b + "ls1.gamma": 0.2 + r(DIM), b + "norm2.weight": 1 + r(DIM, std=0.1),
                   b + "norm2.bias": r(DIM, std=0.1)})
        if swiglu:  # ratio 6: h = 2304, int(h·2/3) = 1536 (a multiple of 8)
            sd.update({b + "mlp.w1.weight": r(1536, DIM, std=0.05), b + "mlp.w1.bias": r(1536),
                       b + "mlp.w2.weight": r(1536, DIM, std=0.05), b + "mlp.w2.bias": r(1536),
                       b + "mlp.w3.weight": r(DIM, 1536, std=0.05), b + "mlp.w3.bias": r(DIM)})
        else:
            sd.update({b + "mlp.fc1.weight": r(4 * DIM, DIM, std=0.05),
                       b + "mlp.fc1.bias": r(4 * DIM),
                       b + "mlp.fc2.weight": r(DIM, 4 * DIM, std=0.05), b + "mlp.fc2.bias": r(DIM)})
        sd[b + "ls2.gamma"] = 0.2 + r(DIM)
    sd["norm.weight"] = 1 + r(DIM, std=0.1)
    sd["norm.bias"] = r(DIM, std=0.1)
    return sd


def official_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse layout, written independently: timm's Eva names; q/v biases as
    separate parameters (the k bias is not saved), no bias_mask, periods or mask_token."""
    out = {}
    for k, v in sd.items():
        if k in ("mask_token", "rope_embed.periods") or k.endswith("qkv.bias_mask"):
            continue
        if k.endswith("attn.qkv.bias"):
            q, _, vb = v.chunk(3)
            out[k.replace("qkv.bias", "q_bias")] = q
            out[k.replace("qkv.bias", "v_bias")] = vb
            continue
        k = k.replace("storage_tokens", "reg_token").replace("ls1.gamma", "gamma_1")
        k = k.replace("ls2.gamma", "gamma_2").replace("mlp.w1.", "mlp.fc1_g.")
        k = k.replace("mlp.w2.", "mlp.fc1_x.").replace("mlp.w3.", "mlp.fc2.")
        out[k] = v
    return out


# ---- plain oracles ----

def oracle_rope(periods: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sin, cos `(H·W, 64)` in float64, patch by patch, angle by angle."""
    p = periods.double().tolist()
    rows = []
    for i in range(H):
        for j in range(W):
            ch, cw = 2 * (i + 0.5) / H - 1, 2 * (j + 0.5) / W - 1
            half = [2 * math.pi * ch / q for q in p] + [2 * math.pi * cw / q for q in p]
            rows.append(half + half)
    angles = torch.tensor(rows, dtype=torch.float64)
    return angles.sin(), angles.cos()


def oracle_block(sd: dict, i: int, x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor):
    """Block `i` of the checkpoint `sd` on tokens `x (B, 5 + h·w, C)`, in float64."""
    w = {k[len(f"blocks.{i}."):]: v.double() for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
    B, N, C = x.shape

    def lin(t, name):  # a Linear layer, from its weight and bias
        return t @ w[name + ".weight"].T + w[name + ".bias"]

    def rot(t):  # x·cos + rotate_half(x)·sin, rotate_half([x1, x2]) = [-x2, x1]
        x1, x2 = t[..., :HD // 2], t[..., HD // 2:]
        return t * cos + torch.cat((-x2, x1), -1) * sin

    h = F.layer_norm(x, (C,), w["norm1.weight"], w["norm1.bias"], eps=1e-5)
    qkv = h @ w["attn.qkv.weight"].T + w["attn.qkv.bias"] * w["attn.qkv.bias_mask"]
    q, k, v = (t.reshape(B, N, HEADS, HD).transpose(1, 2) for t in qkv.split(C, dim=-1))
    q = torch.cat((q[:, :, :5], rot(q[:, :, 5:])), 2)  # the 5 prefix tokens: no rotation
    k = torch.cat((k[:, :, :5], rot(k[:, :, 5:])), 2)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD), dim=-1) @ v
    a = lin(a.transpose(1, 2).reshape(B, N, C), "attn.proj")
    x = x + w["ls1.gamma"] * a
    h = F.layer_norm(x, (C,), w["norm2.weight"], w["norm2.bias"], eps=1e-5)
    if "mlp.w1.weight" in w:
        m = lin(F.silu(lin(h, "mlp.w1")) * lin(h, "mlp.w2"), "mlp.w3")  # SwiGLU
    else:
        m = lin(F.gelu(lin(h, "mlp.fc1")), "mlp.fc2")
    return x + w["ls2.gamma"] * m


def oracle_tokens(sd: dict, img: torch.Tensor) -> torch.Tensor:
    """`[cls, storage ×4, patches row-major]`, float64, no position embedding."""
    p = F.conv2d(img.double(), sd["patch_embed.proj.weight"].double(),
                 sd["patch_embed.proj.bias"].double(), stride=16)
    p = p.flatten(2).transpose(1, 2)
    B = img.shape[0]
    return torch.cat((sd["cls_token"].double().expand(B, -1, -1),
                      sd["storage_tokens"].double().expand(B, -1, -1), p), 1)
