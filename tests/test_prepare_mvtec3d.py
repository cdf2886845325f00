"""prepare_data/prepare_mvtec3d.py end to end on a tiny MVTec 3D-AD tree, and its point-cloud steps."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import dataset
from prepare_data import mvtec3d_ops as ops
from prepare_data import prepare_mvtec3d as prep

H, W = 40, 56            # padded to 100 × 100: 30 rows above, 22 columns left
TOP, LEFT = 30, 22


def plain_fill_gaps(img):
    """The preview's fill_gaps loop written out."""
    new = np.copy(img)
    for x, y in zip(*np.where(img == 0)):
        window = img[x - 1:x + 2, y - 1:y + 2]
        n = np.sum(window > 0)
        if n:
            new[x, y] = np.sum(window, axis=(0, 1)) / n
    return new


def scene(seed: int):
    """A tilted noisy table, a disc-shaped object 2 cm above it, a 9-point stray blob, NaN and
    zero points. Returns (xyz, object mask, stray mask)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:H, 0:W]
    x, y = cols * 0.001, rows * 0.001
    z = 0.5 + 0.1 * x + 0.05 * y + rng.uniform(-4e-4, 4e-4, (H, W))
    obj = (rows - 20) ** 2 + (cols - 28) ** 2 <= 64
    stray = (rows >= 14) & (rows < 17) & (cols >= 10) & (cols < 13)
    z = np.where(obj, z - 0.02, z)
    z = np.where(stray, z - 0.05, z)
    pc = np.stack([x, y, z], axis=-1).astype(np.float32)
    pc[20, 28] = np.nan          # a NaN point inside the object
    pc[2, 3] = 0                 # a missing point
    return pc, obj, stray


def make_raw(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for rel, has_gt in ((("bagel", "train", "good"), False), (("bagel", "test", "crack"), True),
                        (("bagel", "validation", "good"), False)):
        folder = root.joinpath(*rel)
        for kind in ("xyz", "rgb") + (("gt",) if has_gt else ()):
            (folder / kind).mkdir(parents=True)
        for k in range(2):
            tifffile.imwrite(folder / "xyz" / f"{k:03d}.tiff", scene(k)[0], photometric="rgb")
            Image.fromarray(rng.integers(1, 256, (H, W, 3), dtype=np.uint8)).save(folder / "rgb" / f"{k:03d}.png")
            if has_gt:
                gt = np.zeros((H, W), np.uint8)
                gt[16:24, 24:32] = 255
                Image.fromarray(gt, mode="L").save(folder / "gt" / f"{k:03d}.png")
    return root


def test_fill_gaps_equals_the_preview_loop():
    rng = np.random.default_rng(0)
    for _ in range(40):
        img = (rng.random((rng.integers(3, 30), rng.integers(3, 30))) * rng.choice([1e-3, 1, 1e3])).astype(np.float32)
        img[rng.random(img.shape) < 0.5] = 0
        img[rng.random(img.shape) < 0.05] *= -1
        np.testing.assert_array_equal(ops.fill_gaps(img), plain_fill_gaps(img))


def test_steps_on_a_scene():
    pc, obj, stray = scene(0)
    pc = ops.clean_points(pc)
    assert (pc[20, 28] == 0).all()
    plane = ops.ransac_plane(ops.border_points(pc), np.random.default_rng(0))
    normal = np.array([0.1, 0.05, -1.0]) / np.linalg.norm([0.1, 0.05, -1.0])
    assert abs(abs(plane[:3] @ normal) - 1) < 1e-3
    rgb = np.full((H, W, 3), 7, np.uint8)
    flat, flat_rgb = ops.remove_plane(pc, rgb, plane)
    off = (flat != 0).all(axis=-1)
    present = (pc != 0).all(axis=-1)
    assert (off == (obj | stray) & present).all()
    # zeroed with their RGB (column 0 too: x = 0 is still a point on the plane); the missing
    # points (0, 0, 0) are not on the plane: their RGB is kept
    on_plane = ~off & ~(pc == 0).all(axis=-1)
    assert (flat_rgb[on_plane] == 0).all() and (flat_rgb[~on_plane] == 7).all()
    padded = ops.pad_square(flat)
    assert padded.shape == (100, 100, 3) and (padded[TOP:TOP + H, LEFT:LEFT + W] == flat).all()
    kept, kept_rgb, clusters = ops.keep_largest_cluster(padded, ops.pad_square(flat_rgb))
    inside = (kept[TOP:TOP + H, LEFT:LEFT + W] != 0).all(axis=-1)
    assert clusters == 1 and (inside == off & ~stray).all()  # the 9 stray points are noise: removed
    assert ops.pad_square(np.zeros((130, 80))).shape == (200, 200) and ops.square_side(100, 100) == 100
    assert ops.ransac_plane(np.ones((10, 3)), np.random.default_rng(0)) is None


def run(raw, out, *extra):
    prep.main(["--data-folder", str(raw), "--save-folder", str(out), *extra])


def test_end_to_end_seeded_resumable_and_readable(tmp_path, capsys):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "prepared"
    run(raw, out, "--workers", "2")
    assert "6 samples" in capsys.readouterr().out
    crack = out / "bagel" / "test" / "crack"
    pc = tifffile.imread(crack / "xyz" / "001.tiff")
    z = tifffile.imread(crack / "z" / "001.tiff")
    assert pc.shape == (100, 100, 3) and z.shape == (100, 100) and z.dtype == np.float32
    np.testing.assert_array_equal(z, plain_fill_gaps(plain_fill_gaps(plain_fill_gaps(pc[:, :, 2]))))
    source, obj, stray = scene(1)
    inside = pc[TOP:TOP + H, LEFT:LEFT + W]
    kept = (inside != 0).all(axis=-1)
    np.testing.assert_array_equal(inside[kept], source[kept])
    assert kept[obj].mean() > 0.99 and not kept[stray].any() and not kept[~obj].any()
    rgb = np.asarray(Image.open(crack / "rgb" / "001.png"))
    raw_rgb = np.asarray(Image.open(raw / "bagel" / "test" / "crack" / "rgb" / "001.png"))
    np.testing.assert_array_equal(rgb[TOP:TOP + H, LEFT:LEFT + W][kept], raw_rgb[kept])
    missing = np.zeros((H, W), bool)
    missing[20, 28] = missing[2, 3] = True  # no point: neither plane nor cluster, the RGB stays (as the preview)
    crop = rgb[TOP:TOP + H, LEFT:LEFT + W]
    assert (crop[~kept & ~missing] == 0).all() and (crop[missing] == raw_rgb[missing]).all()
    assert rgb[:TOP].sum() == 0
    gt = np.asarray(Image.open(crack / "gt" / "001.png"))
    assert gt.shape == (100, 100) and gt[TOP + 16:TOP + 24, LEFT + 24:LEFT + 32].min() == 255 and gt.sum() == 64 * 255
    assert (out / "bagel" / "validation" / "good" / "z" / "000.tiff").is_file()
    # a second run writes nothing; another run (one thread) into another folder gives the same bytes
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    run(raw, out)
    assert "(6 already done)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    run(raw, tmp_path / "again", "--workers", "1")
    for path in out.rglob("*.*"):
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(out)).read_bytes()
    assert not list(out.rglob("*.tmp"))
    ds = dataset.MVTec3DDataset(out / "bagel", *dataset.get_data_transforms(32, 28), phase="test")
    img, mask, label, _ = ds[0]
    assert img.shape == (6, 28, 28) and label == 1 and mask.max() > 0.5
    # the originals are only read
    np.testing.assert_array_equal(tifffile.imread(raw / "bagel" / "test" / "crack" / "xyz" / "001.tiff"),
                                  scene(1)[0])


@pytest.mark.parametrize("damage", ["xyz", "rgb", "size", "missing"])
def test_bad_input_is_named_and_nothing_written(tmp_path, capsys, damage):
    raw = make_raw(tmp_path / "raw")
    folder = raw / "bagel" / "test" / "crack"
    bad = {"xyz": folder / "xyz" / "001.tiff", "rgb": folder / "rgb" / "001.png",
           "size": folder / "gt" / "000.png", "missing": folder / "rgb" / "000.png"}[damage]
    if damage == "xyz":
        bad.write_bytes(b"II*\0 broken")
    elif damage == "rgb":
        bad.write_bytes(bad.read_bytes()[:80])
    elif damage == "size":
        Image.new("L", (W, H + 1)).save(bad)
    else:
        bad.unlink()
    with pytest.raises(SystemExit) as exit_:
        run(raw, tmp_path / "out")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prepare_mvtec3d: error: ") and str(bad) in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_refuses_the_originals_as_output(tmp_path):
    raw = make_raw(tmp_path / "raw")
    with pytest.raises(prep.PrepareError, match="the originals stay untouched"):
        prep.prepare(raw, raw)
