"""Results at a glance: the mean over classes, and results.md (issues 6 and 9).

`mean_result` averages each metric over the classes where it is defined (a class with no
anomalous test image has no I-AUROC, one whose masks are all empty no pixel metric: they
are nan) and says in a note which classes it leaves out. `results_markdown` renders one
Markdown table, per class and the mean, in percent; for the three multi-class settings it
adds the paper's mean numbers (spec §6) as a row beside ours, with a note on every
setting in which this run differs from the paper's. The trainer writes it atomically
next to results.csv after every evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

METRIC_NAMES = ("I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "P-AUPRO")

# Spec §6: the paper's multi-class means (ViT-B, 10k iterations; percent)
PAPER_MEANS: dict[str, tuple[float, ...]] = {
    "mvtec": (99.6, 99.8, 99.0, 98.4, 69.3, 69.2, 94.8),
    "visa": (98.7, 98.9, 96.2, 98.7, 53.2, 55.7, 94.5),
    "realiad": (89.3, 86.8, 80.2, 98.8, 42.8, 47.1, 93.9),
}
DATASET_TITLES = {"mvtec": "MVTec AD", "visa": "VisA", "realiad": "Real-IAD"}
# The setting behind PAPER_MEANS, as Config field -> value (image sizes: the scripts' defaults)
PAPER_SETTING: dict[str, object] = {
    "encoder": "dinov2reg_vit_base_14",
    "encoder_weights": "official",
    "total_iters": 10_000,
    "batch_size": 16,
    "image_size": 448,
    "crop_size": 392,
}


UNDEFINED_HINT = ("nan = not defined for that class: the image metrics need normal and "
                  "anomalous test images, the pixel metrics anomalous and normal mask pixels")


def mean_result(results: Mapping[str, Sequence[float]]) -> tuple[list[float], str]:
    """Each metric averaged over the classes where it is not nan (the reference's `Mean`
    line when every metric is defined; nan where no class defines it), and a note naming
    the classes left out of each mean ('' when none is), e.g.
    `Mean leaves out nan metrics: I-AUROC, I-AP, I-F1 of aaa; P-AUPRO of aaa, bbb`."""
    table = np.array([[float(v) for v in values] for values in results.values()],
                     dtype=np.float64).reshape(len(results), len(METRIC_NAMES))
    defined = ~np.isnan(table)
    # np.mean(axis=0)'s summation over the defined values: with none missing, the
    # reference's mean bit for bit
    sums = np.where(defined, table, 0.0).sum(axis=0)
    counts = defined.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = [float(v) for v in np.where(counts > 0, sums / counts, np.nan)]
    left_out = [tuple(name for name, ok in zip(results, defined[:, m]) if not ok)
                for m in range(len(METRIC_NAMES))]
    groups: dict[tuple[str, ...], list[str]] = {}  # the same classes left out: one phrase
    for metric, names in zip(METRIC_NAMES, left_out):
        if names:
            groups.setdefault(names, []).append(metric)
    if not groups:
        return means, ""
    parts = [f"{', '.join(metrics)} of {', '.join(names)}" for names, metrics in groups.items()]
    return means, "Mean leaves out nan metrics: " + "; ".join(parts)


def paper_means(dataset: str, separate: bool) -> tuple[float, ...] | None:
    """The paper's mean numbers for a multi-class run on `dataset`, else None."""
    return None if separate else PAPER_MEANS.get(dataset)


def paper_differences(config: Mapping[str, object], all_classes: Sequence[str]) -> list[str]:
    """Settings of `config` that differ from the paper's (`name: ours (paper: theirs)`),
    including a subset of the dataset's classes."""
    out = [f"{name}: {config.get(name)!r} (paper: {value!r})"
           for name, value in PAPER_SETTING.items() if config.get(name) != value]
    classes = list(config.get("classes", ()))
    if sorted(classes) != sorted(all_classes):
        out.append(f"classes: {len(classes)} (paper: all {len(all_classes)})")
    return out


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def results_markdown(results: Mapping[str, Sequence[float]], title: str,
                     iteration: int | None = None,
                     paper: Sequence[float] | None = None,
                     differences: Sequence[str] = (), note: str = "") -> str:
    """A Markdown page: heading, one table (rows = `results` in order, values in [0, 1]
    shown as percent with 2 decimals, `nan` where a metric is not defined; a `Mean` entry
    is set in bold), the `note` of the mean (see `mean_result`), then, if `paper` is
    given, the paper's row (percent, as published) and the settings in `differences`.
    """
    where = "" if iteration is None else f" (iteration {iteration})"
    lines = [f"# {title}", "", f"Latest evaluation{where}, percent.", "",
             _row(["class", *METRIC_NAMES]), _row(["---"] + ["---:"] * len(METRIC_NAMES))]
    for name, values in results.items():
        cells = [f"{100 * float(v):.2f}" for v in values]
        if name == "Mean":
            lines.append(_row(["**Mean**", *(f"**{c}**" for c in cells)]))
        else:
            lines.append(_row([name, *cells]))
    if paper is not None:
        lines.append(_row(["paper (mean)", *(f"{v:.1f}" for v in paper)]))
    if note or any(math.isnan(float(v)) for values in results.values() for v in values):
        lines += ["", (f"{note}. " if note else "") + UNDEFINED_HINT + "."]
    if paper is not None:
        lines += ["", "The paper's row: Dinomaly, multi-class, ViT-B, 10 000 iterations "
                      "(spec §6)."]
        if differences:
            lines += ["This run differs from that setting, so the numbers are not comparable "
                      "one to one:", ""]
            lines += [f"- {d}" for d in differences]
    return "\n".join(lines) + "\n"
