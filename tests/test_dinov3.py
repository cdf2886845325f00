"""DINOv3 encoders: official key format, RoPE, masked k bias, SwiGLU, weights resolution
(official cache, timm files), and Dinomaly on top (patch tokens only, eval mode kept).

The checkpoints and oracles (`dinov3_oracles.py`) are written from the published facts,
independently of `models.dinov3`.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import build_dinomaly, vit_encoder
from models.dinov2.family import DINOV2, DINOV2_REG
from models.dinov3 import family as dinov3_family
from models.dinov3 import LinearKMaskedBias, SwiGLUFFN, swiglu_hidden, timm_to_official
from models.vit_encoder import EncoderError

from oracles import plain_forward
from dinov3_oracles import (BF16_PERIODS, DEPTH, DIM, HD, official_to_timm,
                            official_v3_state_dict, oracle_block, oracle_rope, oracle_tokens)


@pytest.fixture(scope="module")
def official_sd() -> dict[str, torch.Tensor]:
    return official_v3_state_dict()


@pytest.fixture(scope="module")
def official_ckpt(tmp_path_factory, official_sd) -> Path:
    path = tmp_path_factory.mktemp("v3") / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(official_sd, path)
    return path


@pytest.fixture(scope="module")
def enc(official_ckpt):
    return vit_encoder.load("dinov3_vits16", weights=official_ckpt)


# ---- architecture and keys ----

def test_names_and_registry():
    v3 = ["dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16",
          "dinov3_vith16plus"]
    assert [n for n in vit_encoder.ENCODER_NAMES if n.startswith("dinov3")] == v3
    assert vit_encoder.ENCODER_NAMES[:6] == (*DINOV2_REG.archs, *DINOV2.archs)  # DINOv2 names unchanged
    assert vit_encoder.parse_name("dinov3_vitb16") == ("base", 4)
    assert vit_encoder.parse_name("dinov3_vith16plus") == ("huge_plus", 4)
    assert vit_encoder.parse_name("dinov2reg_vit_base_14") == ("base", 4)
    assert vit_encoder.checkpoint_url("dinov3_vitl16") == (
        "https://dl.fbaipublicfiles.com/dinov3/dinov3_vitl16/"
        "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth")
    a = dinov3_family.ARCHS
    assert [(a[n].embed_dim, a[n].depth, a[n].num_heads, a[n].options["ffn"],
             a[n].options["ffn_ratio"]) for n in v3] == [
        (384, 12, 6, "mlp", 4.0), (384, 12, 6, "swiglu", 6.0), (768, 12, 12, "mlp", 4.0),
        (1024, 24, 16, "mlp", 4.0), (1280, 32, 20, "swiglu", 6.0)]
    with pytest.raises(EncoderError, match="unknown encoder"):
        vit_encoder.parse_name("dinov3_vitb14")


def test_vitb16_keys_are_the_official_188():
    enc = vit_encoder.build("dinov3_vitb16")
    sd = enc.state_dict()
    assert len(sd) == 188
    assert list(sd)[:6] == ["cls_token", "storage_tokens", "mask_token", "patch_embed.proj.weight",
                            "patch_embed.proj.bias", "rope_embed.periods"]
    shapes = {"cls_token": (1, 1, 768), "storage_tokens": (1, 4, 768), "mask_token": (1, 768),
              "patch_embed.proj.weight": (768, 3, 16, 16), "rope_embed.periods": (16,),
              "blocks.11.attn.qkv.weight": (2304, 768), "blocks.11.attn.qkv.bias_mask": (2304,),
              "blocks.0.mlp.fc1.weight": (3072, 768), "blocks.0.ls2.gamma": (768,),
              "norm.weight": (768,)}
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert not any("pos_embed" in k for k in sd)  # no absolute position embedding
    assert enc.blocks[0].norm1.eps == enc.norm.eps == 1e-5
    assert (enc.embed_dim, enc.num_heads, enc.patch_size, enc.num_prefix_tokens) == (768, 12, 16, 5)


def test_random_init_is_sane():
    torch.manual_seed(0)
    enc = vit_encoder.load("dinov3_vits16", weights="random")
    mask = enc.blocks[3].attn.qkv.bias_mask
    assert torch.equal(mask, torch.cat((torch.ones(DIM), torch.zeros(DIM), torch.ones(DIM))))
    periods = torch.tensor([100 ** (2 * i / 32) for i in range(16)])
    assert torch.allclose(enc.rope_embed.periods, periods, rtol=1e-6)
    assert torch.all(enc.blocks[0].ls1.gamma == 1e-5)
    y = enc(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 5 + 16, DIM) and torch.isfinite(y).all()


def test_swiglu_hidden_sizes():
    assert swiglu_hidden(384 * 6) == 1536  # S+
    assert swiglu_hidden(1280 * 6) == 5120  # H+
    assert swiglu_hidden(100) == 72  # int(66.67) = 66, rounded up to a multiple of 8
    splus = vit_encoder.build("dinov3_vits16plus")
    assert splus.blocks[0].mlp.w1.weight.shape == (1536, DIM)
    assert splus.blocks[0].mlp.w3.weight.shape == (DIM, 1536)
    assert len(splus.state_dict()) == 188 + 2 * DEPTH  # w1, w2, w3 for fc1, fc2
    ffn = SwiGLUFFN(1280, 1280 * 6)  # H+ (the whole H+ is too large to build in a test)
    assert ffn.w1.out_features == ffn.w2.out_features == ffn.w3.in_features == 5120
    small = SwiGLUFFN(16, 48)
    x = torch.randn(2, 3, 16)
    assert torch.allclose(small(x), small.w3(F.silu(small.w1(x)) * small.w2(x)))


def test_target_layers_rule():
    # the rule behind S/B and L (block round(depth·(2+k)/12), k = 0…7) gives H+'s list
    target_layers = {arch.size: list(arch.target_layers) for arch in dinov3_family.ARCHS.values()}
    for size, depth in (("small", 12), ("base", 12), ("small_plus", 12), ("large", 24),
                        ("huge_plus", 32)):
        assert target_layers[size] == [round(depth * (2 + k) / 12) for k in range(8)], size
    assert target_layers["huge_plus"] == [5, 8, 11, 13, 16, 19, 21, 24]
    # the DINOv2 sizes' lists, from the same rule
    assert vit_encoder.target_layers("dinov2reg_vit_base_14") == target_layers["base"]
    assert vit_encoder.target_layers("dinov2_vit_large_14") == target_layers["large"]


# ---- loading ----

def test_official_checkpoint_loads_key_for_key(enc, official_ckpt, official_sd):
    state = enc.state_dict()
    assert list(state) == list(official_sd)
    for k, v in official_sd.items():
        assert torch.equal(state[k], v), k
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training


def test_strict_loading_missing_and_extra(tmp_path, official_sd):
    sd = dict(official_sd)
    del sd["blocks.3.attn.qkv.bias_mask"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(EncoderError, match=r"missing: blocks\.3\.attn\.qkv\.bias_mask \(1\)"):
        vit_encoder.load("dinov3_vits16", weights=tmp_path / "missing.pth")
    sd = {**official_sd, "pos_embed": torch.zeros(1, 197, DIM)}
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(EncoderError) as err:
        vit_encoder.load("dinov3_vits16", weights=tmp_path / "extra.pth")
    assert "unexpected: pos_embed (1)" in str(err.value) and "missing:" not in str(err.value)
    with pytest.raises(EncoderError, match="shape mismatch"):  # S weights into B
        vit_encoder.load("dinov3_vitb16", weights=tmp_path / "missing.pth")


def test_official_with_empty_cache_is_one_clear_error(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DINOMALY_CACHE", str(cache))
    with pytest.raises(EncoderError) as err:
        vit_encoder.load("dinov3_vitb16", weights="official")
    msg = str(err.value)
    assert "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth" in msg
    assert str(cache / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth") in msg
    assert dinov3_family.FORM in msg and "https://dl.fbaipublicfiles.com/dinov3/" in msg
    assert "\n" not in msg and not cache.exists()  # one message; nothing downloaded
    with pytest.raises(EncoderError, match="DINOv3 download form"):
        vit_encoder.official_weights("dinov3_vitb16")


def test_official_from_the_cache(tmp_path, monkeypatch, official_ckpt, official_sd):
    monkeypatch.setenv("DINOMALY_CACHE", str(tmp_path))
    target = vit_encoder.cached_path("dinov3_vits16")
    assert target == tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    target.write_bytes(official_ckpt.read_bytes())
    enc = vit_encoder.load("dinov3_vits16", weights="official")
    assert torch.equal(enc.cls_token, official_sd["cls_token"])


def test_periods_are_the_loaded_bf16_ones(tmp_path, enc, official_sd):
    assert BF16_PERIODS[:4].tolist() == [1.0, 1.3359375, 1.78125, 2.375]
    assert BF16_PERIODS[-1].item() == 75.0
    assert torch.equal(enc.rope_embed.periods, BF16_PERIODS)
    # a file storing them as a bf16 tensor gives the same float32 buffer
    torch.save({**official_sd, "rope_embed.periods": BF16_PERIODS.bfloat16()}, tmp_path / "bf.pth")
    other = vit_encoder.load("dinov3_vits16", weights=tmp_path / "bf.pth")
    assert other.rope_embed.periods.dtype == torch.float32
    assert torch.equal(other.rope_embed.periods, BF16_PERIODS)


# ---- RoPE, attention, block ----

def test_rope_against_plain_oracle(enc):
    sin, cos = enc.rope_embed(3, 5)
    assert sin.dtype == cos.dtype == torch.float32 and sin.shape == (15, HD)
    o_sin, o_cos = oracle_rope(BF16_PERIODS, 3, 5)
    assert torch.allclose(sin.double(), o_sin, atol=2e-6)
    assert torch.allclose(cos.double(), o_cos, atol=2e-6)
    # the table recomputed in full precision would give other angles: the loaded one is used
    r_sin, _ = oracle_rope(torch.tensor([100 ** (2 * i / 32) for i in range(16)]), 3, 5)
    assert (r_sin - o_sin).abs().max() > 1e-3
    # pixel input: one row per patch, at 448 px 28 × 28
    assert enc.rope(448, 448)[0].shape == (784, HD)


def test_k_bias_is_masked():
    torch.manual_seed(0)
    lin = LinearKMaskedBias(8, 24)
    x = torch.randn(3, 8)
    base = lin(x)
    for third, has_effect in ((0, True), (1, False), (2, True)):
        with torch.no_grad():
            lin.bias[8 * third: 8 * third + 8] += 1.0
        changed = lin(x)
        assert torch.equal(changed[:, 8 * third: 8 * third + 8],
                           base[:, 8 * third: 8 * third + 8]) != has_effect, third
        with torch.no_grad():
            lin.bias[8 * third: 8 * third + 8] -= 1.0


def test_k_bias_has_no_effect_in_the_encoder(enc, official_sd):
    x = torch.randn(1, 3, 48, 64)
    ref = enc(x)
    sd = {k: v.clone() for k, v in official_sd.items()}
    sd["blocks.0.attn.qkv.bias"][DIM: 2 * DIM] += 3.0
    other = vit_encoder.build("dinov3_vits16")
    other.load_state_dict(sd)
    assert torch.equal(other(x), ref)
    sd["blocks.0.attn.qkv.bias"][:DIM] += 3.0  # the q bias does matter
    other.load_state_dict(sd)
    assert not torch.allclose(other(x), ref, atol=1e-3)


def test_one_block_against_plain_oracle(enc, official_sd):
    torch.manual_seed(1)
    x = torch.randn(2, 5 + 12, DIM)  # 5 prefix tokens + a 3 × 4 patch grid
    sin, cos = oracle_rope(BF16_PERIODS, 3, 4)
    expected = oracle_block(official_sd, 0, x.double(), sin, cos)
    out = enc.blocks[0](x, enc.rope_embed(3, 4))
    tol = 2e-6 * expected.abs().max().item()  # float32 round-off (measured ~2e-7)
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=tol)


def test_whole_encoder_against_plain_oracle(enc, official_sd):
    torch.manual_seed(2)
    img = torch.randn(2, 3, 48, 64)  # 3 × 4 patches, not square
    tokens = oracle_tokens(official_sd, img)
    assert torch.allclose(enc.prepare_tokens(img).double(), tokens, atol=1e-5)
    sin, cos = oracle_rope(BF16_PERIODS, 3, 4)
    for i in range(DEPTH):
        tokens = oracle_block(official_sd, i, tokens, sin, cos)
    w, b = official_sd["norm.weight"].double(), official_sd["norm.bias"].double()
    expected = F.layer_norm(tokens, (DIM,), w, b, eps=1e-5)
    out = enc(img).double()
    assert (out - expected).abs().max() < 1e-5 * expected.abs().max()  # measured ~1e-6


def test_fused_attention_equals_explicit(official_ckpt):
    fused = vit_encoder.load("dinov3_vits16", weights=official_ckpt, fused_attn=True)
    plain = vit_encoder.load("dinov3_vits16", weights=official_ckpt, fused_attn=False)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(fused(x), plain(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("px,grid", [(448, 28), (224, 14)])
def test_encoder_shapes(enc, px, grid):
    assert enc(torch.randn(1, 3, px, px)).shape == (1, 5 + grid * grid, DIM)


def test_crop_not_a_multiple_of_16_is_a_clear_error(enc):
    with pytest.raises(ValueError, match=r"392×400 px: each side must be a multiple of .* 16"):
        enc(torch.randn(1, 3, 392, 400))


def test_encoder_never_enters_train_mode(enc):
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    enc.train(True)
    assert not enc.training


# ---- timm format ----

@pytest.mark.parametrize("swiglu", [False, True])
def test_timm_key_conversion_round_trip(swiglu):
    official = official_v3_state_dict(swiglu=swiglu)
    timm = official_to_timm(official)
    assert "reg_token" in timm and "blocks.0.gamma_1" in timm and "blocks.0.attn.q_bias" in timm
    snapshot = {k: v.clone() for k, v in timm.items()}
    back = timm_to_official(timm)
    assert sorted(back) == sorted(official)
    # what timm does not store is filled in: the released periods, the mask, a zero k bias
    # (masked) and a zero mask_token (unused)
    for k, v in official.items():
        if k == "mask_token":
            assert torch.equal(back[k], torch.zeros(1, DIM))
        elif k.endswith("attn.qkv.bias"):
            assert torch.equal(back[k][:DIM], v[:DIM])  # q
            assert torch.equal(back[k][2 * DIM:], v[2 * DIM:])  # v
            assert torch.all(back[k][DIM: 2 * DIM] == 0)
        else:
            assert torch.equal(back[k], v), k
    again = official_to_timm(back)  # timm → official → timm is exact
    assert sorted(again) == sorted(timm) and all(torch.equal(again[k], timm[k]) for k in timm)
    # a pure function: its input is left as it was
    assert list(timm) == list(snapshot) and all(torch.equal(timm[k], snapshot[k]) for k in timm)


def test_timm_without_qkv_bias_gets_zeros():
    official = official_v3_state_dict()
    timm = {k: v for k, v in official_to_timm(official).items()
            if not k.endswith(("q_bias", "v_bias"))}
    back = timm_to_official(timm)
    assert torch.equal(back["blocks.5.attn.qkv.bias"], torch.zeros(3 * DIM))
    assert torch.equal(back["blocks.5.attn.qkv.bias_mask"], official["blocks.5.attn.qkv.bias_mask"])


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_file_gives_the_official_encoder(tmp_path, enc, official_sd, fmt):
    timm = {k: v.contiguous() for k, v in official_to_timm(official_sd).items()}
    path = tmp_path / f"vit_small_patch16_dinov3.{fmt}"
    if fmt == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file(timm, str(path))
    else:
        torch.save(timm, path)
    other = vit_encoder.load("dinov3_vits16", weights=path)
    x = torch.randn(1, 3, 64, 80)
    assert torch.equal(other(x), enc(x))


def test_unreadable_weight_files(tmp_path):
    with pytest.raises(EncoderError, match="not found"):
        vit_encoder.load("dinov3_vits16", weights=tmp_path / "nope.safetensors")
    pytest.importorskip("safetensors")
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes((1000).to_bytes(8, "little") + b'{"a": ')  # header cut short
    with pytest.raises(EncoderError, match="cannot read encoder weights file .*cut.safetensors"):
        vit_encoder.load("dinov3_vits16", weights=bad)


def test_timm_swiglu_file_loads_into_splus(tmp_path):
    official = official_v3_state_dict(swiglu=True)
    torch.save(official_to_timm(official), tmp_path / "splus.pth")
    enc = vit_encoder.load("dinov3_vits16plus", weights=tmp_path / "splus.pth")
    assert torch.equal(enc.blocks[7].mlp.w3.weight, official["blocks.7.mlp.w3.weight"])
    torch.manual_seed(3)
    x = torch.randn(1, 5 + 6, DIM)
    sin, cos = oracle_rope(BF16_PERIODS, 2, 3)
    expected = oracle_block(official, 7, x.double(), sin, cos)
    out = enc.blocks[7](x, enc.rope_embed(2, 3)).double()
    assert torch.allclose(out, expected, rtol=1e-5, atol=2e-6 * expected.abs().max().item())


# ---- Dinomaly with a DINOv3 encoder ----

@pytest.fixture(scope="module")
def dinomaly(official_ckpt):
    torch.manual_seed(0)
    return build_dinomaly("dinov3_vits16", weights=official_ckpt, dropout=0.2)


@pytest.mark.parametrize("px,grid", [(448, 28), (224, 14)])
def test_dinomaly_shapes(dinomaly, px, grid):
    seen = []
    hook = dinomaly.bottleneck[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    dinomaly.eval()
    en, de = dinomaly(torch.randn(2, 3, px, px))
    hook.remove()
    assert len(en) == len(de) == 2
    for t in en + de:
        assert t.shape == (2, DIM, grid, grid)
    assert seen == [(2, grid * grid, DIM)]  # patch tokens only into the bottleneck


def test_dinomaly_vitb16_random():
    model = build_dinomaly("dinov3_vitb16", weights="random", dropout=0.0)
    assert model.patch_tokens_only and model.target_layers == [2, 3, 4, 5, 6, 7, 8, 9]
    assert model.decoder[0].attn.num_heads == 12 == model.encoder.num_heads
    en, de = model(torch.randn(1, 3, 64, 48))
    assert [t.shape for t in en + de] == [(1, 768, 4, 3)] * 4


def test_dinomaly_semantics_patch_tokens_only(dinomaly):
    dinomaly.eval()
    img = torch.randn(2, 3, 64, 80)
    en, de = dinomaly(img)
    # patch tokens only, no final norm; B, h·w, C -> B, C, 4, 5
    plain_en, plain_de = plain_forward(dinomaly, img, grid=(4, 5),
                                       rope=dinomaly.encoder.rope_embed(4, 5), patch_tokens_only=True)
    assert torch.allclose(en[0], plain_en[0]) and torch.allclose(en[1], plain_en[1])
    assert torch.allclose(de[0], plain_de[0]) and torch.allclose(de[1], plain_de[1])


def test_dinomaly_encoder_stays_in_eval_mode(dinomaly):
    x = torch.randn(1, 3, 64, 64)
    dinomaly.eval()
    en_eval, _ = dinomaly(x)
    dinomaly.train()
    assert dinomaly.training and dinomaly.decoder.training and not dinomaly.encoder.training
    en_train, _ = dinomaly(x)
    for a, b in zip(en_eval, en_train):
        assert torch.equal(a, b)
    assert not en_train[0].requires_grad
    trainable = [n for n, p in dinomaly.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("bottleneck.", "decoder.")) for n in trainable)
    dinomaly.eval()


def test_dinomaly_crop_not_a_multiple_of_16(dinomaly):
    with pytest.raises(ValueError, match="multiple of"):
        dinomaly(torch.randn(1, 3, 392, 392 + 8))
