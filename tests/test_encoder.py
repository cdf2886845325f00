"""The DINOv2 encoder: names, official key format, weights resolution, token recipe."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import vit_encoder
from models.vit_encoder import EncoderError
from models.dinov2 import family as dinov2_family

DIM, DEPTH = 384, 12  # ViT-S


def official_vits_state_dict(registers: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ViT-S/14 checkpoint written key by key in the official DINOv2 format,
    independently of our module (so loading it tests the key names, not a round trip)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    sd = {"cls_token": r(1, 1, DIM), "pos_embed": r(1, 1370, DIM), "mask_token": r(1, DIM),
          "patch_embed.proj.weight": r(DIM, 3, 14, 14), "patch_embed.proj.bias": r(DIM)}
    if registers:
        sd["register_tokens"] = r(1, 4, DIM)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(DIM), b + "norm1.bias": r(DIM),
                   b + "attn.qkv.weight": r(3 * DIM, DIM), b + "attn.qkv.bias": r(3 * DIM),
                   b + "attn.proj.weight": r(DIM, DIM), b + "attn.proj.bias": r(DIM),
                   b + "ls1.gamma": 0.1 + r(DIM), b + "norm2.weight": 1 + r(DIM),
                   b + "norm2.bias": r(DIM), b + "mlp.fc1.weight": r(4 * DIM, DIM),
                   b + "mlp.fc1.bias": r(4 * DIM), b + "mlp.fc2.weight": r(DIM, 4 * DIM),
                   b + "mlp.fc2.bias": r(DIM), b + "ls2.gamma": 0.1 + r(DIM)})
    sd["norm.weight"] = 1 + r(DIM)
    sd["norm.bias"] = r(DIM)
    return sd


@pytest.fixture
def official_ckpt(tmp_path) -> Path:
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official_vits_state_dict(), path)
    return path


def test_unknown_name_lists_valid_names():
    with pytest.raises(EncoderError) as err:
        vit_encoder.load("dinov3_vit_huge_16", weights="random")
    for name in vit_encoder.ENCODER_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name,url", [
    ("dinov2reg_vit_base_14", "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"),
    ("dinov2reg_vit_small_14", "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"),
    ("dinov2_vit_large_14", "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"),
])
def test_official_urls(name, url):
    assert vit_encoder.checkpoint_url(name) == url


@pytest.mark.parametrize("name,dim,depth,heads,regs", [
    ("dinov2reg_vit_small_14", 384, 12, 6, 4), ("dinov2_vit_base_14", 768, 12, 12, 0),
    ("dinov2reg_vit_large_14", 1024, 24, 16, 4)])
def test_architectures(name, dim, depth, heads, regs):
    enc = vit_encoder.build(name)
    assert (enc.embed_dim, len(enc.blocks), enc.num_heads, enc.num_register_tokens) == (dim, depth, heads, regs)
    assert enc.pos_embed.shape == (1, 1370, dim)
    assert enc.blocks[0].norm1.eps == 1e-6 and enc.blocks[0].attn.qkv.bias is not None
    assert enc.blocks[0].mlp.fc1.out_features == 4 * dim


def test_official_checkpoint_loads_and_round_trips(official_ckpt):
    enc = vit_encoder.load("dinov2reg_vit_small_14", weights=official_ckpt)
    written = torch.load(official_ckpt)
    state = enc.state_dict()
    assert set(state) == set(written)
    for k, v in written.items():
        assert torch.equal(state[k], v), k
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.training


def test_wrong_size_checkpoint_is_one_clear_error(official_ckpt):
    with pytest.raises(EncoderError) as err:
        vit_encoder.load("dinov2reg_vit_base_14", weights=official_ckpt)
    msg = str(err.value)
    assert str(official_ckpt) in msg and "shape mismatch" in msg and "pos_embed" in msg


def test_registers_missing_is_reported(tmp_path):
    path = tmp_path / "noreg.pth"
    torch.save(official_vits_state_dict(registers=False), path)
    with pytest.raises(EncoderError, match="missing: register_tokens"):
        vit_encoder.load("dinov2reg_vit_small_14", weights=path)
    vit_encoder.load("dinov2_vit_small_14", weights=path)  # the plain family has none


def test_official_weights_come_from_the_cache(official_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("DINOMALY_CACHE", str(tmp_path / "cache"))
    target = vit_encoder.cached_path("dinov2reg_vit_small_14")
    assert target == tmp_path / "cache" / "dinov2_vits14_reg4_pretrain.pth"
    target.parent.mkdir()
    target.write_bytes(official_ckpt.read_bytes())
    enc = vit_encoder.load("dinov2reg_vit_small_14", weights="official")
    assert torch.equal(enc.pos_embed, torch.load(official_ckpt)["pos_embed"])


def test_download_is_atomic_and_cached(official_ckpt, tmp_path, monkeypatch):
    # the real download code, pointed at a local file:// URL
    monkeypatch.setenv("DINOMALY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dinov2_family, "URL_ROOT", official_ckpt.parent.as_uri() + "/mirror")
    mirror = official_ckpt.parent / "mirror" / "dinov2_vits14"
    mirror.mkdir(parents=True)
    (mirror / official_ckpt.name).write_bytes(official_ckpt.read_bytes())
    enc = vit_encoder.load("dinov2reg_vit_small_14", weights="official")
    cached = vit_encoder.cached_path("dinov2reg_vit_small_14")
    assert cached.read_bytes() == official_ckpt.read_bytes()
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no partial file left
    assert torch.equal(enc.cls_token, torch.load(official_ckpt)["cls_token"])
    (mirror / official_ckpt.name).unlink()  # second load must not need the network
    vit_encoder.load("dinov2reg_vit_small_14", weights="official")


def test_offline_error_names_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DINOMALY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dinov2_family, "URL_ROOT", (tmp_path / "nowhere").as_uri())
    with pytest.raises(EncoderError) as err:
        vit_encoder.load("dinov2reg_vit_small_14", weights="official")
    msg = str(err.value)
    assert vit_encoder.checkpoint_url("dinov2reg_vit_small_14") in msg
    assert str(tmp_path / "cache" / "dinov2_vits14_reg4_pretrain.pth") in msg
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_weights_file():
    with pytest.raises(EncoderError, match="not found: /no/such.pth"):
        vit_encoder.load("dinov2reg_vit_small_14", weights="/no/such.pth")


def test_position_interpolation_recipe(official_ckpt):
    enc = vit_encoder.load("dinov2reg_vit_small_14", weights=official_ckpt)
    pos = enc.interpolate_pos_encoding(392, 392)
    assert pos.shape == (1, 1 + 28 * 28, DIM)
    grid = enc.pos_embed[:, 1:].reshape(1, 37, 37, DIM).permute(0, 3, 1, 2)
    # the official recipe, written out: scale_factor (n + 0.1) / 37, bicubic, no antialias
    expected = F.interpolate(grid, scale_factor=(28.1 / 37, 28.1 / 37), mode="bicubic", antialias=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 784, DIM)
    assert torch.equal(pos[:, 0], enc.pos_embed[:, 0])
    assert torch.equal(pos[:, 1:], expected)
    sized = F.interpolate(grid, size=(28, 28), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 784, DIM)
    assert (sized - expected).abs().max() > 1e-3 * expected.abs().max()
    # 518 px is the native grid: the embeddings are used as they are
    assert enc.interpolate_pos_encoding(518, 518) is enc.pos_embed


def test_non_square_grid_rows_first(official_ckpt):
    enc = vit_encoder.load("dinov2reg_vit_small_14", weights=official_ckpt)
    pos = enc.interpolate_pos_encoding(14 * 8, 14 * 5)
    grid = enc.pos_embed[:, 1:].reshape(1, 37, 37, DIM).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(8.1 / 37, 5.1 / 37), mode="bicubic", antialias=False)
    assert torch.equal(pos[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 40, DIM))


def test_token_order(official_ckpt):
    enc = vit_encoder.load("dinov2reg_vit_small_14", weights=official_ckpt)
    x = torch.randn(2, 3, 98, 98)
    tokens = enc.prepare_tokens(x)
    pos = enc.interpolate_pos_encoding(98, 98)
    patches = enc.patch_embed.proj(x).flatten(2).transpose(1, 2)
    assert tokens.shape == (2, 1 + 4 + 49, DIM)
    assert torch.allclose(tokens[:, 0], enc.cls_token[:, 0] + pos[:, 0])
    assert torch.equal(tokens[:, 1:5], enc.register_tokens.expand(2, -1, -1))
    assert torch.allclose(tokens[:, 5:], patches + pos[:, 1:])


def test_fused_attention_equals_explicit(official_ckpt):
    fused = vit_encoder.load("dinov2reg_vit_small_14", weights=official_ckpt, fused_attn=True)
    plain = vit_encoder.load("dinov2reg_vit_small_14", weights=official_ckpt, fused_attn=False)
    x = torch.randn(2, 3, 112, 112)
    a, b = fused(x), plain(x)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    # and the explicit form is the textbook softmax attention
    attn = plain.blocks[0].attn
    t = torch.randn(2, 10, DIM)
    q, k, v = attn.qkv(t).reshape(2, 10, 3, 6, 64).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(64), dim=-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 10, DIM))
    assert torch.allclose(attn(t), ref, atol=1e-6)
