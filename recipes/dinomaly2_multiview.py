"""Dinomaly2 on objects photographed from several views (the preview code's
`dinomaly_multiview.py`): Real-IAD, Real-IAD Variety and MANTA-Tiny, where a part is OK or
NG, not an image.

What differs from `recipes.dinomaly2`, as the preview's multi-view script does it:
- data: the training set is single views (`RealIADDatasetv2(five_view_train=False)`, or one
  of a MANTA-Tiny image's five views drawn with Python's `random`, as the preview's four
  loader processes draw it: `dataset.WorkerStreams`); the test items are objects of five
  views; the dataset follows the path (`MANTA` → MANTA-Tiny, `Variety` → Real-IAD Variety,
  else Real-IAD: `dataset.fullspectrum.multiview_dataset_for_path`);
- optimizer: two parameter groups, the bottleneck and the decoder, both at 2e-3;
- evaluation: the seven metrics over every view, then the object level (O-AUROC/AP/F1)
  from the mean of the top 1 % of all an object's pixels (or, `--use_max_view`, its highest
  view score); the pixel metrics are ADEval's histogram ones by default, as the preview's
  (`--pixel_metrics exact`: every pixel ranked); 4 objects per evaluation batch;
- the published Real-IAD Variety row (all ten values) shown beside a run's.

Left as the preview has it: 280 px images, 100 000 iterations, evaluations every 50 000.
Changed: the preview lists its classes from `realiadvariety_jsons/` whatever the path, so
plain Real-IAD stops there; here each dataset lists its own split folder.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from torch.utils.data import ConcatDataset

import dataset
from dataset.fullspectrum import multiview_dataset_for_path
from dataset.manta import N_VIEWS
from engine.config import setting
from engine.eval_spec import MULTIVIEW_METRICS, PIXEL_METRICS, EvalSpec
from engine.objects import ObjectScore, ObjectSpec
from recipes.base import Reference, setting_differences
from recipes.dinomaly2 import PAPER_SETTING, Config as Dinomaly2Config, Dinomaly2
from recipes.dinomaly2 import lr_groups_setting
from recipes.registry import register_recipe


@dataclasses.dataclass(frozen=True)
class Config(Dinomaly2Config):
    """Dinomaly2's settings and the object level's. Defaults: the preview's multi-view script."""

    METHOD = "dinomaly2_multiview"

    image_size: int = setting(280, "images are resized to this side (the preview's multi-view "
                                   "script: 280)")
    crop_size: int = setting(280, "then centre-cropped to this side (the preview: 280, no crop)")
    total_iters: int = setting(100_000, "training iterations (the preview's multi-view script: "
                                        "100 000)")
    eval_every: int = setting(50_000, "evaluate and save every N iterations, and after the last")
    eval_batch_size: int = setting(4, "evaluation batch size, in objects (the preview: 4)",
                                   check=(lambda v: v >= 0, "0 or more"))
    lr_groups: int = lr_groups_setting(2)  # the preview's script: bottleneck, decoder
    save_name: str = setting("dinomaly2_multiview", "results folder name (with --eval_only: "
                                                    "<name>_eval unless given)")
    # the object level
    max_ratio_object: float = setting(0.01, "object score: the mean of this share of the highest "
                                            "pixels of all its views' maps (0: the maximum)",
                                      check=(lambda v: 0 <= v <= 1, "in [0, 1]"))
    use_max_view: bool = setting(False, "object score: the highest view score instead")
    pixel_metrics: str = setting("histogram", "the pixel metrics: histogram (ADEval's, the "
                                              "preview's), exact (every pixel ranked) or none (0)",
                                 choices=tuple(PIXEL_METRICS))


# Real-IAD Variety, multi-class (percent): the preview's README table of large datasets (it
# cites Dinomaly2 as a reference, so it comes from another document than the paper), in
# MULTIVIEW_METRICS order: I-AUROC/AP/F1, P-AUROC/AP/F1, AUPRO, O-AUROC/AP/F1
VARIETY_ROW = (89.0, 97.9, 95.1, 94.0, 50.5, 51.5, 81.8, 94.2, 99.1, 97.5)
PUBLISHED = {"realiad_variety": VARIETY_ROW, "realiad_variety_1024": VARIETY_ROW,
             "realiad_multiview": (92.1, None, None, None, None, None, None, None, None, None)}
VARIETY_NOTE = ("The published row: Dinomaly2, multi-class, on Real-IAD Variety, from the "
                "preview's README table of large datasets (whether its pixel metrics are "
                "ADEval's histogram ones, as the preview computes them, is not stated).")
NOTES = {
    "realiad_variety": VARIETY_NOTE, "realiad_variety_1024": VARIETY_NOTE,
    "realiad_multiview": ("The paper's row: Dinomaly2, multi-class, ViT-B; only its image AUROC is "
                          "published in the material available; whether per image or per object "
                          "is not known."),
}


def manta_train_set(cfg: Config, classes: Sequence[str], cache_images: object) -> ConcatDataset:
    """MANTA-Tiny's single views, each drawn as the preview's loader processes draw it."""
    transform, _ = dataset.get_data_transforms(cfg.image_size, cfg.crop_size)
    parts = dataset.dataset_spec("manta").layout.train_set(cfg.data_path, classes, transform,
                                                           cache_images)
    streams = dataset.WorkerStreams(parts.datasets, cfg.batch_size,
                                    lambda: random.randint(0, N_VIEWS - 1))
    streams.notes = parts.notes
    return streams


@register_recipe
class Dinomaly2MultiView(Dinomaly2):
    name = "dinomaly2_multiview"
    title = "Dinomaly2, multi-view"
    Config = Config
    metrics = MULTIVIEW_METRICS

    def dataset_for_path(self, data_path: str) -> str:
        return multiview_dataset_for_path(data_path)

    def train_set(self, cfg: Config, classes: Sequence[str],
                  cache_images: object = False) -> ConcatDataset:
        if cfg.dataset == "manta":
            return manta_train_set(cfg, classes, cache_images)
        return super().train_set(cfg, classes, cache_images)

    def object_score(self, cfg: Config) -> ObjectScore:
        return ObjectScore("max_view") if cfg.use_max_view else ObjectScore("top_ratio", cfg.max_ratio_object)

    def eval_spec(self, cfg: Config) -> EvalSpec:
        return EvalSpec(MULTIVIEW_METRICS, ObjectSpec(self.object_score(cfg)), cfg.pixel_metrics,
                        aupro_thresholds="numpy2")

    def reference(self, cfg: Config, all_classes: Sequence[str]) -> Reference | None:
        means = None if cfg.separate else PUBLISHED.get(cfg.dataset)
        if means is None:
            return None
        return Reference("published (mean)", means, NOTES[cfg.dataset],
                         setting_differences(dataclasses.asdict(cfg), all_classes, PAPER_SETTING))
