"""The one writer of a run's results (`Report`), fed the typed results of each evaluation
(`evaluation.Evaluation`), rank 0 only. After every evaluation, in this order (the model is
saved before: results never report a model that is not on disk):

- the log: one line per class in the reference's format, `<class>: I-Auroc:0.xxxx, …`, and
  the `Mean` line (over the classes where a metric is defined, with a note naming those it
  leaves out), both labelled by `RESULT_LABELS` (the Dinomaly2 preview's RGB + infrared
  script labels its Mean line's RGB metrics `P-…` and drops the space before `Infra-AUROC`:
  a slip of its print statement; the Mean line here is labelled as the class lines);
- `thresholds.json` (per class and pooled thresholds, the settings predict.py needs) and
  `report/<class>/` (the worst cases' pictures, `report_material`);
- `results.csv` (one row per class per evaluation, plus the Mean; floats exact), then
  `results.md` and `report.html` (`report_pages`), from what the writer holds in memory.

Every file is written atomically. `--resume` takes over what the run wrote before it
stopped (`take_over`).
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.evaluation import IMAGE_AND_PIXEL_METRICS, ClassResult, Evaluation
from engine.fileio import atomic_write, atomic_write_text
from engine.report_material import draw_class_cases, read_class_material, write_class_material
from engine.report_pages import UNDEFINED_HINT, render_report, results_markdown
from engine.thresholds import THRESHOLDS_NAME, ThresholdsFile
from recipes.base import Reference

# the reference's result line: its label of each metric, in order (the Dinomaly2 preview's
# RGB + infrared line labels its modalities' pixel metrics with their names: RGB-AUROC, …)
RESULT_LABELS = {"I-AUROC": "I-Auroc", "I-AP": "I-AP", "I-F1": "I-F1", "P-AUROC": "P-AUROC",
                 "P-AP": "P-AP", "P-F1": "P-F1", "P-AUPRO": "P-AUPRO", "O-AUROC": "O-Auroc",
                 "O-AP": "O-AP", "O-F1": "O-F1",
                 **{f"{m}-{k}": f"{m}-{k}" for m in ("RGB", "Infra") for k in ("AUROC", "AP", "F1", "AUPRO")}}
POOLED_GRID = ("the best of the bin edges of a 2^20-bin histogram of the float32 map values "
               "(relative spacing 2^-11); its F1 is exact")


def format_result(name: str, values: Sequence[float],
                  metric_names: Sequence[str] = IMAGE_AND_PIXEL_METRICS) -> str:
    """`<name>: I-Auroc:0.xxxx, I-AP:0.xxxx, …` — the reference's line."""
    return f"{name}: " + ", ".join(f"{RESULT_LABELS.get(m, m)}:{float(v):.4f}"
                                   for m, v in zip(metric_names, values))


def mean_result(results: Mapping[str, Sequence[float]],
                metric_names: Sequence[str] = IMAGE_AND_PIXEL_METRICS) -> tuple[list[float], str]:
    """Each metric averaged over the classes where it is not nan (the reference's `Mean`
    line when every metric is defined; nan where no class defines it), and a note naming
    the classes left out of each mean ('' when none is), e.g.
    `Mean leaves out nan metrics: I-AUROC, I-AP, I-F1 of aaa; P-AUPRO of aaa, bbb`."""
    table = np.array([[float(v) for v in values] for values in results.values()],
                     dtype=np.float64).reshape(len(results), len(metric_names))
    defined = ~np.isnan(table)
    # np.mean(axis=0)'s summation over the defined values: with none missing, the
    # reference's mean bit for bit
    sums = np.where(defined, table, 0.0).sum(axis=0)
    counts = defined.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = [float(v) for v in np.where(counts > 0, sums / counts, np.nan)]
    groups: dict[tuple[str, ...], list[str]] = {}  # the same classes left out: one phrase
    for m, metric in enumerate(metric_names):
        names = tuple(name for name, ok in zip(results, defined[:, m]) if not ok)
        if names:
            groups.setdefault(names, []).append(metric)
    if not groups:
        return means, ""
    parts = [f"{', '.join(metrics)} of {', '.join(names)}" for names, metrics in groups.items()]
    return means, "Mean leaves out nan metrics: " + "; ".join(parts)


@dataclass(frozen=True)
class ReportSettings:
    """What the writer says besides the numbers."""
    title: str
    reference: Reference | None  # published means shown beside the run's
    thresholds_header: dict[str, object]  # the settings thresholds.json records
    image_size: int  # the input geometry, for the cases' pictures
    crop_size: int
    checkpoint: Callable[[str | None], str]  # the model file a class's (None: pooled) thresholds are of
    metric_names: tuple[str, ...] = IMAGE_AND_PIXEL_METRICS
    metrics_note: str = ""  # how the metrics were computed (`EvalSpec.note`), when not the default


