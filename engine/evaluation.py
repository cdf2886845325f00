"""The reference's evaluation (spec §5): anomaly maps from encoder/decoder features,
the Gaussian blur, and the seven metrics of a test set.

    results = evaluation_batch(model, dataloader, device, max_ratio=0.01, resize_mask=256)
    # [auroc_sp, ap_sp, f1_sp, auroc_px, ap_px, f1_px, aupro_px]

`collect_maps` is the first half (maps, masks, image scores of a whole test set, in
preallocated arrays, each batch through `AnomalyPipeline`, which predict and the ONNX
export run too) for tools that need the maps themselves, e.g. heatmaps; `metrics_of` is
the second half.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from engine.metrics import binary_metrics, compute_pro


def get_gaussian_kernel(kernel_size: int = 3, sigma: float = 2, channels: int = 1) -> nn.Conv2d:
    """Depthwise Gaussian blur as the reference builds it: a normalised 2-D Gaussian in
    a `Conv2d(groups=channels, bias=False, padding=kernel_size // 2)`, zero padding
    (so the border of a constant map darkens), weight `channels x 1 x k x k`, frozen.

    The Conv2d is constructed (and randomly initialised, then overwritten) exactly like
    the reference: this draws from the CPU generator, which keeps a training run that
    evaluates on the way RNG-identical to the reference's.
    """
    x_coord = torch.arange(kernel_size)
    x_grid = x_coord.repeat(kernel_size).view(kernel_size, kernel_size)
    y_grid = x_grid.t()
    xy_grid = torch.stack([x_grid, y_grid], dim=-1).float()  # k, k, 2

    mean = (kernel_size - 1) / 2.
    variance = sigma ** 2.
    # product of two 1-D Gaussians, in the reference's order of operations
    gaussian_kernel = (1. / (2. * math.pi * variance)) * torch.exp(
        -torch.sum((xy_grid - mean) ** 2., dim=-1) / (2 * variance))
    gaussian_kernel = gaussian_kernel / torch.sum(gaussian_kernel)

    gaussian_kernel = gaussian_kernel.view(1, 1, kernel_size, kernel_size)
    gaussian_kernel = gaussian_kernel.repeat(channels, 1, 1, 1)  # channels, 1, k, k

    gaussian_filter = nn.Conv2d(in_channels=channels, out_channels=channels, kernel_size=kernel_size,
                                groups=channels, bias=False, padding=kernel_size // 2)
    gaussian_filter.weight.data = gaussian_kernel
    gaussian_filter.weight.requires_grad = False
    return gaussian_filter


def cal_anomaly_maps(fs_list: list[torch.Tensor], ft_list: list[torch.Tensor],
                     out_size: int | tuple[int, int] = 224) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Anomaly map = mean over feature groups of `1 - cos(fs, ft)` along channels,
    upsampled bilinearly (align_corners=True) to out_size.

    Args:
        fs_list, ft_list: encoder / decoder features, each a list of `B x C x h x w`.
        out_size: side, or (H, W).
    Returns:
        (`B x 1 x H x W` mean map, list of the per-group `B x 1 x H x W` maps).
    """
    if not isinstance(out_size, tuple):
        out_size = (out_size, out_size)
    a_map_list = []
    for fs, ft in zip(fs_list, ft_list):
        a_map = 1 - F.cosine_similarity(fs, ft)  # B, h, w
        a_map = torch.unsqueeze(a_map, dim=1)  # B, 1, h, w
        a_map = F.interpolate(a_map, size=out_size, mode="bilinear", align_corners=True)
        a_map_list.append(a_map)
    anomaly_map = torch.cat(a_map_list, dim=1).mean(dim=1, keepdim=True)
    return anomaly_map, a_map_list


@dataclass
class EvalMaps:
    """Everything evaluation_batch computes its metrics from, for N test images."""
    maps: np.ndarray  # N x H x W float32, blurred anomaly maps
    masks: np.ndarray  # N x H x W bool, ground truth
    scores: np.ndarray  # N float32, image anomaly scores
    labels: np.ndarray  # N bool, image is anomalous
    paths: list[str]  # N image paths


