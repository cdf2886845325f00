"""heatmaps.py: file layout, picture size and content, class colour scale, histogram."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine import heatmaps
from engine.heatmaps import (HISTOGRAM_NAME, OUTLINE_BGR, canvas_size, class_scale, colorize, format_scale,
                      load_view, panel_origins, render_heatmap, render_histogram, save_class_heatmaps)

H, W = 48, 64          # map size (not square, so rows and columns cannot be swapped unnoticed)
GREY = 128


def _grey_images(root: Path, names: list[tuple[str, str]]) -> list[str]:
    """Uniform grey RGB images at ``root/toy/test/<defect>/<file>``."""
    paths = []
    for defect, file in names:
        path = root / "toy" / "test" / defect / file
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((30, 40, 3), GREY, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _panels(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    (y0, x0), (y1, x1) = panel_origins(H, W)
    return picture[y0:y0 + H, x0:x0 + W], picture[y1:y1 + H, x1:x1 + W]


@pytest.fixture
def saved(tmp_path):
    """Three images of class ``toy``: one good (flat map), two anomalous (hot square,
    mask = that square in the first; hot square without mask in the second)."""
    paths = _grey_images(tmp_path / "data", [("good", "000.png"), ("crack", "000.png"), ("crack", "001.png")])
    maps = np.full((3, H, W), 0.1, np.float32)
    maps[1, 10:20, 30:50] = 0.9
    maps[2, 30:40, 5:15] = 0.5
    masks = np.zeros((3, H, W), bool)
    masks[1, 10:20, 30:50] = True
    scores = np.array([0.1, 0.9, 0.51234])
    out = save_class_heatmaps(tmp_path / "run", "toy", paths, maps, masks, scores, [0, 1, 1],
                              image_size=40, crop_size=32)
    return tmp_path, out, maps, masks


def test_paths_names_and_picture_size(saved):
    tmp_path, out, _, _ = saved
    base = tmp_path / "run" / "maps" / "toy"
    assert out == [base / "good" / "000_score0.1000.png", base / "crack" / "000_score0.9000.png",
                   base / "crack" / "001_score0.5123.png"]
    for path in out:
        picture = cv2.imread(str(path))
        assert picture.shape == (*canvas_size(H, W), 3)
        assert picture.shape == (heatmaps.HEADER_H + H + heatmaps.FOOTER_H, 3 * heatmaps.PAD + 2 * W, 3)
    assert cv2.imread(str(base / HISTOGRAM_NAME)).shape == (360, 560, 3)
    # atomic writes leave no temporary files behind
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_input_panel_and_overlay(saved):
    _, out, _, _ = saved
    left, right = _panels(cv2.imread(str(out[1])))
    # the input panel is the (uniform grey) image; the outline is drawn on top of it
    outline = np.all(left == OUTLINE_BGR, axis=-1)
    assert np.all(left[~outline] == GREY)
    # overlay = 0.5 input + 0.5 JET: the class maximum (0.9) is dark red, the minimum (0.1) dark blue
    hot = (GREY + np.array([0, 0, 128])) / 2.0     # JET(1.0) = BGR (0, 0, 128)
    cold = (GREY + np.array([128, 0, 0])) / 2.0    # JET(0.0) = BGR (128, 0, 0)
    np.testing.assert_allclose(right[14, 40], hot, atol=1)
    np.testing.assert_allclose(right[40, 10], cold, atol=1)
    assert np.abs(right[14, 40].astype(int) - left[14, 40]).max() >= 60


def test_outline_on_mask_boundary(saved):
    _, out, _, masks = saved
    mask = masks[1].astype(np.uint8)
    boundary = (mask - cv2.erode(mask, np.ones((3, 3), np.uint8))).astype(bool)
    for panel in _panels(cv2.imread(str(out[1]))):
        is_outline = np.all(panel == OUTLINE_BGR, axis=-1)
        assert is_outline[boundary].all()
        assert is_outline.sum() == boundary.sum()  # one pixel wide, nowhere else
        assert not is_outline[15, 40]               # the inside stays visible
    # no mask, no outline
    for panel in _panels(cv2.imread(str(out[2]))):
        assert not np.all(panel == OUTLINE_BGR, axis=-1).any()


def test_one_colour_scale_per_class(saved):
    _, out, maps, _ = saved
    # image 2 peaks at 0.5, but coloured on the class scale 0.1–0.9: mid-scale (green), not red
    _, right = _panels(cv2.imread(str(out[2])))
    mid = (GREY + colorize(np.array([[0.5]]), 0.1, 0.9)[0, 0].astype(float)) / 2.0
    np.testing.assert_allclose(right[35, 10], mid, atol=1)
    assert right[35, 10, 1] > right[35, 10, 2] + 40   # greener than red
    assert class_scale(maps) == pytest.approx((0.1, 0.9))


def test_class_scale_and_format():
    maps = np.array([[[0.012, 0.2]], [[0.341, np.nan]]], np.float32)
    lo, hi = class_scale(maps)
    assert (lo, hi) == pytest.approx((0.012, 0.341))
    assert format_scale(lo, hi) == "scale 0.012 to 0.341"
    assert class_scale(maps, vmin=0.0, vmax=1.0) == (0.0, 1.0)
    assert format_scale(0.0001, 0.0005) == "scale 0.00010 to 0.00050"  # small spans keep 2 digits
    lo, hi = class_scale(np.full((2, 3, 3), 0.25))
    assert lo == 0.25 and hi > lo                                       # constant maps: no zero division


def test_explicit_scale_changes_colours(tmp_path):
    paths = _grey_images(tmp_path / "data", [("crack", "000.png")])
    maps = np.full((1, H, W), 0.5, np.float32)
    masks = np.zeros((1, H, W), bool)
    auto = save_class_heatmaps(tmp_path / "a", "toy", paths, maps, masks, [0.5], [1], 40, 32)
    fixed = save_class_heatmaps(tmp_path / "b", "toy", paths, maps, masks, [0.5], [1], 40, 32,
                                vmin=0.0, vmax=1.0)
    _, right_auto = _panels(cv2.imread(str(auto[0])))
    _, right_fixed = _panels(cv2.imread(str(fixed[0])))
    half = colorize(np.array([[0.5]]), 0.0, 1.0)[0, 0].astype(float)
    np.testing.assert_allclose(right_fixed[5, 5], (GREY + half) / 2, atol=1)
    assert np.abs(right_auto[5, 5].astype(int) - right_fixed[5, 5]).max() > 40


def test_score_is_in_the_picture():
    image = np.full((H, W, 3), GREY, np.uint8)
    amap = np.zeros((H, W), np.float32)
    mask = np.zeros((H, W), bool)
    a = render_heatmap(image, amap, mask, 0.1234, 0.0, 1.0, "toy/good/000")
    b = render_heatmap(image, amap, mask, 0.9876, 0.0, 1.0, "toy/good/000")
    header = slice(0, heatmaps.HEADER_H)
    assert (a[header] != b[header]).any()                  # the score text differs
    assert (a[header] < 100).any()                         # and there is dark text at all
    (y1, x1) = panel_origins(H, W)[1]
    assert np.array_equal(a[y1:y1 + H], b[y1:y1 + H])      # the panels do not depend on the score


def test_rerun_replaces_old_pictures(saved):
    tmp_path, _, maps, masks = saved
    paths = [str(tmp_path / "data" / "toy" / "test" / d / f) for d, f in
             [("good", "000.png"), ("crack", "000.png"), ("crack", "001.png")]]
    out = save_class_heatmaps(tmp_path / "run", "toy", paths, maps, masks, [0.2, 0.8, 0.6], [0, 1, 1], 40, 32)
    crack = sorted(p.name for p in (tmp_path / "run" / "maps" / "toy" / "crack").iterdir())
    assert crack == ["000_score0.8000.png", "001_score0.6000.png"]
    assert all(p.exists() for p in out)


def test_load_view_is_the_centre_crop(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    img[...] = (255, 0, 0)          # red frame, 8 px wide: outside a 48 px centre crop
    img[8:56, 8:56] = (0, 255, 0)   # green centre
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    view = load_view(path, 64, 48, (48, 48))
    assert view.shape == (48, 48, 3)
    assert np.all(view == (0, 255, 0))                               # BGR green, no red
    wide = load_view(path, 64, 64, (32, 16))
    assert wide.shape == (32, 16, 3) and wide[0, 0, 2] > 200         # uncropped: red corner


def test_histogram_colours():
    scores = np.array([0.1, 0.12, 0.15, 0.5, 0.6])
    both = render_histogram(scores, np.array([0, 0, 0, 1, 1]), "toy")
    only_normal = render_histogram(scores, np.zeros(5, int), "toy")

    def has(picture, bgr):
        bar = np.round(0.55 * np.array(bgr) + 0.45 * 255)   # bars are blended at 55 %
        return np.all(np.abs(picture.astype(int) - bar) <= 1, axis=-1).sum() > 100

    assert has(both, heatmaps.NORMAL_BGR) and has(both, heatmaps.ANOMALOUS_BGR)
    assert has(only_normal, heatmaps.NORMAL_BGR) and not has(only_normal, heatmaps.ANOMALOUS_BGR)


def test_shape_errors(tmp_path):
    paths = _grey_images(tmp_path, [("good", "000.png")])
    with pytest.raises(ValueError, match="scores"):
        save_class_heatmaps(tmp_path, "toy", paths, np.zeros((1, H, W)), np.zeros((1, H, W), bool),
                            [0.1, 0.2], [0], 40, 32)
    with pytest.raises(ValueError, match="masks"):
        save_class_heatmaps(tmp_path, "toy", paths, np.zeros((1, H, W)), np.zeros((2, H, W), bool),
                            [0.1], [0], 40, 32)
    # a singleton channel axis (N × 1 × H × W, as the evaluation produces) is accepted
    out = save_class_heatmaps(tmp_path, "toy", paths, np.zeros((1, 1, H, W)), np.zeros((1, 1, H, W)),
                              [0.1], [0], 40, 32)
    assert cv2.imread(str(out[0])).shape == (*canvas_size(H, W), 3)