@dataclass
class Report:
    """The writer (module docstring). `run_dir` None: nothing is written (ranks other than 0)."""
    run_dir: Path | None
    log: Callable[[str], None]
    settings: ReportSettings
    rows: list[list[str]] = field(default_factory=list)  # results.csv, without its header
    material: dict[str, dict[str, object] | None] = field(default_factory=dict)  # class.json's

    def __post_init__(self) -> None:
        self.thresholds = ThresholdsFile(
            (self.run_dir or Path(".")) / THRESHOLDS_NAME, self.settings.thresholds_header)

    @property
    def header(self) -> tuple[str, ...]:
        return ("iteration", "class", *self.settings.metric_names)

    def take_over(self, limits: dict[str, int]) -> None:
        """`--resume`: what the run wrote before it stopped: its results.csv rows of the
        classes in `limits` up to their iteration (rows after the checkpoint a class goes
        back to are written again), its thresholds and its classes' report material."""
        if self.run_dir is None:
            return
        path = self.run_dir / "results.csv"
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.reader(f))[1:]
            self.rows = [r for r in rows if r[1] in limits and r[0] and int(r[0]) <= limits[r[1]]]
        self.thresholds.take_over()  # none yet, or unreadable: written whole at the next evaluation
        self.material = {name: read_class_material(self.run_dir, name)
                         for name in self.thresholds.classes}

    def latest(self) -> tuple[dict[str, list[float]], int | None]:
        """The last row per class (first-seen order) and the largest iteration among them."""
        last = {row[1]: row for row in self.rows}
        iterations = [int(row[0]) for row in last.values() if row[0]]
        return ({name: [float(v) for v in row[2:]] for name, row in last.items()},
                max(iterations) if iterations else None)

    def evaluation(self, evaluation: Evaluation, iteration: int | None, with_mean: bool) -> None:
        """Log and write one evaluation (module docstring); `with_mean`: also the Mean of its
        classes (a model of several classes)."""
        for name, values in evaluation.metrics().items():
            self.line(name, values, iteration)
        if with_mean:
            self.mean(evaluation.metrics(), iteration)
        if self.run_dir is not None:
            self._thresholds_and_material(evaluation, iteration)
        self.save()

    def draw(self, result: ClassResult) -> None:
        """A class's worst cases drawn as soon as it is evaluated (`evaluation.evaluate`'s
        `on_class`), their maps released; class.json follows with the results."""
        if self.run_dir is not None:
            draw_class_cases(self.run_dir, result, self.settings.image_size, self.settings.crop_size)

    def summary(self, results: Mapping[str, Sequence[float]], iteration: int | None) -> None:
        """The end of a class-separated run: every class's line again, then their Mean."""
        for name, values in results.items():
            self.log(format_result(name, values, self.settings.metric_names))
        self.mean(results, iteration)
        self.save()

    def line(self, name: str, values: Sequence[float], iteration: int | None) -> None:
        self.log(format_result(name, values, self.settings.metric_names))
        self.rows.append(["" if iteration is None else str(iteration), name,
                          *(repr(float(v)) for v in values)])

    def mean(self, results: Mapping[str, Sequence[float]], iteration: int | None) -> None:
        """The Mean line over `results` (with a note naming the classes it leaves out)."""
        means, note = mean_result(results, self.settings.metric_names)
        self.line("Mean", means, iteration)
        if note:
            self.log(f"note: {note} ({UNDEFINED_HINT})")

    def _thresholds_and_material(self, evaluation: Evaluation, iteration: int | None) -> None:
        s = self.settings
        entries = {}
        for name, result in evaluation.classes.items():
            entries[name] = {"iteration": iteration, "checkpoint": s.checkpoint(name),
                             **result.thresholds.as_json()}
            self.material[name] = write_class_material(self.run_dir, result, s.image_size,
                                                       s.crop_size, iteration)
        pooled = None
        if evaluation.pooled is not None and evaluation.pooled.scores:
            pooled = {"iteration": iteration, "checkpoint": s.checkpoint(None),
                      "classes": list(evaluation.classes),
                      **evaluation.pooled.result().as_json(), "pixel_grid": POOLED_GRID}
        self.thresholds.update(entries, pooled)

    def save(self) -> None:
        """results.csv, results.md and report.html, atomically."""
        if self.run_dir is None:
            return

        def write(f: io.IOBase) -> None:
            w = csv.writer(f)
            w.writerow(self.header)
            w.writerows(self.rows)
        atomic_write(self.run_dir / "results.csv", write)
        results, iteration = self.latest()
        atomic_write_text(self.run_dir / "results.md", self.markdown(results, iteration))
        classes = [name for name in results if name != "Mean"]
        thresholds = self.thresholds.data if self.thresholds.classes else {}
        s = self.settings
        atomic_write_text(self.run_dir / "report.html",
                          render_report(s.title, results, iteration, s.reference, thresholds,
                                        {n: self.material.get(n) for n in classes},
                                        self.mean_note(results), s.metric_names, s.metrics_note))

    def mean_note(self, results: Mapping[str, Sequence[float]]) -> str:
        """The classes a `Mean` row of `results` leaves out ('' without a Mean)."""
        classes = {name: values for name, values in results.items() if name != "Mean"}
        return mean_result(classes, self.settings.metric_names)[1] if "Mean" in results else ""

    def markdown(self, results: Mapping[str, Sequence[float]], iteration: int | None) -> str:
        """results.md's page of `results` (the latest row per class)."""
        ref, s = self.settings.reference, self.settings
        note = self.mean_note(results)
        if ref is None:
            return results_markdown(results, s.title, iteration, note=note, metric_names=s.metric_names,
                                    metrics_note=s.metrics_note)
        return results_markdown(results, s.title, iteration, ref.means, ref.differences, note,
                                ref.label, ref.note, s.metric_names, s.metrics_note)
