"""Dinomaly2's RGB + depth model (`models.uad.DinomalyRGBD`) and `build_dinomaly2_rgbd`
against the preview code's forward and construction written out plainly: one encoder pass
over RGB and depth, the layers merged by `rgb_ratio`, the targets `cls · weight + patches`
layer normalised, the initial weights and generator state, keys and parameter counts."""
import pytest
import torch
from test_dinomaly2_build import SEED, preview_dinomaly2
from test_reference_init import assert_cuda_build_alike, assert_same_tensors

import models
from oracles import (assert_maps_close, layer_norm_plain, plain_dinomaly2_decoder,
                     plain_encoder_blocks, plain_group_maps)
from models import LOOSE_GROUPS, build_dinomaly2, build_dinomaly2_rgbd
from models.dinomaly2 import recenter
from oracles import assert_forward_equals

NAME = "dinov2reg_vit_small_14"
P = 5  # cls + 4 registers


@pytest.fixture(scope="module")
def rgbd():
    torch.manual_seed(0)
    return build_dinomaly2_rgbd(NAME, weights="random").eval()


def plain_rgbd(model, x, groups, weight=-1.0, norm=True, ratio=0.5, remove_cls=False):
    """The preview's `DinomalyRGBD.forward` in eval mode, written out: RGB and depth as one
    batch through blocks 0..9, kept 2..9 (prefix cut with `remove_cls`), merged
    `ratio · rgb + (1 − ratio) · depth`; the mean of the eight through Linear(C, 256),
    Linear(256, 4C), GELU, Linear(4C, C); the decoder, reversed; per group the means;
    encoder `cls · weight + patches` (patches for weight 0), layer norm; decoder prefix cut."""
    B = x.shape[0]
    outs = plain_encoder_blocks(model.encoder, torch.cat([x[:, :3], x[:, 3:]]))
    kept = [k[:, P:] if remove_cls else k for k in outs[2:]]
    kept = [ratio * k[:B] + (1 - ratio) * k[B:] for k in kept]
    dec = plain_dinomaly2_decoder(model, torch.stack(kept).mean(0))
    def encoder_side(e):  # cls · weight + patches (patches for weight 0), layer norm
        if not remove_cls:
            e = e[:, :1] * weight + e[:, P:] if weight != 0 else e[:, P:]
        return layer_norm_plain(e) if norm else e
    return plain_group_maps(kept, dec, groups, encoder_side,
                            lambda d: d if remove_cls else d[:, P:])


def test_forward_equals_the_plain_preview_forward(rgbd):
    x = torch.randn(2, 6, 56, 56)
    assert_forward_equals(rgbd, x, plain_rgbd(rgbd, x, LOOSE_GROUPS[2]), (2, 384, 4, 4))


@pytest.mark.parametrize("kwargs,plain", [
    ({}, {"weight": 0.0, "norm": False}),  # the class defaults: patches only, one group
    ({"add_class_token_weight": 0.5, "norm_encoder_token": True, "rgb_ratio": 0.8},
     {"weight": 0.5, "norm": True, "ratio": 0.8}),
    ({"remove_class_token": True, "norm_encoder_token": True}, {"remove_cls": True, "norm": True}),
])
def test_switches_equal_the_plain_forward(rgbd, kwargs, plain):
    model = models.uad.DinomalyRGBD(rgbd.encoder, rgbd.bottleneck, rgbd.decoder, **kwargs).eval()
    x = torch.randn(1, 6, 42, 42)
    assert_maps_close(sum(model(x), []), sum(plain_rgbd(rgbd, x, LOOSE_GROUPS[1], **plain), []))


def test_script_targets_are_dinomaly2s_recentering_of_the_merged_layers(rgbd):
    """weight −1 with the norm is `recenter` bit for bit; with depth = RGB the merge is the
    identity and the model is Dinomaly2's on the RGB image."""
    group = torch.randn(3, P + 16, 384)
    assert torch.equal(rgbd.encoder_target(group), recenter(group, P))
    rgb = torch.randn(2, 3, 42, 42)
    plain = models.Dinomaly(rgbd.encoder, rgbd.bottleneck, rgbd.decoder,
                            fuse_layer_encoder=LOOSE_GROUPS[2], fuse_layer_decoder=LOOSE_GROUPS[2]).eval()
    for a, b in zip(sum(rgbd(torch.cat([rgb, rgb], 1)), []), sum(plain(rgb), [])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_input_must_have_six_channels(rgbd):
    with pytest.raises(ValueError, match="B × 6 × H × W"):
        rgbd(torch.randn(1, 3, 28, 28))


def test_encoder_require_grad_layer_runs_those_blocks_with_gradient(rgbd):
    model = models.uad.DinomalyRGBD(rgbd.encoder, rgbd.bottleneck, rgbd.decoder,
                                    encoder_require_grad_layer=[9])
    model.encoder.requires_grad_(True)
    try:
        en, _ = model(torch.randn(1, 6, 28, 28))
        en[0].sum().backward()
        blocks = model.encoder.blocks
        assert blocks[9].mlp.fc2.weight.grad is not None
        assert blocks[8].mlp.fc2.weight.grad is None  # below: no gradient
        with torch.no_grad():  # the caller's mode wins
            assert not model(torch.randn(1, 6, 28, 28))[0][0].requires_grad
    finally:
        model.encoder.requires_grad_(False)
        model.encoder.zero_grad(set_to_none=True)


def test_seeded_build_equals_the_preview_construction():
    """The 3D script builds the same modules in the same order as the 2D one: the same
    initial weights and generator state; the keys and counts of Dinomaly2's model."""
    torch.manual_seed(SEED)
    ref = preview_dinomaly2(NAME)
    state = torch.get_rng_state()
    torch.manual_seed(SEED)
    ours = build_dinomaly2_rgbd(NAME, weights="random")
    assert isinstance(ours, models.uad.DinomalyRGBD)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same_tensors(ours.state_dict(), ref.state_dict())
    assert len(ours.state_dict()) == 278
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == 15_279_232
    assert sum(p.numel() for p in ours.parameters()) == 37_337_344
    assert (ours.add_class_token_weight, ours.norm_encoder_token, ours.rgb_ratio) == (-1.0, True, 0.5)
    assert ours.fuse_layer_encoder == ours.fuse_layer_decoder == LOOSE_GROUPS[2]


def test_checkpoints_move_between_the_2d_and_3d_models(tmp_path):
    torch.manual_seed(SEED)
    rgbd = build_dinomaly2_rgbd(NAME, weights="random", dropout=0.0, loose_groups=4)
    torch.save(rgbd.state_dict(), tmp_path / "rgbd.pth")
    torch.manual_seed(SEED + 1)
    plain = models.load_checkpoint(build_dinomaly2(NAME, weights="random"), tmp_path / "rgbd.pth")
    assert_same_tensors(plain.state_dict(), rgbd.state_dict())
    assert rgbd.fuse_layer_encoder == LOOSE_GROUPS[4] and rgbd.bottleneck[0][1].p == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_build_equals_the_preview_construction():
    assert_cuda_build_alike(lambda: preview_dinomaly2(NAME, device="cuda"),
                            lambda: build_dinomaly2_rgbd(NAME, weights="random", device="cuda"), SEED)
