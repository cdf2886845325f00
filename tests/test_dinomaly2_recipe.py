"""Dinomaly2's recipe piece by piece: the scripts' constants, the switches reaching the model,
the loss (hard mining, or the preview's `global_cosine`: a mean over the groups), the
optimizer groups, schedule and clipping, the paper's rows, `--dataset auto`, and every bad
setting as one line with nothing written."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dataset
import dinomaly2_2d
import dinomaly2_fewshot
import models
import synth
import utils
from conftest import TINY
from engine.cli import main, parse_args
from recipes import get_recipe, recipe_of
from recipes.dinomaly2 import Config, Dinomaly2Loss
from recipes.dinomaly2_fewshot import Config as FewShotConfig

SMALL = "dinov2reg_vit_small_14"


def small(**changes) -> Config:
    return Config(**{"encoder": SMALL, "encoder_weights": "random", **changes})


# ----------------------------------------------------------------------------- the scripts

def test_script_constants_are_the_preview_s_and_the_paper_s():
    c = dinomaly2_2d.config
    assert (c.METHOD, c.dataset, c.separate, c.total_iters, c.eval_every) == \
           ("dinomaly2", "auto", False, 40_000, 5_000)
    assert (c.image_size, c.crop_size, c.batch_size, c.seed, c.num_workers) == (448, 392, 16, 1, 4)
    assert (c.encoder, c.encoder_weights) == ("dinov2reg_vit_base_14", "official")  # the paper's ViT-B
    assert (c.dropout, c.la, c.lc, c.cr, c.attn_eps) == (0.4, 1, 2, 1, 1e-8)
    assert (c.ll, c.ll_ratio, c.ll_ramp_iters, c.ll_factor) == (1, 0.9, 1000, 0.1)
    assert (c.lr, c.first_layer_lr, c.lr_decay_ratio, c.warmup_iters) == (2e-3, 2e-4, 1.0, 100)
    assert (c.weight_decay, c.betas, c.eps, c.amsgrad, c.clip_grad) == (1e-4, (0.9, 0.999), 1e-10,
                                                                        False, 0.1)
    assert (c.max_ratio, c.eval_resolution, c.save_name) == (0.01, 256, "dinomaly2_2d")
    f = dinomaly2_fewshot.config
    assert (f.METHOD, f.shot, f.eval_every, f.total_iters, f.save_name) == \
           ("dinomaly2_fewshot", 4, 2_000, 40_000, "dinomaly2_fewshot")
    same = [k.name for k in dataclasses.fields(c) if k.name not in ("eval_every", "save_name")]
    assert all(getattr(f, k) == getattr(c, k) for k in same)
    assert Config() == dataclasses.replace(c, dataset="mvtec")  # the Config's defaults: the script's


def test_dataset_auto_is_the_preview_s_rule(tmp_path):
    cfg = parse_args(dinomaly2_2d.config, ["--data_path", "/data/MPDD", "--device", "cpu"])
    assert (cfg.dataset, cfg.classes) == ("mpdd", tuple(dataset.MPDD_CLASSES))
    cfg = parse_args(dinomaly2_2d.config, ["--data_path", "/x/BTech_Dataset_transformed", "--device", "cpu"])
    assert (cfg.dataset, cfg.classes) == ("btad", ("01", "02", "03"))
    parts = synth.make_mvtec(tmp_path / "parts", classes=("zeta", "alpha"), n_train=1)
    cfg = parse_args(dinomaly2_fewshot.config, ["--data_path", str(parts), "--device", "cpu"])
    assert (cfg.dataset, cfg.classes) == ("folders", ("alpha", "zeta"))
    cfg = parse_args(dinomaly2_2d.config, ["--data_path", str(parts), "--classes", "zeta",
                                           "--device", "cpu"])
    assert cfg.classes == ("zeta",)


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("la,lc,cr,eps", [(1, 2, 1, 1e-8), (0, 3, 0, 0.0), (1, 11, 1, 1e-6)])
def test_switches_reach_the_model(la, lc, cr, eps):
    cfg = small(la=la, lc=lc, cr=cr, attn_eps=eps, dropout=0.25)
    torch.manual_seed(0)
    model = recipe_of(cfg).build_model(cfg, "cpu")
    torch.manual_seed(0)
    direct = models.build_dinomaly2(SMALL, "random", 0.25, recenter=bool(cr),
                                    linear_attention=bool(la), loose_groups=lc, attn_eps=eps)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 direct.state_dict().values()))
    assert model.fuse_layer_encoder == models.loose_group_list(lc) == model.fuse_layer_decoder
    assert model.context_aware_recenter == bool(cr)
    attn = model.decoder[0].attn
    assert isinstance(attn, models.LinearAttention2 if la else models.Attention)
    if la:
        assert attn.eps == eps
    assert [m.p for m in model.bottleneck.modules() if isinstance(m, torch.nn.Dropout)] == [0.25] * 3


# ----------------------------------------------------------------------------- the loss

def groups(seed: int, n: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    en = [torch.randn(3, 8, 4, 4, generator=g) for _ in range(n)]
    de = [torch.randn(3, 8, 4, 4, generator=g).requires_grad_() for _ in range(n)]
    return en, de


def test_plain_loss_is_a_mean_over_groups():
    """`--ll 0`: the preview's `global_cosine`, the mean over the groups of the batch mean of
    1 − cos(flatten(e), flatten(d)); `utils.global_cosine` (Dinomaly's) is their sum."""
    en, de = groups(0, n=3)
    loss = Dinomaly2Loss(hard_mining=False)((en, de), 5)
    oracle = sum((1 - F.cosine_similarity(e.reshape(3, -1), d.reshape(3, -1))).mean()
                 for e, d in zip(en, de)) / 3
    assert torch.equal(loss, oracle)
    assert torch.allclose(utils.global_cosine(en, de), 3 * loss)
    loss.backward()
    assert all(d.grad is not None for d in de) and all(e.grad is None for e in en)


def test_hard_mining_loss_ramp_and_gradient():
    """`--ll 1`: p = min(ll_ratio · it / 1000, ll_ratio); the value is the plain mean, the
    gradient of the easiest p of the points × ll_factor."""
    loss_fn = recipe_of(small(ll_ratio=0.8, ll_factor=0.25)).loss(small(ll_ratio=0.8, ll_factor=0.25))
    assert [loss_fn.share(i) for i in (0, 1, 500, 1000, 5000)] == [0, 0.8 / 1000, 0.4, 0.8, 0.8]
    en, de = groups(1)
    loss = loss_fn((en, de), 500)
    loss.backward()
    en2, de2 = groups(1)
    plain = Dinomaly2Loss(hard_mining=False)((en2, de2), 500)
    assert torch.allclose(loss, plain)
    plain.backward()
    for e, d, d2 in zip(en, de, de2):
        dist = (1 - F.cosine_similarity(e, d.detach())).reshape(-1)
        k = int(dist.numel() * (1 - 0.4))
        easy = (dist < torch.topk(dist, k)[0][-1]).reshape(3, 1, 4, 4)
        assert 0 < easy.sum() < easy.numel()
        torch.testing.assert_close(d.grad, torch.where(easy, d2.grad * 0.25, d2.grad))


# ----------------------------------------------------------------------------- optimization

def test_optimizer_groups_schedule_and_clipping():
    cfg = small(total_iters=300, lr=1e-3, first_layer_lr=3e-4, lr_decay_ratio=0.1)
    model = recipe_of(cfg).build_model(cfg, "cpu")
    opt = recipe_of(cfg).optimization(model, cfg)
    groups = opt.optimizer.param_groups
    assert [g["params"] for g in groups] == [list(model.bottleneck[0].parameters()),
                                             list(model.bottleneck[1].parameters()),
                                             list(model.decoder.parameters())]
    assert all((g["amsgrad"], g["eps"], g["weight_decay"], g["betas"]) == (False, 1e-10, 1e-4, (0.9, 0.999))
               for g in groups)
    assert opt.optimizer.skip_nonfinite
    assert opt.clip_params == [*model.bottleneck.parameters(), *model.decoder.parameters()]
    assert {id(p) for p in opt.clip_params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert opt.max_grad_norm == 0.1
    lrs = []
    for t in range(300):  # the lr each iteration's step uses
        lrs.append([g["lr"] for g in groups])
        opt.optimizer.step()
        opt.scheduler.step()
    for t in (0, 1, 99, 100, 200, 299):
        factor = t / 100 if t < 100 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 100) / 200))
        assert lrs[t] == pytest.approx([3e-4 * factor, 1e-3 * factor, 1e-3 * factor], rel=1e-12)
    assert lrs[0] == [0, 0, 0]


