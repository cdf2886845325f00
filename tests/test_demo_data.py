"""demo_data.py: layout and counts, masks, determinism, reuse, refusal of foreign folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.demo_data import BUILDING, DEFECTS, MARKER, DemoDataError, build_demo_dataset

SMALL = dict(classes=("brick", "gravel"), n_train=2, n_test_good=1, n_test_bad=3, size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo_data"
    assert build_demo_dataset(root) == root
    return root


def test_default_layout_and_counts(default_build):
    root = default_build
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["brick", "grass", "gravel"]
    for c in ("brick", "grass", "gravel"):
        assert len(list((root / c / "train" / "good").glob("*.png"))) == 16
        assert len(list((root / c / "test" / "good").glob("*.png"))) == 4
        assert sorted(p.name for p in (root / c / "test").iterdir()) == sorted(["good", *DEFECTS])
        for d in DEFECTS:
            images = sorted((root / c / "test" / d).glob("*.png"))
            masks = sorted((root / c / "ground_truth" / d).glob("*.png"))
            assert [p.name for p in images] == ["000.png", "001.png"]
            assert [p.name for p in masks] == ["000_mask.png", "001_mask.png"]
    assert (root / MARKER).is_file() and not (root / BUILDING).exists()
    assert not list(root.rglob("*.tmp"))


def test_images_and_masks(default_build):
    root = default_build
    for c in ("brick", "grass", "gravel"):
        for p in (root / c / "train" / "good").glob("*.png"):
            with Image.open(p) as img:
                assert img.mode == "RGB" and img.size == (256, 256)
        for d in DEFECTS:
            for img_path in (root / c / "test" / d).glob("*.png"):
                mask_path = root / c / "ground_truth" / d / f"{img_path.stem}_mask.png"
                with Image.open(img_path) as img, Image.open(mask_path) as m:
                    assert img.mode == "RGB" and m.mode == "L" and img.size == m.size == (256, 256)
                    mask = np.asarray(m)
                assert set(np.unique(mask)) == {0, 255}
                # the defect survives the test transform's centre crop (outer 6.25 % cut off)
                assert mask[:16].max() == mask[-16:].max() == mask[:, :16].max() == mask[:, -16:].max() == 0


def test_defects_change_the_texture(default_build):
    # a blob is one colour plus grain: inside the mask the channels differ, while the
    # grey photographs have equal channels everywhere else
    for c in ("brick", "grass", "gravel"):
        for img_path in (default_build / c / "test" / "blob").glob("*.png"):
            img = np.asarray(Image.open(img_path)).astype(int)
            mask_path = default_build / c / "ground_truth" / "blob" / f"{img_path.stem}_mask.png"
            mask = np.asarray(Image.open(mask_path)) > 0
            spread = img.max(-1) - img.min(-1)
            assert (spread[~mask] == 0).all()
            assert spread[mask].mean() > 10


def test_deterministic(tmp_path):
    a = _files(build_demo_dataset(tmp_path / "a", seed=3, **SMALL))
    b = _files(build_demo_dataset(tmp_path / "b", seed=3, **SMALL))
    c = _files(build_demo_dataset(tmp_path / "c", seed=4, **SMALL))
    assert a.keys() == b.keys() == c.keys() and len(a) == 2 * (2 + 1 + 3 + 3) + 1
    assert a == b
    assert sum(a[k] != c[k] for k in a) >= 10   # another seed, other images


def test_reuse_writes_nothing(tmp_path):
    root = build_demo_dataset(tmp_path / "d", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert build_demo_dataset(root, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_refuses_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.txt").write_text("precious")
    with pytest.raises(DemoDataError, match=str(root)):
        build_demo_dataset(root, **SMALL)
    assert [p.name for p in root.iterdir()] == ["thesis.txt"]
    assert (root / "thesis.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (build_demo_dataset(empty, **SMALL) / MARKER).is_file()   # an empty folder is fine


def test_interrupted_or_incomplete_build_is_redone(tmp_path):
    root = build_demo_dataset(tmp_path / "d", **SMALL)
    reference = _files(root)
    # an interrupted build: flag present, marker not yet written, an image missing
    (root / MARKER).unlink()
    (root / BUILDING).write_text("{}")
    (root / "brick" / "train" / "good" / "001.png").unlink()
    build_demo_dataset(root, **SMALL)
    assert _files(root) == reference
    # a complete build with a file deleted afterwards
    (root / "gravel" / "ground_truth" / "patch" / "000_mask.png").unlink()
    build_demo_dataset(root, **SMALL)
    assert _files(root) == reference


def test_other_parameters_rebuild_without_stale_files(tmp_path):
    root = build_demo_dataset(tmp_path / "d", **{**SMALL, "n_train": 3})
    build_demo_dataset(root, **SMALL)
    assert sorted(p.name for p in (root / "brick" / "train" / "good").iterdir()) == ["000.png", "001.png"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="wood"):
        build_demo_dataset(tmp_path / "x", classes=("wood",))
    assert not (tmp_path / "x").exists()
