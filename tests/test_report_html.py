"""report.html: parsed with html.parser — self-contained (no script, no external URL), every
link and image resolves to a file of the run folder, the metric cells equal results.csv;
the worst false negatives / positives at the F1-max threshold; a screenshot in headless
Chromium where it is installed."""
from __future__ import annotations

import csv
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes.dinomaly import Config
from engine.evaluation import Evaluation
from engine.heatmaps import save_class_heatmaps
from engine.maps import EvalMaps
from engine.report import Report
from engine.run import report_settings
from engine.thresholds import PooledThresholds
from recipes import recipe_of


class Page(HTMLParser):
    """Every tag with its attributes, and the text of each metric cell."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cells: list[tuple[str, str, str]] = []  # (class, data-value, text)
        self._row: str | None = None
        self._value: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr":
            self._row = attrs.get("data-class")
        if tag == "td" and "data-value" in attrs:
            self._value = attrs["data-value"]

    def handle_data(self, data: str) -> None:
        if self._value is not None:
            self.cells.append((self._row, self._value, data))
            self._value = None


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def check_page(run_dir: Path) -> Page:
    """The checks every report.html must pass; returns the parsed page."""
    page = parse(run_dir / "report.html")
    tags = {t for t, _ in page.tags}
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    for tag, attrs in page.tags:
        for key in ("href", "src"):
            if key in attrs:
                target = attrs[key]
                assert "://" not in target and not target.startswith(("/", "data:")), target
                assert (run_dir / target).is_file(), f"{tag} {key}={target} does not resolve"
    with open(run_dir / "results.csv", newline="") as f:
        latest = {row["class"]: row for row in csv.DictReader(f)}
    metrics = [k for k in next(iter(latest.values())) if k not in ("iteration", "class")]
    expected = [(name, row[m]) for name, row in latest.items() for m in metrics]
    assert [(row, value) for row, value, _ in page.cells] == expected
    for _, value, text in page.cells:
        assert text == f"{100 * float(value):.2f}"
    return page


def test_report_of_the_tiny_run(tiny_run):
    run_dir = tiny_run["run_dir"]
    page = check_page(run_dir)
    text = (run_dir / "report.html").read_text()
    assert "paper (mean)" in text and "<svg" in text and "thresholds.json" in text
    assert {a.get("id") for t, a in page.tags if t == "section"} == {"class-aaa", "class-bbb"}


def images(root: Path, n: int) -> list[str]:
    paths = []
    rng = np.random.default_rng(1)
    for i in range(n):
        path = root / ("bad" if i % 2 else "good") / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def mistaken_maps(root: Path, side: int = 24) -> EvalMaps:
    """Scores that overlap: the F1-max threshold leaves false negatives and positives."""
    rng = np.random.default_rng(2)
    n = 10
    labels = np.arange(n) % 2 == 1
    masks = np.zeros((n, side, side), bool)
    masks[labels, 5:12, 6:15] = True
    maps = rng.random((n, side, side)).astype(np.float32) * 0.3
    # normal 0.1 0.2 0.25 0.85 0.35, anomalous 0.9 0.8 0.7 0.3 0.15: F1-max at >= 0.3
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.25, 0.7, 0.85, 0.3, 0.35, 0.15], np.float32)
    maps[:, 0, 0] = scores  # the maps' own ranges, for the colour scale
    return EvalMaps(maps, masks, scores, labels, images(root, n))


def write_run(tmp_path: Path, save_maps: bool) -> tuple[Path, Evaluation, Config]:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = Config(save_name="run", classes=("c1", "c2"), image_size=40, crop_size=28, save_dir=str(tmp_path))
    evaluation = Evaluation(pooled=PooledThresholds())
    for name in cfg.classes:
        maps = mistaken_maps(tmp_path / "data" / name)
        if save_maps:
            save_class_heatmaps(run_dir, name, maps.paths, maps.maps, maps.masks, maps.scores, maps.labels, 40, 28)
        evaluation.add(name, maps, run_dir if save_maps else None)
    Report(run_dir, lambda line: None, report_settings(cfg, recipe_of(cfg))).evaluation(evaluation, 7, with_mean=True)
    return run_dir, evaluation, cfg


@pytest.mark.parametrize("save_maps", [False, True])
def test_worst_cases_link_to_their_heatmaps(tmp_path, save_maps):
    run_dir, evaluation, _ = write_run(tmp_path, save_maps)
    page = check_page(run_dir)
    links = [a["href"] for t, a in page.tags if t == "a"]
    thumbs = [a["src"] for t, a in page.tags if t == "img"]
    cases = [c for name in ("c1", "c2") for c in evaluation.classes[name].cases]
    assert {c.kind for c in cases} == {"fn", "fp"}  # both kinds occur in these scores
    assert len(links) == len(thumbs) == len(cases)
    assert all(t.startswith("report/") and t.endswith("_thumb.png") for t in thumbs)
    if save_maps:  # linked to the heatmaps --save_maps drew
        assert all(link.startswith("maps/") for link in links)
        assert not list((run_dir / "report").rglob("fn_?.png"))
    else:
        assert all(link.startswith("report/") for link in links)
    # the cases are those of the threshold in thresholds.json
    text = (run_dir / "report.html").read_text()
    threshold = evaluation.classes["c1"].thresholds.image
    assert f"threshold {threshold:.5g}" in text
    assert 0.3 > threshold > 0.25
    fn = [c.score for c in evaluation.classes["c1"].cases if c.kind == "fn"]
    fp = [c.score for c in evaluation.classes["c1"].cases if c.kind == "fp"]
    assert fn == [np.float32(0.15)] and fp == [np.float32(0.85), np.float32(0.35)]


def test_pictures_of_an_earlier_evaluation_are_removed(tmp_path):
    run_dir, evaluation, cfg = write_run(tmp_path, save_maps=False)
    stale = run_dir / "report" / "c1" / "fp_9.png"
    stale.write_bytes(b"old")
    Report(run_dir, lambda line: None, report_settings(cfg, recipe_of(cfg))).evaluation(evaluation, 8, with_mean=True)
    assert not stale.exists()
    check_page(run_dir)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_screenshot_in_headless_chromium(tmp_path):
    run_dir, _, _ = write_run(tmp_path, save_maps=False)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2000", (run_dir / "report.html").as_uri()],
                   check=True, timeout=120, capture_output=True)
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[0] >= 1000 and picture.shape[1] >= 1000
    assert (picture < 128).any() and (picture > 200).any()  # text on a light page
