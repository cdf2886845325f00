"""The run's evaluation: every class's test set through the model, its seven metrics
(spec §5) and, at the final evaluation with `--save_maps`, its heatmaps."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine import evaluation, heatmaps
from engine.config import Config


def evaluate(model: nn.Module, test_sets: dict[str, Dataset], cfg: Config,
             device: torch.device, maps_dir: Path | None = None) -> dict[str, list[float]]:
    """The seven metrics per class (spec §5), one fresh DataLoader per class as the
    reference does (each iterator draws one number from the CPU generator).
    `maps_dir`: also draw every test image's heatmap and the class's score histogram into
    `maps_dir/maps/<class>/` (heatmaps.py), from the same maps the metrics use."""
    results = {}
    for name, test_set in test_sets.items():
        loader = DataLoader(test_set, batch_size=cfg.batch_size, shuffle=False,
                            num_workers=cfg.num_workers)
        # collect_maps then metrics_of is evaluation_batch, split to keep the maps for drawing
        maps = evaluation.collect_maps(model, loader, device, max_ratio=cfg.max_ratio,
                                       resize_mask=cfg.eval_resolution,
                                       gt_threshold=cfg.gt_threshold)
        results[name] = [float(v) for v in evaluation.metrics_of(maps)]
        if maps_dir is not None:
            heatmaps.save_class_heatmaps(maps_dir, name, maps.paths, maps.maps, maps.masks,
                                         maps.scores, maps.labels, cfg.image_size, cfg.crop_size)
    return results
