"""What a method's evaluation computes for each class (`EvalSpec`, from `Recipe.eval_spec`),
and the metric names of its three forms:

- images (the default): `IMAGE_AND_PIXEL_METRICS`, the seven of Dinomaly;
- objects of views (multi-view): the seven over every view, then `OBJECT_METRICS` over the
  objects (`MULTIVIEW_METRICS`);
- objects of modalities (RGB + infrared): the object level first, then the four pixel
  metrics of each modality over its own images (`modality_metric_names`).

The pixel metrics: `exact` (`engine.metrics`), `histogram` (ADEval's 1,000-strip histogram
metrics, `engine.hist_metrics`: what the Dinomaly2 preview's multi-view evaluation reports)
or `none` (all 0, the preview's switch that skips them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.metrics import pixel_metrics_and_threshold
from engine.metrics_torch import host_maps_metrics
from engine.objects import ObjectSpec

IMAGE_AND_PIXEL_METRICS = ("I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "P-AUPRO")
OBJECT_METRICS = ("O-AUROC", "O-AP", "O-F1")
MULTIVIEW_METRICS = IMAGE_AND_PIXEL_METRICS + OBJECT_METRICS
PIXEL_LEVEL = ("AUROC", "AP", "F1", "AUPRO")
PIXEL_METRICS = {
    "exact": "Pixel metrics: exact (every pixel ranked; AUPRO over 200 thresholds)",
    "histogram": ("Pixel metrics: ADEval's histogram metrics (1,000 strips between the class's "
                  "lowest and highest map value; AUPR and AUPRO as trapezoid areas)"),
    "none": "Pixel metrics: not computed (0)",
}


def modality_metric_names(modalities: tuple[str, ...], object_prefix: str = "I") -> tuple[str, ...]:
    """`(I-AUROC, I-AP, I-F1, <m>-AUROC, <m>-AP, <m>-F1, <m>-AUPRO for each modality m)`:
    the object level (named `object_prefix`) then each modality's pixel metrics."""
    return (tuple(f"{object_prefix}-{m}" for m in ("AUROC", "AP", "F1"))
            + tuple(f"{name}-{m}" for name in modalities for m in PIXEL_LEVEL))


@dataclass(frozen=True)
class EvalSpec:
    """A method's evaluation of a class: the names of the values it reports (`metrics`, in
    the order of its form), whether its test items are objects (`objects`; with
    `modalities`, the k-th image of an object is modality k), and its pixel metrics."""
    metrics: tuple[str, ...] = IMAGE_AND_PIXEL_METRICS
    objects: ObjectSpec | None = None
    pixel_metrics: str = "exact"
    modalities: tuple[str, ...] = ()
    # exact AUPRO's thresholds: "numpy1", Dinomaly's (the numpy it ran on), or "numpy2", the
    # Dinomaly2 preview's (`engine.metrics.rule_thresholds`); the last digits differ
    aupro_thresholds: str = "numpy1"
    # where the exact pixel metrics are computed: None, with numpy on the host; a torch
    # device (the run's GPU, --metrics_on_device): with `engine.metrics_torch` there
    device: str | None = None

    def __post_init__(self) -> None:
        if self.aupro_thresholds not in ("numpy1", "numpy2"):
            raise ValueError(f"AUPRO thresholds {self.aupro_thresholds!r}: numpy1 or numpy2")
        if self.pixel_metrics not in PIXEL_METRICS:
            raise ValueError(f"pixel metrics {self.pixel_metrics!r}: one of {', '.join(PIXEL_METRICS)}")
        if self.modalities and self.objects is None:
            raise ValueError("modalities are the images of objects: give `objects` too")
        if len(self.metrics) != self.n_values:
            raise ValueError(f"{len(self.metrics)} metric names for {self.n_values} values")

    @property
    def n_values(self) -> int:
        if self.modalities:
            return 3 + len(PIXEL_LEVEL) * len(self.modalities)
        return len(IMAGE_AND_PIXEL_METRICS) + (0 if self.objects is None else len(OBJECT_METRICS))

    @property
    def image_level(self) -> bool:
        """Whether each image is decided on (not so for modalities: the object is)."""
        return not self.modalities

    @property
    def default(self) -> bool:
        """Dinomaly's evaluation: images, exact pixel metrics."""
        return self.objects is None and self.pixel_metrics == "exact"

    def exact_pixel_metrics(self, masks: np.ndarray, maps: np.ndarray
                            ) -> tuple[float, float, float, float, float | None]:
        """(P-AUROC, P-AP, P-F1, AUPRO, the pixel F1-max threshold) of host arrays, exact,
        computed on the host or on `device`, AUPRO's thresholds by `aupro_thresholds`."""
        if self.device is None:
            return pixel_metrics_and_threshold(masks, maps, threshold_rule=self.aupro_thresholds)
        return host_maps_metrics(masks, maps, self.device, threshold_rule=self.aupro_thresholds)

    def note(self) -> str:
        """What the reports say of this evaluation ('' for the default)."""
        if self.default:
            return ""
        parts = [PIXEL_METRICS[self.pixel_metrics]]
        if self.objects is not None:
            parts.append(self.objects.score.note())
        return ". ".join(parts)
