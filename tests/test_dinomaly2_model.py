"""Dinomaly2's model (`models.uad.Dinomaly`) against its forward written out plainly:
recentering, the three-layer bottleneck, the fusion groups (`--lc`), the neighbour mask,
the softmax attention with DropKey (`--la 0`), and the switches of the preview code."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from oracles import (assert_maps_close, layer_norm_plain, plain_dinomaly2_decoder,
                     plain_encoder_blocks, plain_group_maps)
from models import LOOSE_GROUPS, build_dinomaly2, loose_group_list
from models.attention import Attention, DropKey
from models.dinomaly2 import ensure_register_tokens
from oracles import assert_forward_equals

P = 5  # prefix tokens of DINOv2-reg: cls + 4 registers


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_dinomaly2("dinov2reg_vit_small_14", weights="random").eval()


def plain_dinomaly2(model, x, groups, recenter=True, remove_cls=False, neck=range(8)):
    """The preview's forward in eval mode, written out: encoder blocks 0..9, kept 2..9; the
    mean of the `neck` layers (prefix cut first with `remove_cls`) through Linear(C, 256),
    Linear(256, 4C), GELU, Linear(4C, C); the decoder blocks, reversed; per group the means;
    decoder prefix cut unless `remove_cls`; encoder: patches − group cls, layer norm."""
    kept = plain_encoder_blocks(model.encoder, x)[2:]
    src = [k[:, P:] if remove_cls else k for k in kept]
    dec = plain_dinomaly2_decoder(model, torch.stack([src[i] for i in neck]).mean(0))
    return plain_group_maps(
        kept, dec, groups,
        lambda e: layer_norm_plain(e[:, P:] - e[:, :1]) if recenter else e[:, P:],
        lambda d: d if remove_cls else d[:, P:])


def test_forward_equals_plain_recomputation(small):
    x = torch.randn(2, 3, 70, 70)
    assert_forward_equals(small, x, plain_dinomaly2(small, x, LOOSE_GROUPS[2]), (2, 384, 5, 5))
    en, de = small(x)
    # the recentred targets: zero mean, unit (biased) variance over channels at every patch
    torch.testing.assert_close(en[0].mean(1), torch.zeros(2, 5, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(en[0].var(1, unbiased=False), torch.ones(2, 5, 5), atol=1e-4,
                               rtol=0)


def test_switches_equal_plain_recomputation(small):
    """`--cr 0`, `remove_class_token`, `fuse_layer_bottleneck`: one model, switches set."""
    x = torch.randn(1, 3, 56, 56)
    model = models.Dinomaly(small.encoder, small.bottleneck, small.decoder,
                            fuse_layer_bottleneck=[1, 4, 6], context_aware_recenter=False).eval()
    assert_maps_close(sum(model(x), []), sum(plain_dinomaly2(small, x, LOOSE_GROUPS[2],
                                                             recenter=False, neck=[1, 4, 6]), []))
    model = models.Dinomaly(small.encoder, small.bottleneck, small.decoder,
                            remove_class_token=True).eval()
    assert_maps_close(sum(model(x), []), sum(plain_dinomaly2(small, x, LOOSE_GROUPS[2],
                                                             remove_cls=True), []))


def test_use_get_intermediate_gives_the_same_tensors(small):
    """The preview's intermediate-layer path runs every block; the early-stopping pass gives
    the same outputs."""
    x = torch.randn(1, 3, 42, 42)
    model = models.Dinomaly(small.encoder, small.bottleneck, small.decoder,
                            use_get_intermediate=True).eval()
    with torch.no_grad():
        t = small.encoder.prepare_tokens(x)
        every = []
        for blk in small.encoder.blocks:  # all 12 blocks
            t = blk(t)
            every.append(t)
    for got, expected in zip(model.encode(x), every[2:10]):
        assert torch.equal(got, expected)
    for a, b in zip(sum(model(x), []), sum(small(x), [])):
        assert torch.equal(a, b)


def test_loose_groups_table_and_refusal():
    assert LOOSE_GROUPS == {0: [[i] for i in range(8)], 1: [list(range(8))],
                            2: [[0, 1, 2, 3], [4, 5, 6, 7]], 3: [[0, 1, 2], [3, 4, 5], [6, 7]],
                            4: [[0, 1], [2, 3], [4, 5], [6, 7]], 11: [[7]], 12: [[3], [7]],
                            14: [[1], [3], [5], [7]]}
    for bad in (5, 13, -1, "2", True):
        with pytest.raises(ValueError, match=r"--lc .*allowed values: 0, 1, 2, 3, 4, 11, 12, 14"):
            loose_group_list(bad)


@pytest.mark.parametrize("lc", [0, 11, 14])
def test_groups_pair_encoder_layers_with_reversed_decoder_blocks(small, lc):
    groups = loose_group_list(lc)
    model = models.Dinomaly(small.encoder, small.bottleneck, small.decoder,
                            fuse_layer_encoder=groups, fuse_layer_decoder=groups).eval()
    x = torch.randn(1, 3, 42, 42)
    en, de = model(x)
    assert len(en) == len(de) == len(groups)
    assert_maps_close(en + de, sum(plain_dinomaly2(small, x, groups), []))


def test_bottleneck_order_and_dropout_draws():
    """Linear(C, 256) → Dropout → Linear(256, 4C) → GELU (exact) → Dropout → Linear(4C, C) →
    Dropout, no dropout on the input: three masks drawn, in this order."""
    neck = models.build2.dinomaly2_bottleneck(8, 0.4).train()
    assert [type(m) for m in neck[0]] == [nn.Linear, nn.Dropout]
    assert [type(m) for m in neck[1]] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.Dropout]
    assert neck[1][1].approximate == "none" and neck[0][0].out_features == 256
    x = torch.randn(2, 3, 8)
    torch.manual_seed(5)
    for blk in neck:
        x_out = blk(x) if blk is neck[0] else blk(x_out)
    state = torch.get_rng_state()
    torch.manual_seed(5)
    h = F.dropout(neck[0][0](x), 0.4)
    h = F.dropout(F.gelu(neck[1][0](h)), 0.4)
    assert torch.equal(x_out, F.dropout(neck[1][3](h), 0.4))
    assert torch.equal(torch.get_rng_state(), state)


def plain_mask_loop(side: int, n: int, prefix: int | None) -> torch.Tensor:
    """The preview's mask, its loops written out: 0 in the clipped window
    `[i − n//2, i + n//2]` of each query, per axis; embedded in ones after `prefix` tokens."""
    mask = torch.ones(side, side, side, side)
    for h1 in range(side):
        for w1 in range(side):
            mask[h1, w1, max(h1 - n // 2, 0):min(h1 + n // 2 + 1, side),
                 max(w1 - n // 2, 0):min(w1 + n // 2 + 1, side)] = 0
    mask = mask.view(side * side, side * side)
    if prefix is None:
        return mask
    full = torch.ones(side * side + prefix, side * side + prefix)
    full[prefix:, prefix:] = mask
    return full


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("remove_cls", [False, True])
def test_generate_mask_equals_the_loop(small, n, remove_cls):
    model = models.Dinomaly(small.encoder, small.bottleneck, small.decoder,
                            mask_neighbor_size=n, remove_class_token=remove_cls)
    got = model.generate_mask(5, "cpu")
    assert torch.equal(got, plain_mask_loop(5, n, None if remove_cls else P))


def plain_softmax_attention(attn, x, mask=None, drop=None):
    q, k, v = attn.qkv(x).reshape(*x.shape[:2], 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if drop is not None:
        logits = logits + drop * -1e12
    weights = logits.softmax(-1)
    if mask is not None:
        weights = weights * (mask != 0)  # zeroed after the softmax, no renormalisation
    return attn.proj((weights @ v).transpose(1, 2).reshape(x.shape))


def test_softmax_attention_mask_and_dropkey_draws():
    torch.manual_seed(0)
    attn = Attention(24, num_heads=4, qkv_bias=True, attn_drop=0.0)
    x = torch.randn(2, 9, 24)
    mask = plain_mask_loop(3, 1, None)
    attn.eval()
    state = torch.get_rng_state()
    torch.testing.assert_close(attn(x, attn_mask=mask), plain_softmax_attention(attn, x, mask))
    assert torch.equal(torch.get_rng_state(), state)  # eval: no draws
    attn.train()  # p = 0: nothing dropped, but the draw is made
    torch.manual_seed(3)
    out = attn(x)
    after = torch.get_rng_state()
    torch.manual_seed(3)
    torch.bernoulli(torch.zeros(2, 4, 9, 9))
    assert torch.equal(after, torch.get_rng_state())
    torch.testing.assert_close(out, plain_softmax_attention(attn, x))
    attn.attn_drop.p = 0.5
    torch.manual_seed(4)
    out = attn(x)
    torch.manual_seed(4)
    drop = torch.bernoulli(torch.full((2, 4, 9, 9), 0.5))
    torch.testing.assert_close(out, plain_softmax_attention(attn, x, drop=drop))
    assert isinstance(attn.attn_drop, DropKey)


def test_softmax_decoder_model_and_masked_forward(small):
    torch.manual_seed(0)
    decoder = models.build2.dinomaly2_decoder(384, 6, linear_attention=False)
    assert all(isinstance(b.attn, Attention) for b in decoder)
    assert [n for n, _ in decoder[0].named_parameters()] == [
        n for n, _ in small.decoder[0].named_parameters()]  # the same state_dict keys
    model = models.Dinomaly(small.encoder, small.bottleneck, decoder, mask_neighbor_size=3).eval()
    x = torch.randn(1, 3, 42, 42)
    en, de = model(x)
    assert de[0].shape == (1, 384, 3, 3)
    # the mask reaches every block: with it, the decoder differs from the unmasked one
    model.mask_neighbor_size = 0
    assert not torch.allclose(model(x)[1][0], de[0])


def test_register_token_rule():
    class Bare(nn.Module):
        pass

    bare, storage = Bare(), Bare()
    storage.n_storage_tokens = 4
    assert ensure_register_tokens(bare) == 0 and bare.num_register_tokens == 0
    assert ensure_register_tokens(storage) == 4 and storage.num_register_tokens == 4
    storage.num_register_tokens = 1  # present: kept
    assert ensure_register_tokens(storage) == 1


def test_dinov3_encoder():
    torch.manual_seed(0)
    model = build_dinomaly2("dinov3_vits16", weights="random")
    assert model.use_get_intermediate and model.num_prefix_tokens == 5
    model.train()
    assert not model.encoder.training  # our DINOv3 stays in eval mode: no RoPE rescale draws
    model.eval()
    en, de = model(torch.randn(1, 3, 64, 64))
    assert [t.shape for t in en + de] == [(1, 384, 4, 4)] * 4
