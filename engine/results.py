"""The run's results: the reference's result lines, results.csv and results.md.

- `format_result`: `<class>: I-Auroc:0.xxxx, …`, the reference's line (spec §5);
  `report` logs one per class (and the Mean line) and adds them to the table.
- `ResultsTable`: `results.csv` (one row per class per evaluation, plus `Mean`) and
  `results.md` beside it, both rewritten atomically after every evaluation.

`mean_result` averages each metric over the classes where it is defined (a class with no
anomalous test image has no I-AUROC, one whose masks are all empty no pixel metric: they
are nan) and says in a note which classes it leaves out. `results_markdown` renders one
Markdown table, per class and the mean, in percent; for the three multi-class settings it
adds the paper's mean numbers (spec §6) as a row beside ours, with a note on every
setting in which this run differs from the paper's. The trainer writes it atomically
next to results.csv after every evaluation.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple
from pathlib import Path

import numpy as np

from engine.config import ALL_CLASSES, Config, encoder_settings
from engine.fileio import atomic_write, atomic_write_text
from engine.report_material import Evaluation

METRIC_NAMES = ("I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "P-AUPRO")
RESULTS_HEADER = ("iteration", "class", *METRIC_NAMES)  # results.csv
# the reference's result line (spec §5), kept character for character
RESULT_FORMAT = ("{}: I-Auroc:{:.4f}, I-AP:{:.4f}, I-F1:{:.4f}, P-AUROC:{:.4f}, P-AP:{:.4f}, "
                 "P-F1:{:.4f}, P-AUPRO:{:.4f}")

# Spec §6: the paper's multi-class means (ViT-B, 10k iterations; percent)
PAPER_MEANS: dict[str, tuple[float, ...]] = {
    "mvtec": (99.6, 99.8, 99.0, 98.4, 69.3, 69.2, 94.8),
    "visa": (98.7, 98.9, 96.2, 98.7, 53.2, 55.7, 94.5),
    "realiad": (89.3, 86.8, 80.2, 98.8, 42.8, 47.1, 93.9),
}
DATASET_TITLES = {"mvtec": "MVTec AD", "visa": "VisA", "realiad": "Real-IAD", "mpdd": "MPDD"}
# The setting behind PAPER_MEANS, as Config field -> value (image sizes: the scripts' defaults)
PAPER_SETTING: dict[str, object] = {
    "encoder": "dinov2reg_vit_base_14",
    "encoder_weights": "official",
    "total_iters": 10_000,
    "batch_size": 16,
    "image_size": 448,
    "crop_size": 392,
}


# The DINOv3 fork's MVTec AD multi-class means (shared/DINOV3.md; 10k iterations, 512 ->
# 448 px, StableAdamW without AMSGrad, batch 16, 12 for ViT-L), shown instead of the paper's
# for a run with that encoder on MVTec AD, multi-class
DINOV3_FORK_MEANS: dict[str, tuple[float, ...]] = {
    "dinov3_vitb16": (99.51, 99.77, 98.96, 98.52, 73.38, 70.76, 94.91),
    "dinov3_vitl16": (99.62, 99.85, 99.18, 98.74, 73.70, 71.52, 95.55),
}
PAPER_NOTE = "The paper's row: Dinomaly, multi-class, ViT-B, 10 000 iterations (spec §6)."


class Reference(NamedTuple):
    """Published means shown beside a run's: the table row's label, the numbers (percent,
    as published), whose they are, and the settings in which the run differs from theirs."""
    label: str
    means: tuple[float, ...]
    note: str
    differences: list[str]


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


def paper_differences(config: Mapping[str, object], all_classes: Sequence[str],
                      setting: Mapping[str, object] = PAPER_SETTING,
                      whose: str = "paper") -> list[str]:
    """Settings of `config` that differ from the paper's (or another published `setting`):
    `name: ours (paper: theirs)`, including a subset of the dataset's classes."""
    out = [f"{name}: {config.get(name)!r} ({whose}: {value!r})"
           for name, value in setting.items() if config.get(name) != value]
    classes = list(config.get("classes", ()))
    if sorted(classes) != sorted(all_classes):
        out.append(f"classes: {len(classes)} ({whose}: all {len(all_classes)})")
    return out


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def results_markdown(results: Mapping[str, Sequence[float]], title: str,
                     iteration: int | None = None,
                     paper: Sequence[float] | None = None,
                     differences: Sequence[str] = (), note: str = "",
                     paper_label: str = "paper (mean)", paper_note: str = PAPER_NOTE) -> str:
    """A Markdown page: heading, one table (rows = `results` in order, values in [0, 1]
    shown as percent with 2 decimals, `nan` where a metric is not defined; a `Mean` entry
    is set in bold), the `note` of the mean (see `mean_result`), then, if `paper` is
    given, the published row (`paper_label`; percent, as published), `paper_note` (whose
    numbers) and the settings in `differences`.
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
        lines.append(_row([paper_label, *(repr(float(v)) for v in paper)]))  # as published
    if note or any(math.isnan(float(v)) for values in results.values() for v in values):
        lines += ["", (f"{note}. " if note else "") + UNDEFINED_HINT + "."]
    if paper is not None:
        lines += ["", paper_note]
        if differences:
            lines += ["This run differs from that setting, so the numbers are not comparable "
                      "one to one:", ""]
            lines += [f"- {d}" for d in differences]
    return "\n".join(lines) + "\n"


Page = Callable[[dict[str, list[float]], int | None], str]


class ResultsTable:
    """results.csv: `iteration,class,<7 metrics>`, floats written exactly (repr; `nan` where
    a metric is not defined for a class); and, with `markdown` (latest results per class,
    iteration -> page), results.md beside it; with `html` (the same), report.html.
    `path=None`: not written (ranks other than 0)."""

    def __init__(self, path: Path | None, markdown: Page | None = None,
                 html: Page | None = None) -> None:
        self.path = path
        self.markdown = markdown
        self.html = html
        self.rows: list[list[str]] = []

    def take_over(self, limits: dict[str, int]) -> None:
        """`--resume`: the rows of the run's results.csv for the classes in `limits`, up to
        their iteration (rows after the checkpoint a class goes back to are written again)."""
        if self.path is None or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        self.rows = [r for r in rows if r[1] in limits and r[0] and int(r[0]) <= limits[r[1]]]

    def latest(self) -> tuple[dict[str, list[float]], int | None]:
        """The last row per class (first-seen order) and the largest iteration among them."""
        last = {row[1]: row for row in self.rows}
        iterations = [int(row[0]) for row in last.values() if row[0]]
        return ({name: [float(v) for v in row[2:]] for name, row in last.items()},
                max(iterations) if iterations else None)

    def add(self, iteration: int | None, name: str, values: Sequence[float]) -> None:
        self.rows.append(["" if iteration is None else str(iteration), name,
                          *(repr(float(v)) for v in values)])

    def save(self) -> None:
        if self.path is None:
            return

        def write(f: io.IOBase) -> None:
            w = csv.writer(f)
            w.writerow(RESULTS_HEADER)
            w.writerows(self.rows)
        atomic_write(self.path, write)
        for name, make_page in (("results.md", self.markdown), ("report.html", self.html)):
            if make_page is not None:
                atomic_write_text(self.path.with_name(name), make_page(*self.latest()))


def format_result(name: str, values: Sequence[float]) -> str:
    """`<name>: I-Auroc:0.xxxx, ...` — the reference's line."""
    return RESULT_FORMAT.format(name, *values)


