"""The reference's start: inverse-CDF truncated normal, the discarded DINOv1 ViT's draws,
and `build_dinomaly`'s initial weights and generator state against a plain construction.

The reference construction here is written out with `torch.nn` layers in the reference's
order (DINOv1 ViT built and dropped, DINOv2 ViT, bottleneck, decoder, init), independently
of our modules, so the tests compare against the draw sequence, not a round trip.
"""
import math

import pytest
import torch
from test_encoder import official_vits_state_dict
from torch import nn

from models import build_dinomaly, vit_encoder
from models.init import trunc_normal_
from models.reference_rng import DINOV1_ARCHS, advance_like_dinov1_vit

SEED = 1
ARCHS = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}  # dim, depth, heads


# --- oracle of the inverse-CDF truncated normal: plain Python, float64 -------------------

def norm_cdf(x: float) -> float:
    """Φ(x), the standard normal CDF."""
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def erfinv_by_bisection(v: float) -> float:
    """The `z` with `erf(z) = v`, by bisection on `math.erf` (|v| < 1)."""
    lo, hi = -6.0, 6.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < v else (lo, mid)
    return (lo + hi) / 2


def oracle_trunc_normal(u: torch.Tensor, mean: float, std: float, a: float,
                        b: float) -> torch.Tensor:
    """Inverse-CDF truncated normal from uniforms `u` in [0, 1), element by element."""
    lo, hi = 2 * norm_cdf((a - mean) / std) - 1, 2 * norm_cdf((b - mean) / std) - 1
    out = [min(max(mean + std * math.sqrt(2) * erfinv_by_bisection(lo + x * (hi - lo)), a), b)
           for x in u.double().flatten().tolist()]
    return torch.tensor(out, dtype=torch.float64).reshape(u.shape)


CASES = [(0.0, 1.0, -2.0, 2.0), (0.0, 0.02, -2.0, 2.0), (0.0, 0.01, -0.03, 0.03),
         (0.5, 2.0, -1.0, 3.0)]


@pytest.mark.parametrize("mean,std,a,b", CASES)
def test_trunc_normal_equals_oracle_and_draws_once_per_element(mean, std, a, b):
    torch.manual_seed(SEED)
    u = torch.rand(37, 53)  # the same one-per-element uniform draws as `uniform_`
    state_after_one_draw = torch.get_rng_state()
    torch.manual_seed(SEED)
    x = trunc_normal_(torch.empty(37, 53), mean, std, a, b)
    assert torch.equal(torch.get_rng_state(), state_after_one_draw)
    # float32 round-off, scaled by erfinv's slope near the bounds
    torch.testing.assert_close(x.double(), oracle_trunc_normal(u, mean, std, a, b),
                               rtol=1e-5, atol=1e-6 * std)


def test_trunc_normal_bounds_are_absolute_and_kept():
    torch.manual_seed(SEED)
    x = trunc_normal_(torch.empty(200_000), std=5.0)  # default a=-2, b=2: absolute, not ±2σ
    assert x.min() >= -2 and x.max() <= 2 and x.min() < -1.99 and x.max() > 1.99
    x = trunc_normal_(torch.empty(200_000), std=0.01, a=-0.03, b=0.03)
    assert x.abs().max() <= 0.03 and 0.0098 < x.std() < 0.0100  # N(0, 0.01) cut at ±3σ


def test_trunc_normal_is_not_tracked_by_autograd():
    w = nn.Parameter(torch.empty(8, 4))
    assert trunc_normal_(w, std=0.02) is w and w.grad_fn is None and w.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trunc_normal_draws_from_the_cuda_generator():
    cpu_state = torch.get_rng_state()
    torch.cuda.manual_seed(SEED)
    u = torch.rand(37, 53, device="cuda")
    state_after_one_draw = torch.cuda.get_rng_state()
    torch.cuda.manual_seed(SEED)
    x = trunc_normal_(torch.empty(37, 53, device="cuda"), std=0.01, a=-0.03, b=0.03)
    assert torch.equal(torch.cuda.get_rng_state(), state_after_one_draw)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    torch.testing.assert_close(x.double().cpu(), oracle_trunc_normal(u.cpu(), 0, 0.01, -0.03, 0.03),
                               rtol=1e-5, atol=1e-8)


# --- the reference construction, written plainly ------------------------------------------

