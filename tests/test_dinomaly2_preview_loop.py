"""The trainer's Dinomaly2 runs against the preview code's loops written out (its
dinomaly_2D.py and dinomaly_fewshot.py, abridged only in the printing), started from the
preview's own construction: after 4 iterations over 2 epochs, with dropout on, an
evaluation after the 2nd and the 4th, and (few-shot) the preview's draw of the images and
its augmentation in 4 fresh loader processes per epoch, the weights are equal to the bit:
the same random draws in the same order (construction, few-shot draw, loader iterators,
augmentation, dropout, evaluation)."""
from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader

import dataset
import dinomaly2_2d
import dinomaly2_fewshot
import models
import synth
import utils
from conftest import TINY_V2
from engine.cli import main
from test_dinomaly2_build import preview_dinomaly2
from oracles import assert_trained_like, reference_training_loop

ENCODER = "dinov2reg_vit_small_14"
CLASSES = ["aaa", "bbb"]
TOTAL, BATCH, EVERY = 4, 2, 2


def preview_train_set(data, fewshot: bool):
    """The preview's training set: per class `ImageFolder(<class>/train)` (few-shot: its
    samples replaced by `random.sample(samples, 3)`, the strong transforms)."""
    if not fewshot:
        transform, _ = dataset.get_data_transforms(64, 56)
        return dataset.mvtec_train_set(data, CLASSES, transform)
    drawn = {}
    for name in CLASSES:
        samples = sorted(str(p) for p in (data / name / "train" / "good").iterdir())
        drawn[name] = random.sample(samples, 3)
    return dataset.mvtec_train_set(data, CLASSES, dataset.get_strong_transforms(64, 56),
                                   samples=drawn)


def preview_loop(data, fewshot: bool) -> dict[str, torch.Tensor]:
    utils.setup_seed(1)
    train_data = preview_train_set(data, fewshot)
    data_transform, gt_transform = dataset.get_data_transforms(64, 56)
    test_data_list = [dataset.MVTecDataset(data / c, data_transform, gt_transform, phase="test")
                      for c in CLASSES]
    train_dataloader = DataLoader(train_data, batch_size=BATCH, shuffle=True,
                                  num_workers=4 if fewshot else 0, drop_last=True)
    # the preview's construction (discarded DINOv1 ViT, DINOv2, bottleneck, decoder,
    # init_weights), written with torch.nn layers: its initial weights and generator state
    ref_init = preview_dinomaly2(ENCODER)
    rng_after_init = torch.get_rng_state()
    model = models.build_dinomaly2(ENCODER, "random")  # the structure only
    model.load_state_dict(ref_init.state_dict())
    torch.set_rng_state(rng_after_init)
    optimizer = utils.StableAdamW([{"params": model.bottleneck[0].parameters(), "lr": 2e-4},
                                   {"params": model.bottleneck[1].parameters()},
                                   {"params": model.decoder.parameters()}],
                                  lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4, amsgrad=False,
                                  eps=1e-10, skip_nonfinite=True)
    lr_scheduler = utils.WarmupCosineScheduler(optimizer, 100, TOTAL, 1.0)
    return reference_training_loop(model, optimizer, lr_scheduler, train_dataloader,
                                   test_data_list, TOTAL, EVERY, BATCH)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.slow
@pytest.mark.parametrize("fewshot", [False, True])
def test_training_equals_the_preview_loop(tmp_path, fewshot):
    # 4 training images per class (few-shot: 3 drawn): 2 epochs of 4 or 3 batches
    data = synth.make_mvtec(tmp_path / "data", classes=tuple(CLASSES), n_train=4)
    script = dinomaly2_fewshot if fewshot else dinomaly2_2d
    extra = ["--shot", "3"] if fewshot else []
    main(script.config, [*TINY_V2, "--data_path", str(data), "--total_iters", str(TOTAL),
                         "--eval_every", str(EVERY), "--save_dir", str(tmp_path),
                         "--save_name", "ours", *extra])
    assert_trained_like(tmp_path / "ours" / "model.pth", preview_loop(data, fewshot), ENCODER)