def image_scores(anomaly_map: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """`B x 1 x H x W` -> B: the map's maximum, or the mean of its
    `int(H * W * max_ratio)` largest values (655 at 256 x 256 and 0.01)."""
    flat = anomaly_map.flatten(1)
    if max_ratio == 0:
        return flat.max(dim=1).values
    top = torch.topk(flat, int(flat.shape[1] * max_ratio), dim=1).values  # = sort(descending)[:, :k]
    return top.mean(dim=1)


class AnomalyPipeline(nn.Module):
    """`forward(x)`: normalised images `B×3×H×W` (H = W = the run's crop) →
    `(anomaly map B×1×R×R, image score B)`.

    The evaluation's steps (spec §5): per feature group `1 − cos(en, de)`, bilinear upsampling
    to the input size (align_corners=True), mean over groups; bilinear resize to R
    (align_corners=False; none when `resolution` is None); Gaussian blur (5, σ 4, zero
    padding); score = mean of the top `int(R·R·max_ratio)` values (the max when 0).
    """

    def __init__(self, model: nn.Module, resolution: int | None = 256, max_ratio: float = 0.01) -> None:
        super().__init__()
        self.model = model
        self.resolution = resolution
        self.max_ratio = max_ratio
        # one Conv2d construction: one draw of the CPU generator, as the reference's evaluation
        self.blur = get_gaussian_kernel(kernel_size=5, sigma=4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        en, de = self.model(x)
        anomaly_map, _ = cal_anomaly_maps(en, de, x.shape[-1])  # B, 1, H, W
        if self.resolution is not None:
            anomaly_map = F.interpolate(anomaly_map, size=self.resolution, mode="bilinear",
                                        align_corners=False)  # B, 1, R, R
        anomaly_map = self.blur(anomaly_map)
        return anomaly_map, image_scores(anomaly_map, self.max_ratio)


def collect_maps(model: nn.Module, dataloader: DataLoader, device: torch.device | str,
                 max_ratio: float = 0, resize_mask: int | tuple[int, int] | None = None,
                 gt_threshold: float = 0.0, allow_empty: bool = False) -> EvalMaps:
    """Runs the model over a test set of `(img, gt, label, img_path)` batches and keeps
    the blurred maps, binary masks, image scores, labels and paths (spec §5).

    Per batch: maps from `model(img) -> (en, de)` at the input size, bilinear resize to
    resize_mask (align_corners=False) and nearest resize of gt, Gaussian blur (5, sigma 4);
    mask = `gt > gt_threshold` (0, the reference's `gt.bool()`; 0.5 is the common
    practice), anomalous where any channel of gt is. Leaves the model in eval mode, as
    the reference does. The results go into arrays allocated once for the whole set.
    A loader without batches is an error, or with `allow_empty` (a process's empty share of
    a split evaluation) gives 0 images, after the same random draws.
    """
    model.eval()
    pipeline = AnomalyPipeline(model, resize_mask, max_ratio)
    pipeline.blur.to(device)  # the model stays where it is
    n_total = len(dataloader.dataset)
    maps = masks = scores = labels = None
    paths: list[str] = []
    seen = 0
    with torch.no_grad():
        for img, gt, label, img_path in dataloader:
            img = img.to(device)
            anomaly_map, score = pipeline(img)  # B, 1, H, W and B
            if resize_mask is not None:
                gt = F.interpolate(gt, size=resize_mask, mode="nearest")
            mask = (gt > gt_threshold).any(dim=1)  # B, H, W

            if maps is None:  # sizes are known from the first batch
                height, width = anomaly_map.shape[-2:]
                maps = np.empty((n_total, height, width), dtype=np.float32)
                masks = np.empty((n_total, height, width), dtype=bool)
                scores = np.empty(n_total, dtype=np.float32)
                labels = np.empty(n_total, dtype=bool)
            batch = slice(seen, seen + img.shape[0])
            maps[batch] = anomaly_map[:, 0].cpu().numpy()
            masks[batch] = mask.cpu().numpy()
            scores[batch] = score.cpu().numpy()
            labels[batch] = label.flatten().cpu().numpy() != 0
            paths.extend(img_path)
            seen += img.shape[0]
    if maps is None:
        if not allow_empty:
            raise ValueError("the dataloader yielded no batch")
        return EvalMaps(np.empty((0, 0, 0), np.float32), np.empty((0, 0, 0), bool),
                        np.empty(0, np.float32), np.empty(0, bool), [])
    # a sampler may visit fewer items than the dataset holds: keep what was seen
    return EvalMaps(maps[:seen], masks[:seen], scores[:seen], labels[:seen], paths)


def _binary_or_nan(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float, float]:
    """(AUROC, AP, F1-max), or three nan when `y_true` holds one class only: a ranking
    metric needs both (the reference fails there)."""
    if y_true.all() or not y_true.any():
        return math.nan, math.nan, math.nan
    return binary_metrics(y_true, y_score)


def metrics_of(result: EvalMaps) -> list[float]:
    """`[auroc_sp, ap_sp, f1_sp, auroc_px, ap_px, f1_px, aupro_px]`: image metrics over
    the images, pixel metrics over all pixels, AUPRO over the maps (spec §5).

    A metric that is not defined for the test set is nan, where the reference fails: the
    image metrics without a normal or without an anomalous image, the pixel metrics
    (AUPRO too) without an anomalous or without a normal mask pixel."""
    auroc_sp, ap_sp, f1_sp = _binary_or_nan(result.labels, result.scores)
    auroc_px, ap_px, f1_px = _binary_or_nan(result.masks.ravel(), result.maps.ravel())
    aupro_px = compute_pro(result.masks, result.maps)
    return [auroc_sp, ap_sp, f1_sp, auroc_px, ap_px, f1_px, aupro_px]


def evaluation_batch(model: nn.Module, dataloader: DataLoader, device: torch.device | str,
                     _class_: str | None = None, max_ratio: float = 0,
                     resize_mask: int | tuple[int, int] | None = None, gt_threshold: float = 0.0) -> list[float]:
    """The reference's evaluation of one test set:
    `[auroc_sp, ap_sp, f1_sp, auroc_px, ap_px, f1_px, aupro_px]` as Python floats.
    `_class_` is unused, kept for the reference's signature. See collect_maps for
    max_ratio, resize_mask and gt_threshold (the reference: 0.01, 256, 0)."""
    return metrics_of(collect_maps(model, dataloader, device, max_ratio, resize_mask, gt_threshold))
