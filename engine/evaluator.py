"""The run's evaluation: every class's test set through the model, its seven metrics
(spec §5), its thresholds and report material (`report_material.Evaluation`, issue 12) and,
at the final evaluation with `--save_maps`, its heatmaps."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from engine import eval_shards, heatmaps
from engine.config import Config
from engine.report_material import Evaluation


def evaluate(model: nn.Module, test_sets: dict[str, Dataset], cfg: Config,
             device: torch.device, maps_dir: Path | None = None) -> Evaluation:
    """The seven metrics per class (spec §5), one fresh DataLoader per class as the
    reference does (each iterator draws one number from the CPU generator). Under torchrun
    every rank calls it and computes the maps of its share of each test set; rank 0 gathers
    them and computes the metrics (the other ranks return no class).
    `maps_dir`: also draw every test image's heatmap and the class's score histogram into
    `maps_dir/maps/<class>/` (heatmaps.py), from the same maps the metrics use.
    The result is a dict of the metrics that also carries each class's thresholds and
    report material (written by `results.report` once the model is saved)."""
    results = Evaluation(cfg)
    for name, test_set in test_sets.items():
        # collect_maps then metrics_of is evaluation_batch, split to keep the maps for drawing;
        # under torchrun each rank computes its share's maps and rank 0 alone gets them all
        maps = eval_shards.class_maps(model, test_set, cfg, device)
        if maps is None:  # ranks other than 0: their part is done
            continue
        # = evaluation.metrics_of(maps), from the same sorts as the thresholds
        results.add_class(name, maps, maps_dir)
        if maps_dir is not None:
            heatmaps.save_class_heatmaps(maps_dir, name, maps.paths, maps.maps, maps.masks,
                                         maps.scores, maps.labels, cfg.image_size, cfg.crop_size)
    return results
