"""`build_dinomaly2` against the preview code's construction written out with `torch.nn`
layers (initial weights tensor for tensor, and the generator state after them), its
state_dict and parameter counts, and checkpoints between it, the preview and Dinomaly."""
import pytest
import torch
from test_reference_init import (ARCHS, assert_cuda_build_alike, assert_same_tensors, dinov1_vit,
                                 dinov2_vit, module, reference_init_, vit_block)
from torch import nn

from models import (CheckpointMismatch, build_dinomaly, build_dinomaly2, load_checkpoint,
                    vit_encoder)
from models.build2 import dinomaly2_bottleneck, dinomaly2_decoder

SEED = 1
NAME = "dinov2reg_vit_small_14"


def preview_dinomaly2(name: str, device: str = "cpu", dropout: float = 0.4) -> nn.Module:
    """The preview's 2D script: the loader (DINOv1 ViT built and dropped, the DINOv2 ViT),
    bottleneck `[Sequential(Linear(C, 256), Dropout), Sequential(Linear(256, 4C), GELU,
    Dropout, Linear(4C, C), Dropout)]`, 8 decoder blocks, `.to(device)`, then
    `init_weights`: bottleneck.modules() then decoder.modules(), Linear weights truncated
    normal std 0.01 in ±0.03, biases 0, LayerNorms 1/0."""
    size = name.split("_")[2]
    dim = ARCHS[size][0]
    dinov1_vit(size)  # discarded
    encoder = dinov2_vit(size, registers=name.startswith("dinov2reg"))
    bottleneck = nn.ModuleList([
        nn.Sequential(nn.Linear(dim, 256), nn.Dropout(dropout)),
        nn.Sequential(nn.Linear(256, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim),
                      nn.Dropout(dropout))])
    decoder = nn.ModuleList(vit_block(dim, eps=1e-8) for _ in range(8))
    model = module(encoder=encoder, bottleneck=bottleneck, decoder=decoder).to(device)
    reference_init_(list(bottleneck.modules()) + list(decoder.modules()))
    return model


@pytest.fixture(scope="module")
def preview_and_state():
    torch.manual_seed(SEED)
    ref = preview_dinomaly2(NAME)
    return ref, torch.get_rng_state()


@pytest.mark.parametrize("linear_attention", [True, False])
def test_seeded_build_equals_the_preview_construction(preview_and_state, linear_attention):
    """The softmax decoder (`--la 0`) has the same Linears in the same order: same draws."""
    ref, state = preview_and_state
    torch.manual_seed(SEED)
    ours = build_dinomaly2(NAME, weights="random", linear_attention=linear_attention)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same_tensors(ours.state_dict(), ref.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_build_equals_the_preview_construction():
    assert_cuda_build_alike(lambda: preview_dinomaly2(NAME, device="cuda"),
                            lambda: build_dinomaly2(NAME, weights="random", device="cuda"), SEED)


def test_state_dict_keys_and_parameter_counts(preview_and_state):
    torch.manual_seed(SEED)
    model = build_dinomaly2(NAME, weights="random")
    keys = list(model.state_dict())
    assert len(keys) == 278 and sorted(keys) == sorted(preview_and_state[0].state_dict())
    assert [k for k in keys if k.startswith("bottleneck.")] == [
        f"bottleneck.{m}.{p}" for m in ("0.0", "1.0", "1.3") for p in ("weight", "bias")]
    assert sum(k.startswith("encoder.") for k in keys) == 176
    assert sum(k.startswith("decoder.") for k in keys) == 96
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == 15_279_232
    assert sum(p.numel() for p in model.parameters()) == 37_337_344


@pytest.mark.parametrize("size,trainable,total", [("base", 60_049_408, 146_632_960),
                                                  ("large", 106_280_192, 410_652_928)])
def test_parameter_counts_base_large(size, trainable, total):
    """Counted on the meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        encoder = vit_encoder.build(f"dinov2reg_vit_{size}_14")
        parts = nn.ModuleList([dinomaly2_bottleneck(encoder.embed_dim, 0.4),
                               dinomaly2_decoder(encoder.embed_dim, encoder.num_heads)])
    n_trainable = sum(p.numel() for p in parts.parameters())
    assert n_trainable == trainable
    assert n_trainable + sum(p.numel() for p in encoder.parameters()) == total
    assert [b.attn.num_heads for b in parts[1]] == [{"base": 12, "large": 16}[size]] * 8


def test_preview_checkpoints_load_both_ways(preview_and_state, tmp_path):
    ref = preview_and_state[0]
    with torch.no_grad():  # weights of the preview's model that ours does not have
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "preview.pth"
    torch.save(ref.state_dict(), path)
    torch.manual_seed(SEED + 1)
    ours = load_checkpoint(build_dinomaly2(NAME, weights="random"), path)
    assert_same_tensors(ours.state_dict(), ref.state_dict())
    torch.save(ours.state_dict(), tmp_path / "ours.pth")
    other = preview_dinomaly2(NAME)
    other.load_state_dict(torch.load(tmp_path / "ours.pth"), strict=True)
    assert_same_tensors(other.state_dict(), ref.state_dict())


def test_checkpoint_of_the_other_method_is_one_line(tmp_path):
    torch.manual_seed(SEED)
    v1 = build_dinomaly(NAME, weights="random")
    v2 = build_dinomaly2(NAME, weights="random")
    torch.save(v1.state_dict(), tmp_path / "v1.pth")
    torch.save({"model": {k: v for k, v in v2.state_dict().items()
                          if not k.startswith("encoder.")}}, tmp_path / "v2.pth")
    with pytest.raises(CheckpointMismatch) as err:
        load_checkpoint(v2, tmp_path / "v1.pth")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "v1.pth") in msg
    assert "is a Dinomaly model, this model is Dinomaly2" in msg and "build_dinomaly" in msg
    with pytest.raises(CheckpointMismatch, match="is a Dinomaly2 model, this model is Dinomaly:"):
        load_checkpoint(v1, tmp_path / "v2.pth")
