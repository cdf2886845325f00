"""The run's two pages, rendered from its results (pure functions: text in, text out):

- `results_markdown`: results.md, the latest metrics per class and the mean in percent, with
  the published row beside (a `Reference`) and the settings in which the run differs;
- `render_report`: report.html, one self-contained page (inline CSS and SVG, no script, no
  external URL; every link relative to the run folder, so it can be moved or shared):
  1. the metrics table (each cell carries the exact value in `data-value`), the published row;
  2. the thresholds of thresholds.json (per class, pooled), the decision `score > threshold`;
  3. per class: a histogram of the image scores (normal / anomalous, the threshold marked)
     and the worst false negatives and false positives at the F1-max threshold, thumbnails
     linking to their heatmaps (`report/<class>/`, see `report_material`); for a test set
     of objects, the same for the object scores and the worst objects.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engine.evaluation import IMAGE_AND_PIXEL_METRICS
from engine.objects import ObjectScore
from engine.report_material import KINDS
from engine.thresholds import DECISION
from recipes.base import Reference

UNDEFINED_HINT = ("nan = not defined for that class: the image metrics need normal and "
                  "anomalous test images, the pixel metrics anomalous and normal mask pixels")


def _published(value: float | None) -> str:
    """A published number as published (percent), or a dash where none was published."""
    return "–" if value is None else repr(float(value))


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def results_markdown(results: Mapping[str, Sequence[float]], title: str,
                     iteration: int | None = None,
                     paper: Sequence[float] | None = None,
                     differences: Sequence[str] = (), note: str = "",
                     paper_label: str = "paper (mean)", paper_note: str = "",
                     metric_names: Sequence[str] = IMAGE_AND_PIXEL_METRICS,
                     metrics_note: str = "") -> str:
    """A Markdown page: heading, one table (rows = `results` in order, columns
    `metric_names`, values in [0, 1] shown as percent with 2 decimals, `nan` where a metric
    is not defined; a `Mean` entry is set in bold), the `note` of the mean (classes it
    leaves out), then, if `paper` is given, the published row (`paper_label`; percent, as
    published), `paper_note` (whose numbers) and the settings in `differences`;
    `metrics_note`: how the metrics were computed, under the table (when not the default).
    """
    where = "" if iteration is None else f" (iteration {iteration})"
    lines = [f"# {title}", "", f"Latest evaluation{where}, percent.", "",
             _row(["class", *metric_names]), _row(["---"] + ["---:"] * len(metric_names))]
    for name, values in results.items():
        cells = [f"{100 * float(v):.2f}" for v in values]
        if name == "Mean":
            lines.append(_row(["**Mean**", *(f"**{c}**" for c in cells)]))
        else:
            lines.append(_row([name, *cells]))
    if paper is not None:
        lines.append(_row([paper_label, *(_published(v) for v in paper)]))  # as published
    if note or any(math.isnan(float(v)) for values in results.values() for v in values):
        lines += ["", (f"{note}. " if note else "") + UNDEFINED_HINT + "."]
    if metrics_note:
        lines += ["", metrics_note + "."]
    if paper is not None:
        lines += ["", paper_note] if paper_note else []
        if differences:
            lines += ["This run differs from that setting, so the numbers are not comparable "
                      "one to one:", ""]
            lines += [f"- {d}" for d in differences]
    return "\n".join(lines) + "\n"


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.mean td { font-weight: bold; } tr.paper td { color: #666; font-style: italic; }
section { border-top: 2px solid #eee; margin-top: 20px; }
.cases { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; font-size: 12px; width: 140px; } figure img { border: 1px solid #ccc; }
.note { color: #555; }
"""
HIST_W, HIST_H, HIST_BINS = 480, 190, 20
BLUE, RED = "#2a78c8", "#dc3c28"


def _cell(value: float) -> str:
    """A metric cell: percent with 2 decimals, the exact value (results.csv's repr) in data-value."""
    return f'<td class="num" data-value="{float(value)!r}">{100 * float(value):.2f}</td>'