# ----------------------------------------------------------------------------- the paper's rows

def test_paper_rows_and_differences():
    recipe = get_recipe("dinomaly2")
    ref = recipe.reference(Config(dataset="mvtec", classes=tuple(dataset.MVTEC_CLASSES)),
                           dataset.MVTEC_CLASSES)
    assert ref.label == "paper (mean)" and ref.means == (99.9, None, None, None, None, None, None)
    assert ref.differences == [] and "ViT-B" in ref.note
    ref = recipe.reference(small(dataset="visa", classes=("candle",)), dataset.VISA_CLASSES)
    assert ref.means[0] == 99.3
    assert ref.differences == ["encoder: 'dinov2reg_vit_small_14' (paper: 'dinov2reg_vit_base_14')",
                               "encoder_weights: 'random' (paper: 'official')",
                               "classes: 1 (paper: all 12)"]
    assert recipe.reference(Config(dataset="realiad"), ()).means[0] == 92.1
    assert recipe.reference(Config(dataset="mvtec", separate=True), ()) is None
    assert recipe.reference(Config(dataset="mpdd"), ()) is None
    few = get_recipe("dinomaly2_fewshot")
    for name, shot, value in (("mvtec", 4, 98.1), ("mvtec", 16, 99.0), ("visa", 8, 97.4)):
        ref = few.reference(FewShotConfig(dataset=name, shot=shot), ())
        assert ref.means == (value, None, None, None, None, None, None)
        assert ref.label == f"paper, {shot}-shot (mean)" and f"few-shot ({shot} shots)" in ref.note
    assert few.reference(FewShotConfig(dataset="mvtec", shot=5), ()) is None


