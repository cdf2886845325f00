"""Dinomaly2, few-shot (the preview code's `dinomaly_fewshot.py`): Dinomaly2's recipe trained
on `shot` normal images per class, drawn at random, with strong augmentation.

What differs from `recipes.dinomaly2`, as the preview code does it:
- the training set: per class, `shot` images drawn from its sorted training images with
  Python's `random.sample`, `random` seeded with the run's seed first, one draw per class in
  class order (`dataset.fewshot_samples`; the draw happens where the run seeds its
  generators, before anything else draws from `random`);
- their transform: `dataset.get_strong_transforms(image_size, crop_size)` (resize, a random
  square-ish crop, a random multiple of 90°, random flips), its random draws those of the
  preview's four loader processes (`dataset.WorkerStreams`), however many load here;
- evaluations every 2 000 iterations (the script's setting); the test sets are unchanged;
- the paper's few-shot numbers (image AUROC for 4, 8, 16 shots on MVTec AD and VisA).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from PIL import Image
from torch.utils.data import ConcatDataset

import dataset
from engine.config import setting
from recipes.base import Reference
from recipes.dinomaly2 import PAPER_NOTE, Config as Dinomaly2Config, Dinomaly2, paper_row
from recipes.registry import register_recipe


@dataclasses.dataclass(frozen=True)
class Config(Dinomaly2Config):
    """Dinomaly2's settings and the number of shots. Defaults: the preview's few-shot
    script, the encoder the paper's (ViT-B; the preview's default: ViT-S)."""

    METHOD = "dinomaly2_fewshot"

    shot: int = setting(4, "normal training images per class, drawn at random (the preview's "
                           "--shot; the paper reports 4, 8 and 16)",
                        check=(lambda v: v >= 1, "at least 1"))
    eval_every: int = setting(2_000, "evaluate and save every N iterations, and after the last")
    save_name: str = setting("dinomaly2_fewshot", "results folder name (with --eval_only: "
                                                  "<name>_eval unless given)")


# The paper's few-shot image AUROC (percent), multi-class, by shots; other metrics unknown
PAPER_FEWSHOT_I_AUROC = {"mvtec": {4: 98.1, 8: 98.7, 16: 99.0},
                         "visa": {4: 96.7, 8: 97.4, 16: 98.0}}


def fewshot_train_set(cfg: Config, classes: Sequence[str],
                      cache_images: object = False) -> ConcatDataset:
    """`cfg.shot` images per class (`dataset.fewshot_samples`, the seed `cfg.seed`) with the
    strong transforms, as `WorkerStreams` (one part per class). `cache_images`: the drawn
    images decoded and resized once; the random steps after the resize still run per
    sample, so the tensors are exactly the uncached ones."""
    spec = dataset.dataset_spec(cfg.dataset)
    if spec.layout is not dataset.MVTEC_LAYOUT:
        raise dataset.DatasetError(f"few-shot training reads the MVTec AD layout; --dataset "
                                   f"{cfg.dataset} is {spec.layout.folders}")
    drawn = dataset.fewshot_samples(cfg.data_path, list(classes), cfg.shot, seed=cfg.seed)
    if not cfg.eval_only:
        check_batches(cfg, classes)
    transform = dataset.get_strong_transforms(cfg.image_size, cfg.crop_size)
    parts = dataset.mvtec_train_set(cfg.data_path, list(classes), transform, cache_images,
                                    samples=drawn)
    blank = Image.new("RGB", (cfg.image_size, cfg.image_size))
    return dataset.WorkerStreams(parts.datasets, cfg.batch_size, lambda: transform(blank))


def check_batches(cfg: Config, classes: Sequence[str]) -> None:
    """A training set of fewer images than one batch trains nothing (the preview stops
    with ZeroDivisionError): one line instead."""
    per_model = cfg.shot * (1 if cfg.separate else len(classes))
    if per_model < cfg.batch_size:
        what = (f"--shot {cfg.shot}" if cfg.separate else
                f"--shot {cfg.shot} × {len(classes)} classes = {per_model} images")
        raise dataset.DatasetError(f"{what}: fewer than one batch of --batch_size "
                                   f"{cfg.batch_size}; pass a larger --shot or a smaller "
                                   "--batch_size")


@register_recipe
class Dinomaly2FewShot(Dinomaly2):
    name = "dinomaly2_fewshot"
    title = "Dinomaly2, few-shot"
    Config = Config

    def train_set(self, cfg: Config, classes: Sequence[str],
                  cache_images: object = False) -> ConcatDataset:
        return fewshot_train_set(cfg, classes, cache_images)

    def paper_means(self, cfg: Config) -> tuple[float | None, ...] | None:
        if cfg.separate:
            return None
        return paper_row(PAPER_FEWSHOT_I_AUROC.get(cfg.dataset, {}).get(cfg.shot))

    def reference(self, cfg: Config, all_classes: Sequence[str]) -> Reference | None:
        ref = super().reference(cfg, all_classes)
        if ref is None:
            return None
        note = PAPER_NOTE.format(extra="").replace("multi-class, ViT-B",
                                                   f"few-shot ({cfg.shot} shots), multi-class, ViT-B")
        return ref._replace(label=f"paper, {cfg.shot}-shot (mean)", note=note)