def metrics_table(results: Mapping[str, Sequence[float]], ref: Reference | None,
                  metric_names: Sequence[str] = IMAGE_AND_PIXEL_METRICS) -> str:
    head = "".join(f'<th class="num">{m}</th>' for m in metric_names)
    rows = []
    for name, values in results.items():
        css = ' class="mean"' if name == "Mean" else ""
        rows.append(f'<tr{css} data-class="{html.escape(name)}"><td>{html.escape(name)}</td>'
                    + "".join(_cell(v) for v in values) + "</tr>")
    if ref is not None:  # the published numbers, as published
        rows.append(f'<tr class="paper"><td>{html.escape(ref.label)}</td>'
                    + "".join(f'<td class="num">{_published(v)}</td>' for v in ref.means) + "</tr>")
    return (f'<table class="metrics"><thead><tr><th>class</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _number(value: object) -> str:
    """Five significant digits (thresholds of small maps are small), or a dash for none."""
    return "—" if value is None else f"{float(value):.5g}"


def _percent(value: object) -> str:
    return "—" if value is None else f"{100 * float(value):.2f}"


STANDARD_KEYS = {"image", "image_f1", "pixel", "pixel_f1", "scale", "n_normal", "n_anomalous",
                 "iteration", "checkpoint", "classes", "pixel_grid", "object", "object_f1",
                 "n_normal_objects", "n_anomalous_objects"}


def _other_thresholds(e: Mapping[str, object]) -> str:
    """Thresholds beyond the standard ones (e.g. a pixel threshold per modality)."""
    names = [k for k in e if k not in STANDARD_KEYS and not k.endswith("_f1")]
    return "; ".join(f"{k} {_number(e[k])} (F1 {_percent(e.get(k + '_f1'))})" for k in names)


def thresholds_table(data: Mapping[str, object]) -> str:
    entries = dict(data.get("classes", {}))
    if "pooled" in data:
        entries["pooled (all classes)"] = data["pooled"]
    objects = any("object" in e for e in entries.values())
    others = any(_other_thresholds(e) for e in entries.values())
    rows = []
    for name, e in entries.items():
        f1 = [_percent(e.get(k)) for k in ("image_f1", "pixel_f1")]
        scale = [_number(v) for v in e.get("scale") or [None, None]]
        extra = ""
        if objects:
            extra += (f"<td class=\"num\">{_number(e.get('object'))}</td><td class=\"num\">"
                      f"{_percent(e.get('object_f1'))}</td>")
        if others:
            extra += f"<td>{html.escape(_other_thresholds(e))}</td>"
        rows.append(f"<tr><td>{html.escape(name)}</td><td class=\"num\">{_number(e.get('image'))}</td>"
                    f"<td class=\"num\">{f1[0]}</td><td class=\"num\">{_number(e.get('pixel'))}</td>"
                    f"<td class=\"num\">{f1[1]}</td>{extra}<td class=\"num\">{scale[0]} to {scale[1]}</td>"
                    f"<td class=\"num\">{e.get('n_normal')} / {e.get('n_anomalous')}</td>"
                    f"<td>{html.escape(str(e.get('checkpoint')))} (iteration {e.get('iteration')})</td></tr>")
    head = ('<th class="num">object threshold</th><th class="num">O-F1 there</th>' if objects else "")
    head += "<th>other thresholds</th>" if others else ""
    return ("<table class=\"thresholds\"><thead><tr><th>class</th><th class=\"num\">image threshold</th>"
            "<th class=\"num\">I-F1 there</th><th class=\"num\">pixel threshold</th>"
            f"<th class=\"num\">P-F1 there</th>{head}<th class=\"num\">heatmap scale</th>"
            "<th class=\"num\">normal / anomalous</th><th>model</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def histogram_svg(scores: Sequence[float], labels: Sequence[bool], threshold: float | None,
                  unit: str = "image") -> str:
    """Inline SVG: image scores in `HIST_BINS` shared bins, normal blue, anomalous red, the
    threshold as a dashed line."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    marks = [*scores, *([threshold] if threshold is not None else [])]
    low, high = (min(marks), max(marks)) if marks else (0.0, 1.0)
    high = high if high > low else low + 1e-6
    edges = np.linspace(low, high, HIST_BINS + 1)
    counts = [np.histogram(scores[labels == k], bins=edges)[0] for k in (False, True)]
    top = max(1, *(int(c.max()) for c in counts if c.size))
    # legend on the first line, the threshold's label on the second, then the bars
    left, bottom, plot_w, plot_h = 10, HIST_H - 22, HIST_W - 20, HIST_H - 60

    def x(v: float) -> float:
        return left + (v - low) / (high - low) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{HIST_W}" height="{HIST_H}" '
             f'role="img" aria-label="histogram of {unit} scores">']
    for count, colour in zip(counts, (BLUE, RED)):
        for i, c in enumerate(count):
            if c:
                h = c / top * plot_h
                parts.append(f'<rect x="{x(edges[i]):.1f}" y="{bottom - h:.1f}" '
                             f'width="{max(x(edges[i + 1]) - x(edges[i]) - 1, 1):.1f}" height="{h:.1f}" '
                             f'fill="{colour}" fill-opacity="0.55"/>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#000"/>')
    parts.append(f'<text x="{left}" y="{HIST_H - 6}" font-size="11">{_number(low)}</text>'
                 f'<text x="{left + plot_w}" y="{HIST_H - 6}" font-size="11" text-anchor="end">'
                 f'{_number(high)}</text>')
    if threshold is not None:
        tx = x(threshold)
        anchor = "start" if tx < left + plot_w / 3 else "end" if tx > left + 2 * plot_w / 3 else "middle"
        parts.append(f'<line x1="{tx:.1f}" y1="26" x2="{tx:.1f}" y2="{bottom}" stroke="#000" '
                     f'stroke-dasharray="4 3"/><text x="{tx:.1f}" y="34" font-size="11" '
                     f'text-anchor="{anchor}" dx="{3 if anchor == "start" else -3 if anchor == "end" else 0}"'
                     f'>threshold {_number(threshold)}</text>')
    n = [int((labels == k).sum()) for k in (False, True)]
    parts.append(f'<text x="{left}" y="12" font-size="11"><tspan fill="{BLUE}">■ normal ({n[0]})</tspan> '
                 f'<tspan fill="{RED}">■ anomalous ({n[1]})</tspan>  tallest bar: {top} '
                 f'{unit}{"s" if top > 1 else ""}</text></svg>')
    return "".join(parts)


def cases_html(cases: Sequence[Mapping[str, object]], kind: str, unit: str = "image") -> str:
    chosen = [c for c in cases if c["kind"] == kind]
    what = (f"anomalous {unit}s scored at or below the threshold, lowest first" if kind == "fn" else
            f"normal {unit}s scored above the threshold, highest first")
    figures = []
    for c in chosen:
        image = Path(str(c["image"]))
        caption = html.escape(f"{image.parent.name}/{image.name}")
        figures.append(f'<figure><a href="{html.escape(str(c["heatmap"]))}"><img src="'
                       f'{html.escape(str(c["thumbnail"]))}" alt="{caption}"></a>'
                       f'<figcaption>{caption}<br>score {float(c["score"]):.4f}</figcaption></figure>')
    body = "".join(figures) or '<p class="note">none</p>'
    heading = f"Worst {KINDS[kind]}s" if unit == "image" else f"Worst {unit}s, {KINDS[kind]}s"
    return f'<h3>{heading} ({what})</h3><div class="cases">{body}</div>'


def class_section(name: str, material: Mapping[str, object] | None) -> str:
    head = f'<section id="class-{html.escape(name)}"><h2>{html.escape(name)}</h2>'
    if material is None:
        return head + '<p class="note">no report material for this class</p></section>'
    threshold = material.get("threshold")
    where = "" if material.get("iteration") is None else f" (iteration {material['iteration']})"
    out = (head + f"<p>Image scores{where}; decision at the F1-max threshold "
           f"{_number(threshold)}.</p>"
           + histogram_svg(material["scores"], material["labels"], threshold)
           + cases_html(material["cases"], "fn") + cases_html(material["cases"], "fp"))
    objects = material.get("objects")
    if objects is not None:  # a test set of objects: each decided on as a whole
        out += (f"<p>Object scores{where}; decision at the F1-max threshold "
                f"{_number(objects['threshold'])}.</p>"
                + histogram_svg(objects["scores"], objects["labels"], objects["threshold"], "object")
                + cases_html(objects["cases"], "fn", "object") + cases_html(objects["cases"], "fp", "object"))
    return out + "</section>"


def render_report(title: str, results: Mapping[str, Sequence[float]], iteration: int | None,
                  ref: Reference | None, thresholds: Mapping[str, object],
                  material: Mapping[str, Mapping | None], note: str = "",
                  metric_names: Sequence[str] = IMAGE_AND_PIXEL_METRICS,
                  metrics_note: str = "") -> str:
    """The whole page (see the module docstring); `note`: the classes the Mean leaves out;
    `metrics_note`: how the metrics were computed (when not the default)."""
    classes = {n: v for n, v in results.items() if n != "Mean"}
    undefined = note or any(math.isnan(float(v)) for vals in results.values() for v in vals)
    where = "" if iteration is None else f" (iteration {iteration})"
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
             f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>Latest evaluation{where}, percent (results.csv has the exact values).</p>",
             metrics_table(results, ref, metric_names)]
    if undefined:
        parts.append(f'<p class="note">{html.escape((note + ". ") if note else "")}{UNDEFINED_HINT}.</p>')
    if metrics_note:
        parts.append(f'<p class="note">{html.escape(metrics_note)}.</p>')
    if ref is not None:
        parts.append(f'<p class="note">{html.escape(ref.note)}'
                     + (" This run differs: " + html.escape("; ".join(ref.differences)) + "."
                        if ref.differences else "") + "</p>")
    if thresholds:
        objects = (" " + ObjectScore.from_json(thresholds["object_score"]).note() + "."
                   if "object_score" in thresholds else "")
        parts.append(f"<h2>Thresholds</h2><p>Decision: {html.escape(DECISION)} (thresholds.json, "
                     f"used by predict.py). {html.escape(str(thresholds.get('score', '')))}."
                     f"{html.escape(objects)}</p>"
                     + thresholds_table(thresholds))
    parts += [class_section(name, material.get(name)) for name in classes]
    parts.append("</body></html>\n")
    return "\n".join(parts)
