"""The trainer's full-spectrum Dinomaly2 runs (dinomaly2_multiview.py, dinomaly2_mvtec3d.py,
dinomaly2_mulsen.py) against the preview code's loops written out (its dinomaly_multiview.py,
dinomaly_mvtec3d.py and dinomaly_mulsen.py, abridged only in the printing), started from the
preview's own construction: after 4 iterations over 2 epochs, with dropout on, an evaluation
(the preview's evaluation function of each script) after the 2nd and the 4th, the weights are
equal to the bit: the same data, the same random draws in the same order."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import dataset
import dinomaly2_mulsen
import dinomaly2_multiview
import dinomaly2_mvtec3d
import models
import utils
from conftest import TINY_V2
from engine.cli import main
from oracles import assert_trained_like, reference_training_loop
from test_dinomaly2_build import preview_dinomaly2
from test_mulsen import make_mulsen
from test_mvtec3d import make_mvtec3d
from test_realiad_v2 import make_multiview

ENCODER = "dinov2reg_vit_small_14"
TOTAL, BATCH, EVERY = 4, 2, 2
SPLIT, VERSION = "realiad_jsons/realiad_jsons", "realiad_1024"


def two_view_records(n: int, bad_every: int = 2):
    return [(f"{'NG/AK' if k % bad_every else 'OK'}/S{k:04d}/p_C{v}.png",
             f"NG/AK/S{k:04d}/p_C{v}_mask.png" if k % bad_every else None,
             "AK" if k % bad_every else "OK") for k in range(n) for v in (1, 2)]


def multiview_data(root):
    train = [(f"OK/T{k:04d}/p_C{v}.png", None, "OK") for k in range(3) for v in (1, 2)]
    for name in ("aaa", "bbb"):
        make_multiview(root, name, SPLIT, VERSION, False, test=two_view_records(3), train=train)
    return root, ["aaa", "bbb"]


def mvtec3d_data(root):
    for name in ("bagel", "peach"):
        make_mvtec3d(root, name)
    return root, ["bagel", "peach"]


def mulsen_data(root):
    for name in ("capsule", "cotton"):
        make_mulsen(root, name)
    return root, ["capsule", "cotton"]


def preview_parts(script: str, data, classes):
    """The preview script's training set, test sets and evaluation of one test loader."""
    tf, gt = dataset.get_data_transforms(64, 56)
    if script == "multiview":
        train = torch.utils.data.ConcatDataset(
            [dataset.RealIADDatasetv2(data, c, tf, gt, "train", split=SPLIT, version=VERSION) for c in classes])
        tests = [dataset.RealIADDatasetv2(data, c, tf, gt, "test", split=SPLIT, version=VERSION) for c in classes]
        return train, tests, lambda model, loader: utils.evaluation_batch_multiview(
            model, loader, "cpu", max_ratio_image=0.01, max_ratio_object=0.01, resize_mask=256, adeval=True)
    if script == "mvtec3d":
        train = torch.utils.data.ConcatDataset([dataset.MVTec3DDataset(data / c, tf, gt, "train") for c in classes])
        tests = [dataset.MVTec3DDataset(data / c, tf, gt, "test") for c in classes]
        return train, tests, None  # evaluation_batch
    train = torch.utils.data.ConcatDataset(
        [dataset.MulSenTrainDataset(c, tf, gt, dataset_path=data) for c in classes])
    tests = [dataset.MulSenTestDataset(c, tf, gt, dataset_path=data) for c in classes]
    return train, tests, lambda model, loader: utils.evaluation_batch_rgbinfra(
        model, loader, "cpu", max_ratio=0.01, resize_mask=256)


def preview_loop(script: str, data, classes) -> dict[str, torch.Tensor]:
    utils.setup_seed(1)
    train, tests, evaluate = preview_parts(script, data, classes)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True)
    ref_init = preview_dinomaly2(ENCODER, dropout=0.2 if script == "mulsen" else 0.4)
    rng_after_init = torch.get_rng_state()
    if script == "mvtec3d":  # the structure only
        model = models.build_dinomaly2_rgbd(ENCODER, "random")
    else:
        model = models.build_dinomaly2(ENCODER, "random", dropout=0.2 if script == "mulsen" else 0.4)
    model.load_state_dict(ref_init.state_dict())
    torch.set_rng_state(rng_after_init)
    if script == "mulsen":  # three groups, as the 2D script
        groups = [{"params": model.bottleneck[0].parameters(), "lr": 2e-4},
                  {"params": model.bottleneck[1].parameters()}, {"params": model.decoder.parameters()}]
    else:  # the multi-view and 3D scripts: [bottleneck, decoder]
        groups = [{"params": model.bottleneck.parameters()}, {"params": model.decoder.parameters()}]
    optimizer = utils.StableAdamW(groups, lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4,
                                  amsgrad=False, eps=1e-10, skip_nonfinite=True)
    scheduler = utils.WarmupCosineScheduler(optimizer, 100, TOTAL, 1.0)
    model_input = ((lambda batch: torch.cat([batch[0][0], batch[0][1]], dim=0)) if script == "mulsen"
                   else (lambda batch: batch[0]))
    return reference_training_loop(model, optimizer, scheduler, loader, tests, TOTAL, EVERY, BATCH,
                                   model_input=model_input, evaluate=evaluate, evaluate_last=False)


SCRIPTS = {"multiview": (dinomaly2_multiview, multiview_data),
           "mvtec3d": (dinomaly2_mvtec3d, mvtec3d_data),
           "mulsen": (dinomaly2_mulsen, mulsen_data)}


@pytest.mark.slow
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_training_equals_the_preview_loop(tmp_path, script):
    module, make = SCRIPTS[script]
    data, classes = make(tmp_path / "data")
    main(module.config, [*TINY_V2, "--data_path", str(data), "--classes", ",".join(classes),
                         "--total_iters", str(TOTAL), "--eval_every", str(EVERY),
                         "--save_dir", str(tmp_path), "--save_name", "ours"])
    assert_trained_like(tmp_path / "ours" / "model.pth", preview_loop(script, data, classes), ENCODER)