# ----------------------------------------------------------------------------- bad settings

@pytest.mark.parametrize("argv,words", [
    (["--lc", "5"], "--lc 5: must be one of 0, 1, 2, 3, 4, 11, 12, 14"),
    (["--la", "2"], "--la 2: must be 0 or 1"),
    (["--cr", "-1"], "--cr -1: must be 0 or 1"),
    (["--ll", "3"], "--ll 3: must be 0 or 1"),
    (["--ll_ratio", "1"], "--ll_ratio 1.0: must be in [0, 1)"),
    (["--dropout", "1.5"], "--dropout 1.5: must be in [0, 1)"),
    (["--shot", "0"], "--shot 0: must be at least 1"),
])
def test_a_bad_switch_is_one_line(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as stop:
        main(dinomaly2_fewshot.config, [*TINY, "--data_path", str(tmp_path), "--save_dir",
                                        str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def few(tmp_path_factory) -> Path:
    return synth.make_mvtec(tmp_path_factory.mktemp("few") / "data", classes=("aaa", "bbb"),
                            n_train=3)


@pytest.mark.parametrize("argv,words", [
    (["--shot", "4"], "--shot 4 is more than the 3 training images of class aaa"),
    (["--shot", "1", "--batch_size", "4"],
     "--shot 1 × 2 classes = 2 images: fewer than one batch of --batch_size 4; pass a larger --shot"),
    (["--shot", "2", "--batch_size", "3", "--separate"], "--shot 2: fewer than one batch"),
    (["--dataset", "realiad"], "few-shot training reads the MVTec AD layout"),
])
def test_bad_few_shot_input_is_one_line(few, tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as stop:
        main(dinomaly2_fewshot.config, [*TINY, "--data_path", str(few), "--save_dir",
                                        str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert words in err[0], err
    assert not (tmp_path / "out").exists()
