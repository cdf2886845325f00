"""OK/NG decision thresholds: the F1-max thresholds of an evaluation, pooled ones for
multi-class models, calibration on normal images, and `thresholds.json`.

The decision is always `anomalous = score > threshold`.

- Per class, from the same sort as the reported metrics (`metrics.binary_metrics_and_threshold`,
  in `evaluation.class_metrics`):
  the image threshold over the class's image scores, the pixel threshold over all its map
  pixels. `score > threshold` is exactly the partition whose F1 is the reported I-F1 /
  P-F1 (the threshold sits midway between the lowest score kept and the next one below).
- Pooled (multi-class models, one model for every class: the threshold to use when the
  class of an image is not known): the image threshold exactly as above over every class's
  images; the pixel threshold over every class's pixels from a histogram (holding every
  pixel of a dataset would take gigabytes): the best of the thresholds at the edges of
  2^20 bins of the float32 values (relative spacing 2^-11, ≈ 0.05 %), its F1 exact.
- Calibration (`predict.py --calibrate`): the `quantile` of known-normal images' scores.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from engine.fileio import atomic_write_text
from engine.heatmaps import class_scale
from engine.maps import EvalMaps
from engine.metrics import binary_metrics_and_threshold

THRESHOLDS_NAME = "thresholds.json"  # in the run folder, written by every evaluation
FORMAT = 1  # thresholds.json's layout version
DECISION = "anomalous = score > threshold"
_BIN_SHIFT = 12  # float32 keys >> 12: 2^20 bins, 11 mantissa bits kept
_PIXEL_CHUNK = 1 << 22  # pixels per histogram step (bounds the temporaries to ~50 MB)


@dataclass(frozen=True)
class ObjectThresholds:
    """The F1-max threshold of a class's object scores (None where not defined), and how
    many normal and anomalous objects it was found on."""
    threshold: float | None
    f1: float | None
    n_normal: int
    n_anomalous: int

    def as_json(self) -> dict[str, object]:
        return {"object": self.threshold, "object_f1": self.f1,
                "n_normal_objects": self.n_normal, "n_anomalous_objects": self.n_anomalous}


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of one class (or pooled): None where not defined (a test set without
    normal or without anomalous images / pixels). `scale` is the heatmaps' colour scale
    (min, max over all the maps). A test set of objects adds the objects' threshold
    (`objects`); `extra`: other named thresholds (e.g. a pixel threshold per modality)."""
    image: float | None
    image_f1: float | None
    pixel: float | None
    pixel_f1: float | None
    scale: tuple[float, float]
    n_normal: int
    n_anomalous: int
    objects: ObjectThresholds | None = None
    extra: tuple[tuple[str, float | None], ...] = ()

    def as_json(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("objects", "extra")}
        out["scale"] = list(self.scale)
        if self.objects is not None:
            out.update(self.objects.as_json())
        out.update(self.extra)
        return out


def f1_max_or_none(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float, float, float | None, float | None]:
    """(AUROC, AP, F1-max, threshold, F1) — nan, nan, nan, None, None when `y_true` holds one
    class only (a ranking metric needs both; the reference fails there)."""
    if y_true.all() or not y_true.any():
        return math.nan, math.nan, math.nan, None, None
    auroc, ap, f1, threshold = binary_metrics_and_threshold(y_true, y_score)
    return auroc, ap, f1, threshold, f1


def map_scale(maps: np.ndarray) -> tuple[float, float]:
    """The heatmaps' colour scale of `maps` (any shape): `heatmaps.class_scale`'s min / max,
    from two reductions (no float64 copy of a whole test set's maps). The maps are finite:
    the pixel metrics have refused NaN and infinity already."""
    return class_scale(np.array([np.min(maps), np.max(maps)], dtype=np.float64))


# ----------------------------------------------------------------------------- pooled