def ref_trunc_normal_(t: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                      b: float = 2.0) -> None:
    """torch 1.12's `nn.init._no_grad_trunc_normal_`, as the reference's code calls it."""
    with torch.no_grad():
        t.uniform_(2 * norm_cdf((a - mean) / std) - 1, 2 * norm_cdf((b - mean) / std) - 1)
        t.erfinv_()
        t.mul_(std * math.sqrt(2.0))
        t.add_(mean)
        t.clamp_(min=a, max=b)


def module(**children: nn.Module | nn.Parameter) -> nn.Module:
    """A plain module holding `children` as attributes; kwargs are evaluated, so built, in
    the order written."""
    m = nn.Module()
    for name, child in children.items():
        setattr(m, name, child)
    return m


def vit_block(dim: int, eps: float) -> nn.Module:
    """A pre-norm ViT block as the reference's code constructs it (DINOv1 and the Dinomaly
    decoder: LayerNorm, attention with qkv bias, LayerNorm, MLP ×4), in its order of
    construction (which fixes the generator draws)."""
    return module(
        norm1=nn.LayerNorm(dim, eps=eps),
        attn=module(qkv=nn.Linear(dim, 3 * dim, bias=True), attn_drop=nn.Dropout(0.0),
                    proj=nn.Linear(dim, dim), proj_drop=nn.Dropout(0.0)),
        drop_path=nn.Identity(),
        norm2=nn.LayerNorm(dim, eps=eps),
        mlp=module(fc1=nn.Linear(dim, 4 * dim), act=nn.GELU(), fc2=nn.Linear(4 * dim, dim),
                   drop=nn.Dropout(0.0)),
    )


def dinov1_vit(size: str) -> nn.Module:
    """facebookresearch/dino `vit_<size>(patch_size=14)` (img_size 224, qkv bias, MLP ratio 4,
    no head): its layers in construction order, then its init."""
    dim, depth, _ = ARCHS[size]
    vit = module(
        patch_embed=module(proj=nn.Conv2d(3, dim, kernel_size=14, stride=14)),
        cls_token=nn.Parameter(torch.zeros(1, 1, dim)),
        pos_embed=nn.Parameter(torch.zeros(1, 16 * 16 + 1, dim)),
        pos_drop=nn.Dropout(0.0),
        blocks=nn.ModuleList(vit_block(dim, eps=1e-6) for _ in range(depth)),
        norm=nn.LayerNorm(dim, eps=1e-6),
        head=nn.Identity())
    ref_trunc_normal_(vit.pos_embed, std=0.02)
    ref_trunc_normal_(vit.cls_token, std=0.02)

    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            ref_trunc_normal_(m.weight, std=0.02)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    vit.apply(_init_weights)  # children first, as dino's `self.apply(self._init_weights)`
    return vit


def dinov2_vit(size: str, registers: bool) -> nn.Module:
    """facebookresearch/dinov2 `vit_<size>(patch_size=14, img_size=518, init_values=1e-8,
    block_chunks=0, num_register_tokens=4 or 0)`: layers in construction order, then
    `init_weights` (pos_embed, cls_token, register_tokens, then every Linear)."""
    dim, depth, _ = ARCHS[size]
    vit = module(
        patch_embed=module(proj=nn.Conv2d(3, dim, kernel_size=14, stride=14)),
        cls_token=nn.Parameter(torch.zeros(1, 1, dim)),
        pos_embed=nn.Parameter(torch.zeros(1, 37 * 37 + 1, dim)),
        blocks=nn.ModuleList(module(
            norm1=nn.LayerNorm(dim, eps=1e-6),
            attn=module(qkv=nn.Linear(dim, 3 * dim, bias=True), proj=nn.Linear(dim, dim)),
            ls1=module(gamma=nn.Parameter(1e-8 * torch.ones(dim))),
            norm2=nn.LayerNorm(dim, eps=1e-6),
            mlp=module(fc1=nn.Linear(dim, 4 * dim), fc2=nn.Linear(4 * dim, dim)),
            ls2=module(gamma=nn.Parameter(1e-8 * torch.ones(dim))),
        ) for _ in range(depth)),
        norm=nn.LayerNorm(dim, eps=1e-6),
        mask_token=nn.Parameter(torch.zeros(1, dim)))
    if registers:
        vit.register_tokens = nn.Parameter(torch.zeros(1, 4, dim))
    ref_trunc_normal_(vit.pos_embed, std=0.02)
    nn.init.normal_(vit.cls_token, std=1e-6)
    if registers:
        nn.init.normal_(vit.register_tokens, std=1e-6)

    def init_weights_vit_timm(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            ref_trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    vit.apply(init_weights_vit_timm)  # dinov2's depth-first `named_apply`
    return vit


def reference_dinomaly(name: str, weights: dict[str, torch.Tensor] | None = None,
                       device: str = "cpu") -> nn.Module:
    """The reference script's construction: encoder loader (DINOv1 ViT built and dropped,
    DINOv2 ViT, weights loaded), bottleneck, 8 decoder blocks, `.to(device)`, then the
    trainable init (so on CUDA it draws from the CUDA generator)."""
    size = name.split("_")[2]
    dim, _, _ = ARCHS[size]
    dinov1_vit(size)  # discarded, as in the reference's loader
    encoder = dinov2_vit(size, registers=name.startswith("dinov2reg"))
    if weights is not None:
        encoder.load_state_dict(weights)
    bottleneck = nn.ModuleList([module(fc1=nn.Linear(dim, 4 * dim), act=nn.GELU(),
                                       fc2=nn.Linear(4 * dim, dim), drop=nn.Dropout(0.2))])
    decoder = nn.ModuleList(vit_block(dim, eps=1e-8) for _ in range(8))
    model = module(encoder=encoder, bottleneck=bottleneck, decoder=decoder).to(device)
    reference_init_(nn.ModuleList([bottleneck, decoder]).modules())
    return model


def reference_init_(modules) -> None:
    """The scripts' init of the trained part, in module order: every Linear weight truncated
    normal (std 0.01, cut at ±0.03, the inverse-CDF draw), biases 0; LayerNorms 1 / 0."""
    for m in modules:
        if isinstance(m, nn.Linear):
            ref_trunc_normal_(m.weight, std=0.01, a=-0.03, b=0.03)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)