def report(results: dict[str, list[float]], iteration: int | None, log: Callable[[str], None],
           table: ResultsTable, with_mean: bool) -> None:
    """Log one line per class (and the Mean line, with a note on the classes it leaves
    out), add them to results.csv and rewrite it (and results.md, report.html). Results of
    `evaluator.evaluate` also write their thresholds.json and report material first."""
    for name, values in results.items():
        log(format_result(name, values))
        table.add(iteration, name, values)
    if with_mean:
        report_mean(results, iteration, log, table)
    if table.path is not None and isinstance(results, Evaluation):
        results.write(table.path.parent, iteration)
    table.save()


def report_mean(results: dict[str, list[float]], iteration: int | None, log: Callable[[str], None],
                table: ResultsTable) -> None:
    """Log the Mean line over the classes of `results` (with a note naming the classes it
    leaves out, see `mean_result`) and add it to results.csv."""
    means, note = mean_result(results)
    log(format_result("Mean", means))
    if note:
        log(f"note: {note} ({UNDEFINED_HINT})")
    table.add(iteration, "Mean", means)


def page_title(cfg: Config) -> str:
    """The title of results.md and report.html."""
    title = (f"{cfg.save_name}: Dinomaly, {DATASET_TITLES[cfg.dataset]}, "
             f"{'class-separated' if cfg.separate else 'multi-class'}")
    if cfg.eval_only:
        title += f", evaluation of {cfg.checkpoint}"
    return title


def reference(cfg: Config) -> Reference | None:
    """The published means to show beside `cfg`'s: the DINOv3 fork's for its ViT-B/L on
    MVTec AD multi-class, else the paper's for the three multi-class settings, else None;
    with the settings in which `cfg` differs from theirs."""
    settings = dataclasses.asdict(cfg)
    if cfg.eval_only:  # the checkpoint's own training is not known here
        settings["total_iters"] = PAPER_SETTING["total_iters"]
    classes = ALL_CLASSES[cfg.dataset]
    if cfg.encoder in DINOV3_FORK_MEANS and cfg.dataset == "mvtec" and not cfg.separate:
        fork = {**PAPER_SETTING, "encoder": cfg.encoder,
                **{k: v for k, v in encoder_settings(cfg.encoder).items() if k in PAPER_SETTING}}
        note = (f"The DINOv3 fork's row: Dinomaly with {cfg.encoder}, MVTec AD, multi-class, "
                f"10 000 iterations, {fork['image_size']} -> {fork['crop_size']} px "
                "(shared/DINOV3.md).")
        return Reference("DINOv3 fork (mean)", DINOV3_FORK_MEANS[cfg.encoder], note,
                         paper_differences(settings, classes, fork, whose="fork"))
    paper = paper_means(cfg.dataset, cfg.separate)
    if paper is None:
        return None
    return Reference("paper (mean)", paper, PAPER_NOTE, paper_differences(settings, classes))


def results_page(cfg: Config) -> Page:
    """results.md's page for `cfg`: with the published means beside (`reference`)."""
    ref = reference(cfg)
    title = page_title(cfg)

    def page(results: dict[str, list[float]], iteration: int | None) -> str:
        classes = {name: values for name, values in results.items() if name != "Mean"}
        note = mean_result(classes)[1] if "Mean" in results else ""
        if ref is None:
            return results_markdown(results, title, iteration, note=note)
        return results_markdown(results, title, iteration, ref.means, ref.differences, note,
                                ref.label, ref.note)
    return page