def _keys(values: np.ndarray) -> np.ndarray:
    """float32 → uint32 keys in the same order (negatives reversed below the positives)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.where(bits & 0x80000000, ~bits, bits | 0x80000000)


def _key_value(key: int) -> float:
    """The float32 value of a key (inverse of `_keys`)."""
    bits = key & 0x7FFFFFFF if key & 0x80000000 else ~key & 0xFFFFFFFF
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


class PooledThresholds:
    """Thresholds over every class of a multi-class model, accumulated class by class
    (`add`), in bounded memory: the image scores, a histogram of the pixels and, for test
    sets of objects, the object scores."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.object_scores: list[np.ndarray] = []
        self.object_labels: list[np.ndarray] = []
        self.pixel_counts = np.zeros((2, 1 << (32 - _BIN_SHIFT)), dtype=np.int64)  # normal, anomalous
        self.low, self.high = math.inf, -math.inf

    def add(self, result: EvalMaps, images: bool = True, pixels: bool = True) -> None:
        """A class's maps; `images` / `pixels` False: its image scores / pixels do not
        count (a method that decides per object, or per modality)."""
        if images:
            self.scores.append(result.scores.astype(np.float32))
            self.labels.append(result.labels.astype(bool))
        if result.object_scores is not None:
            self.object_scores.append(result.object_scores.astype(np.float32))
            self.object_labels.append(result.object_labels.astype(bool))
        maps, masks = result.maps.reshape(-1), result.masks.reshape(-1)
        for start in range(0, maps.size if pixels else 0, _PIXEL_CHUNK):
            bins = _keys(maps[start:start + _PIXEL_CHUNK]) >> _BIN_SHIFT
            anomalous = masks[start:start + _PIXEL_CHUNK]
            for row, part in enumerate((bins[~anomalous], bins[anomalous])):
                self.pixel_counts[row] += np.bincount(part, minlength=self.pixel_counts.shape[1])
        low, high = map_scale(result.maps)
        self.low, self.high = min(self.low, low), max(self.high, high)

    def merge(self, other: PooledThresholds) -> None:
        """Take over the classes `other` has accumulated."""
        self.scores += other.scores
        self.labels += other.labels
        self.object_scores += other.object_scores
        self.object_labels += other.object_labels
        self.pixel_counts += other.pixel_counts
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def _pixel_threshold(self) -> tuple[float | None, float | None]:
        """The best bin edge `b` (pixels in bins ≥ b anomalous) and its exact F1, as the
        threshold just below the bin's lowest value."""
        normal, anomalous = self.pixel_counts
        n_pos = int(anomalous.sum())
        if n_pos == 0 or int(normal.sum()) == 0:
            return None, None
        tp = anomalous[::-1].cumsum()[::-1]  # pixels in bins >= b
        fp = normal[::-1].cumsum()[::-1]
        candidates = np.flatnonzero(anomalous)  # where the recall changes (as for exact F1)
        precision = tp[candidates] / (tp[candidates] + fp[candidates])
        recall = tp[candidates] / n_pos
        f1 = 2 * precision * recall / (precision + recall + 1e-7)
        best = int(f1.argmax())
        edge = int(candidates[best]) << _BIN_SHIFT  # the lowest key of the bin
        return _key_value(max(edge - 1, 0)), float(f1[best])

    def result(self) -> Thresholds:
        scores = np.concatenate(self.scores) if self.scores else np.empty(0, np.float32)
        labels = np.concatenate(self.labels) if self.labels else np.empty(0, bool)
        _, _, _, image, image_f1 = f1_max_or_none(labels, scores)
        pixel, pixel_f1 = self._pixel_threshold()
        n_anomalous = int(labels.sum())
        objects = None
        if self.object_scores:
            objects = object_thresholds(np.concatenate(self.object_labels),
                                        np.concatenate(self.object_scores))[1]
        return Thresholds(image, image_f1, pixel, pixel_f1, (self.low, self.high),
                          len(labels) - n_anomalous, n_anomalous, objects)


def object_thresholds(labels: np.ndarray, scores: np.ndarray
                      ) -> tuple[tuple[float, float, float], ObjectThresholds]:
    """(O-AUROC, O-AP, O-F1) and the F1-max threshold of objects' `scores` against their
    `labels` (nan and None where one class only)."""
    auroc, ap, f1, threshold, threshold_f1 = f1_max_or_none(labels, scores)
    n_anomalous = int(labels.sum())
    return (auroc, ap, f1), ObjectThresholds(threshold, threshold_f1, len(labels) - n_anomalous,
                                             n_anomalous)


# ----------------------------------------------------------------------------- calibration

def calibrated_threshold(scores: np.ndarray, quantile: float) -> float:
    """The `quantile` (in (0, 1]) of normal images' scores (numpy's linear interpolation):
    about `1 - quantile` of such images come out anomalous (`score > threshold`)."""
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile {quantile} is not in (0, 1]")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), quantile))


# ----------------------------------------------------------------------------- thresholds.json

class ThresholdsFile:
    """`thresholds.json`, held in memory and written whole (atomically) at every update: the
    run's settings, every class's entry (`Thresholds.as_json()` plus the iteration and the
    checkpoint it belongs to; a class-separated run adds one class at a time) and, for a
    multi-class model, the pooled entry (an update without one keeps the last)."""

    def __init__(self, path: Path, settings: dict[str, object]) -> None:
        self.path, self.settings = path, settings
        self.classes: dict[str, dict[str, object]] = {}
        self.pooled: dict[str, object] | None = None

    def take_over(self) -> None:
        """`--resume`: the entries the file holds (none when it is missing or unreadable)."""
        try:
            data = read_thresholds(self.path)
        except (OSError, ValueError):
            return
        self.classes, self.pooled = dict(data["classes"]), data.get("pooled")

    @property
    def data(self) -> dict[str, object]:
        return {"format": FORMAT, "decision": DECISION, **self.settings, "classes": self.classes,
                **({"pooled": self.pooled} if self.pooled is not None else {})}

    def update(self, entries: dict[str, dict[str, object]],
               pooled: dict[str, object] | None = None) -> None:
        self.classes.update(entries)
        self.pooled = self.pooled if pooled is None else pooled
        atomic_write_text(self.path, json.dumps(self.data, indent=2, allow_nan=False) + "\n")


def read_thresholds(path: Path) -> dict[str, object]:
    """thresholds.json as written by `update_thresholds_file`; ValueError if it is not one."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("classes"), dict):
        raise ValueError(f"{path} is not a thresholds.json of this version")
    return data