def assert_same_tensors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(ref)
    for k, expected in ref.items():
        assert torch.equal(ours[k], expected), k


def assert_cuda_build_alike(make_reference, make_ours, seed: int) -> None:
    """A construction on CUDA seeded like the reference's leaves the CPU and CUDA generators
    where the reference's leaves them, with the same tensors."""
    torch.manual_seed(seed)
    ref = make_reference()
    states = torch.get_rng_state(), torch.cuda.get_rng_state()
    torch.manual_seed(seed)
    ours = make_ours()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert torch.equal(torch.cuda.get_rng_state(), states[1])
    assert_same_tensors(ours.state_dict(), ref.state_dict())


# --- the discarded DINOv1 ViT ---------------------------------------------------------------

@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_dinov1_draws_equal_building_the_model(size):
    assert DINOV1_ARCHS[size] == ARCHS[size][:2]
    torch.manual_seed(SEED)
    dinov1_vit(size)
    expected = torch.get_rng_state()
    torch.manual_seed(SEED)
    advance_like_dinov1_vit(size)
    assert torch.equal(torch.get_rng_state(), expected)


# --- build_dinomaly: generator state and initial weights -----------------------------------

@pytest.mark.parametrize("name", ["dinov2reg_vit_small_14", "dinov2_vit_base_14"])
def test_random_encoder_build_equals_reference(name):
    torch.manual_seed(SEED)
    ref = reference_dinomaly(name)
    ref_state = torch.get_rng_state()
    torch.manual_seed(SEED)
    ours = build_dinomaly(name, weights="random")
    assert torch.equal(torch.get_rng_state(), ref_state)
    assert_same_tensors(ours.state_dict(), ref.state_dict())


@pytest.mark.parametrize("weights", ["path", "official"])
def test_official_format_weights_build_equals_reference(weights, tmp_path, monkeypatch):
    name = "dinov2reg_vit_small_14"
    ckpt = official_vits_state_dict()
    monkeypatch.setenv("DINOMALY_CACHE", str(tmp_path))
    torch.save(ckpt, vit_encoder.cached_path(name))
    torch.manual_seed(SEED)
    ref = reference_dinomaly(name, weights=ckpt)
    ref_state = torch.get_rng_state()
    torch.manual_seed(SEED)
    ours = build_dinomaly(name, weights=str(vit_encoder.cached_path(name))
                          if weights == "path" else "official")
    assert torch.equal(torch.get_rng_state(), ref_state)
    assert_same_tensors(ours.state_dict(), ref.state_dict())  # the encoder: the file's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_build_equals_reference():
    """Construction draws from the CPU generator, the decoder/bottleneck init (after the move
    to the device) from the CUDA one, as in the reference."""
    name = "dinov2reg_vit_small_14"
    assert_cuda_build_alike(lambda: reference_dinomaly(name, device="cuda"),
                            lambda: build_dinomaly(name, weights="random", device="cuda"), SEED)
