"""The Dinomaly model: linear attention, shapes, init, forward semantics, checkpoints."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import CheckpointError, build_dinomaly, load_checkpoint
from models.vision_transformer import Block, LinearAttention2, bMlp
from oracles import plain_forward


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_dinomaly("dinov2reg_vit_small_14", weights="random")


def test_linear_attention_equals_quadratic_form():
    torch.manual_seed(0)
    attn = LinearAttention2(48, num_heads=4, qkv_bias=True)
    x = torch.randn(2, 11, 48)
    q, k, v = attn.qkv(x).reshape(2, 11, 3, 4, 12).permute(2, 0, 3, 1, 4)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    sim = q @ k.transpose(-2, -1)  # B, heads, N, N: q'_i · k'_j, no softmax, no scale
    out = (sim @ v) / sim.sum(-1, keepdim=True)
    expected = attn.proj(out.transpose(1, 2).reshape(2, 11, 48))
    assert torch.allclose(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_linear_attention_eps_is_added_once_to_the_denominator():
    """eps (Dinomaly2: 1e-8) enters once, added to q'·Σk' before the reciprocal; eps 0 (the
    default, Dinomaly) adds nothing."""
    torch.manual_seed(0)
    plain = LinearAttention2(48, num_heads=4, qkv_bias=True)
    guarded = LinearAttention2(48, num_heads=4, qkv_bias=True, eps=0.25)
    guarded.load_state_dict(plain.state_dict())
    x = torch.randn(2, 11, 48)
    q, k, v = plain.qkv(x).reshape(2, 11, 3, 4, 12).permute(2, 0, 3, 1, 4)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    kv = k.transpose(-2, -1) @ v  # heads: hd × hd
    denominator = (q * k.sum(-2, keepdim=True)).sum(-1, keepdim=True)  # B, heads, N, 1
    expected = plain.proj(((q @ kv) / (denominator + 0.25)).transpose(1, 2).reshape(2, 11, 48))
    assert torch.allclose(guarded(x), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(guarded(x), plain(x), rtol=1e-5, atol=1e-6)
    assert Block(48, 4, attn_eps=1e-8).attn.eps == 1e-8 and Block(48, 4).attn.eps == 0.0


def test_decoder_block_is_pre_norm_residual():
    torch.manual_seed(0)
    blk = Block(32, 4)
    x = torch.randn(2, 5, 32)
    y = x + blk.attn(blk.norm1(x))
    assert torch.allclose(blk(x), y + blk.mlp(blk.norm2(y)))
    assert blk.norm1.eps == 1e-8 and blk.attn.qkv.bias is not None


def test_bottleneck_order_dropout_linear_gelu():
    torch.manual_seed(0)
    b = bMlp(8, 32, 8, drop=0.5).train()
    x = torch.randn(4, 3, 8)
    torch.manual_seed(1)
    out = b(x)
    torch.manual_seed(1)
    h = F.dropout(x, 0.5)
    h = F.dropout(F.gelu(b.fc1(h)), 0.5)
    assert torch.equal(out, F.dropout(b.fc2(h), 0.5))


@pytest.mark.parametrize("size,grid", [(98, 7), (392, 28)])
def test_forward_shapes(small, size, grid):
    small.eval()
    en, de = small(torch.randn(2, 3, size, size))
    assert len(en) == len(de) == 2
    for t in en + de:
        assert t.shape == (2, 384, grid, grid)


def test_state_dict_keys_match_reference(small):
    keys = list(small.state_dict())
    assert len(keys) == 276
    for k in ("encoder.cls_token", "encoder.pos_embed", "encoder.register_tokens",
              "encoder.mask_token", "encoder.norm.weight", "encoder.blocks.11.ls2.gamma",
              "bottleneck.0.fc1.weight", "bottleneck.0.fc2.bias",
              "decoder.7.attn.qkv.weight", "decoder.0.mlp.fc2.weight", "decoder.3.norm2.bias"):
        assert k in keys, k


def test_trainable_part_and_init(small):
    trainable = [n for n, p in small.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("bottleneck.", "decoder.")) for n in trainable)
    assert len(trainable) == 4 + 8 * 12
    for m in list(small.bottleneck.modules()) + list(small.decoder.modules()):
        if isinstance(m, nn.Linear):
            assert m.weight.abs().max() <= 0.03 and torch.all(m.bias == 0)
            assert 0.0096 < m.weight.std() < 0.0101  # N(0, 0.01) cut at ±3σ: std 0.00987
        if isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert small.target_layers == [2, 3, 4, 5, 6, 7, 8, 9]
    assert small.bottleneck[0].drop.p == 0.2


def test_dropout_zero_turns_all_dropout_off():
    m = build_dinomaly("dinov2reg_vit_small_14", weights="random", dropout=0.0)
    assert all(d.p == 0 for d in m.modules() if isinstance(d, nn.Dropout))
    m.train()
    x = torch.randn(1, 3, 56, 56)
    a, b = m(x)[1][0], m(x)[1][0]
    assert torch.equal(a, b)


def test_large_target_layers():
    assert models.vit_encoder.target_layers("dinov2reg_vit_large_14") == [4, 6, 8, 10, 12, 14, 16, 18]


def test_forward_semantics_against_plain_recomputation(small):
    small.eval()
    x = torch.randn(2, 3, 70, 70)
    en, de = small(x)
    # drop cls + 4 registers, B, N, C -> B, C, 5, 5
    plain_en, plain_de = plain_forward(small, x, grid=(5, 5))
    assert torch.allclose(en[0], plain_en[0]) and torch.allclose(en[1], plain_en[1])
    assert torch.allclose(de[0], plain_de[0]) and torch.allclose(de[1], plain_de[1])


def test_blocks_after_last_target_never_run(small):
    calls = []
    hooks = [small.encoder.blocks[i].register_forward_hook(lambda *a, i=i: calls.append(i))
             for i in range(12)]
    small(torch.randn(1, 3, 42, 42))
    for h in hooks:
        h.remove()
    assert calls == list(range(10))


def test_encoder_outputs_carry_no_graph(small):
    small.train()
    en, de = small(torch.randn(1, 3, 42, 42))
    assert not en[0].requires_grad and de[0].requires_grad


def test_load_checkpoint_reproduces_outputs(small, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(small.state_dict(), path)
    torch.manual_seed(123)
    other = build_dinomaly("dinov2reg_vit_small_14", weights="random")
    x = torch.randn(2, 3, 98, 98)
    small.eval(), other.eval()
    assert not torch.equal(small(x)[1][0], other(x)[1][0])
    load_checkpoint(other, path)
    en1, de1 = small(x)
    en2, de2 = other(x)
    for a, b in zip(en1 + de1, en2 + de2):
        assert torch.equal(a, b)


def test_load_checkpoint_variants(small, tmp_path):
    x = torch.randn(1, 3, 42, 42)
    small.eval()
    ref = small(x)[1][1]
    # saved from DistributedDataParallel
    path = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in small.state_dict().items()}, path)
    other = load_checkpoint(build_dinomaly("dinov2reg_vit_small_14", weights="random").eval(), path)
    assert torch.equal(other(x)[1][1], ref)
    # a training checkpoint holding only the trainable part keeps the model's encoder
    path = tmp_path / "train.pth"
    trainable = {k: v for k, v in small.state_dict().items() if not k.startswith("encoder.")}
    torch.save({"model": trainable, "iteration": 3}, path)
    other = build_dinomaly("dinov2reg_vit_small_14", weights="random").eval()
    other.encoder.load_state_dict(small.encoder.state_dict())
    load_checkpoint(other, path)
    assert torch.equal(other(x)[1][1], ref)


def test_checkpoint_of_another_size_is_one_error(small, tmp_path):
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    base = build_dinomaly("dinov2reg_vit_base_14", weights="random")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(base, path)
    msg = str(err.value)
    assert str(path) in msg and "shape mismatch" in msg and "another encoder size" in msg
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(base, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(base, tmp_path / "junk.pth")


def test_init_is_seed_reproducible():
    torch.manual_seed(7)
    a = build_dinomaly("dinov2reg_vit_small_14", weights="random")
    torch.manual_seed(7)
    b = build_dinomaly("dinov2reg_vit_small_14", weights="random")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
