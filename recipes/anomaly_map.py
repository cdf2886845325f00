"""Dinomaly's anomaly map and image score: from the encoder and decoder feature groups to a
blurred map per image and one score per image (the reference's evaluation).

    pipeline = AnomalyPipeline(model, resolution=256, max_ratio=0.01).eval()
    maps, scores = pipeline(images)          # B×1×256×256, B

Per feature group `1 − cos(en, de)` along channels, bilinear upsampling to the input size
(align_corners=True), mean over the groups; bilinear resize to the resolution
(align_corners=False); Gaussian blur (kernel 5, σ 4, zero padding); score = the mean of the
map's top `int(R·R·max_ratio)` values (the maximum when 0). The same module runs in the
evaluation, in predict.py and inside the exported model.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
    `(anomaly map B×1×R×R, image score B)` (the module docstring's steps; no resize when
    `resolution` is None)."""

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


class TopRatioScore:
    """A recipe's anomaly map and score as Dinomaly's (this module's pipeline): mixed into a
    recipe whose Config has `max_ratio` (and the run's `eval_resolution`)."""

    def pipeline(self, model: nn.Module, cfg) -> AnomalyPipeline:
        return AnomalyPipeline(model, cfg.eval_resolution, cfg.max_ratio)

    def score_settings(self, cfg) -> dict[str, object]:
        return {"max_ratio": cfg.max_ratio}

    def score_note(self, cfg) -> str:
        return (f"Image score: mean of the top {100 * cfg.max_ratio:g} % of the "
                f"{cfg.eval_resolution}x{cfg.eval_resolution} anomaly map")
