"""MVTec3DDataset and its depth image (the Dinomaly2 preview's RGB-D reader) on tiny MVTec 3D-AD trees."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import dataset
from dataset import DatasetError
from test_dataset import plain_image_transform, plain_mask_transform

SIZE, ISIZE = 32, 28
H, W = 24, 24


def plain_depth_image(depth):
    """The preview's recipe written out (float32 depth, some foreground)."""
    fg = depth > 0
    low, high = depth[fg].min(), depth.max()
    d = (depth - low) / (high - low)
    d = 1 - d * 0.8
    d[fg == 0] = 0
    return cv2.applyColorMap((d * 255).astype(np.uint8), cv2.COLORMAP_HOT)[:, :, ::-1]


def _depth(rng, dtype=np.float32):
    z = (0.5 + rng.random((H, W))).astype(np.float32)
    z[:3] = 0                     # background rows
    z[5, 5:9] = 0                 # holes
    return z.astype(dtype)


def make_mvtec3d(root: Path, cls: str = "bagel") -> Path:
    """<root>/<cls>/{train/good, test/good, test/crack}/{rgb, z, gt}: float32 z with zero points."""
    rng = np.random.default_rng(0)
    for split, sub, n in (("train", "good", 4), ("test", "good", 1), ("test", "crack", 2)):
        folder = root / cls / split / sub
        for kind in ("rgb", "z") + (("gt",) if sub == "crack" else ()):
            (folder / kind).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(1, 256, (H, W, 3), dtype=np.uint8)).save(folder / "rgb" / f"{k:03d}.png")
            tifffile.imwrite(folder / "z" / f"{k:03d}.tiff", _depth(rng))
            if sub == "crack":
                mask = np.zeros((H, W), np.uint8)
                mask[8:16, 6 + k:14] = 255
                Image.fromarray(mask, mode="L").save(folder / "gt" / f"{k:03d}.png")
    return root / cls


@pytest.fixture
def tf():
    return dataset.get_data_transforms(SIZE, ISIZE)


def test_depth_image_equals_the_recipe():
    z = _depth(np.random.default_rng(1))
    np.testing.assert_array_equal(dataset.depth_to_image(z), plain_depth_image(z))
    assert dataset.depth_to_image(z)[0, 0].tolist() == [0, 0, 0]  # background black


def test_depth_image_as_data_comes():
    rng = np.random.default_rng(2)
    z = _depth(rng)
    with_nan = z.copy()
    with_nan[10, 10] = np.nan   # a NaN point is background (the preview's max became NaN)
    want = z.copy()
    want[10, 10] = 0
    np.testing.assert_array_equal(dataset.depth_to_image(with_nan), plain_depth_image(want))
    sixteen = (z * 1000).astype(np.uint16)  # 16-bit files: numpy's float64 arithmetic, as the preview
    np.testing.assert_array_equal(dataset.depth_to_image(sixteen), plain_depth_image(sixteen.astype(np.float64)))
    assert dataset.depth_to_image(np.zeros((H, W), np.float32)).sum() == 0  # no foreground: black
    flat = np.where(z > 0, np.float32(0.7), np.float32(0))
    heat = dataset.depth_to_image(flat)  # one depth value: every foreground pixel the nearest (1.0)
    hot = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_HOT)[0, 0, ::-1]
    assert (heat[z > 0] == hot).all() and heat[z == 0].sum() == 0


def test_items_are_rgb_and_depth_stacked(tmp_path, tf):
    cls = make_mvtec3d(tmp_path)
    ds = dataset.MVTec3DDataset(cls, *tf, phase="test")
    assert ds.labels == [1, 1, 0] and ds.types == ["crack", "crack", "good"]
    img, gt, label, path = ds[1]
    assert path == str(cls / "test" / "crack" / "rgb" / "001.png") and label == 1
    assert img.shape == (6, ISIZE, ISIZE) and gt.shape == (1, ISIZE, ISIZE)
    z = tifffile.imread(cls / "test" / "crack" / "z" / "001.tiff")
    rgb = np.array(Image.open(path))
    rgb[z <= 0] = 0
    torch.testing.assert_close(img[:3], plain_image_transform(Image.fromarray(rgb), SIZE, ISIZE), rtol=0, atol=1e-6)
    torch.testing.assert_close(img[3:], plain_image_transform(Image.fromarray(np.ascontiguousarray(
        plain_depth_image(z))), SIZE, ISIZE), rtol=0, atol=1e-6)
    torch.testing.assert_close(gt, plain_mask_transform(Image.open(cls / "test" / "crack" / "gt" / "001.png"),
                                                        SIZE, ISIZE), rtol=0, atol=0)
    img, gt, label, _ = ds[2]
    assert label == 0 and gt.abs().sum() == 0
    rgb_only = dataset.MVTec3DDataset(cls, *tf, phase="test", cat_3D=False)
    torch.testing.assert_close(rgb_only[1][0], ds[1][0][:3])
    calls = []
    def paired(a, b):
        calls.append((a.size, b.size))
        return tf[0](a), tf[0](b)
    torch.testing.assert_close(dataset.MVTec3DDataset(cls, *tf, "test", paired_transform=paired)[1][0], ds[1][0])
    assert calls == [((W, H), (W, H))]


def test_paths_map_only_the_right_components(tmp_path, tf):
    root = tmp_path / "rgb_png_data"  # the preview replaced 'rgb'/'png' here too
    cls = make_mvtec3d(root, cls="rgbpng")
    (cls / "train" / "good" / "rgb" / "000.png").rename(cls / "train" / "good" / "rgb" / "png_rgb.png")
    (cls / "train" / "good" / "z" / "000.tiff").rename(cls / "train" / "good" / "z" / "png_rgb.tiff")
    ds = dataset.MVTec3DDataset(cls, *tf, phase="train")
    assert ds.z_paths[3] == str(cls / "train" / "good" / "z" / "png_rgb.tiff")
    assert ds.z_paths[0] == str(cls / "train" / "good" / "z" / "001.tiff")
    assert ds[3][0].shape == (6, ISIZE, ISIZE)
    assert dataset.image_paths(ds) == ds.img_paths  # z files are read (and named) by read_depth
    assert set(ds.files()) == set(ds.img_paths + ds.z_paths)


def test_depth_file_kinds_and_errors(tmp_path, tf):
    cls = make_mvtec3d(tmp_path)
    z_dir = cls / "train" / "good" / "z"
    z = tifffile.imread(z_dir / "000.tiff")
    tifffile.imwrite(z_dir / "000.tiff", z.astype(np.float64)[..., None])  # float64, H × W × 1
    tifffile.imwrite(z_dir / "001.tiff", (z * 1000).astype(np.uint16))
    ds = dataset.MVTec3DDataset(cls, *tf, phase="train")
    np.testing.assert_array_equal(np.asarray(ds.rgb_and_depth(0)[1]), plain_depth_image(z.astype(np.float64)))
    np.testing.assert_array_equal(np.asarray(ds.rgb_and_depth(1)[1]),
                                  plain_depth_image((z * 1000).astype(np.uint16).astype(np.float64)))
    tifffile.imwrite(z_dir / "002.tiff", np.zeros((H, W, 3), np.float32), photometric="rgb")
    with pytest.raises(DatasetError, match="002.tiff holds a float32 array of shape \\(24, 24, 3\\)"):
        ds[2]
    (z_dir / "003.tiff").write_bytes(b"not a tiff")
    with pytest.raises(DatasetError, match="cannot read depth file .*003.tiff"):
        ds[3]
    (z_dir / "003.tiff").unlink()
    with pytest.raises(DatasetError, match=f"depth file not found: {z_dir / '003.tiff'} .*prepare_mvtec3d.py"):
        dataset.MVTec3DDataset(cls, *tf, phase="train")


def test_few_shot_draw_is_the_preview_s(tmp_path, tf):
    cls = make_mvtec3d(tmp_path)
    full = dataset.MVTec3DDataset(cls, *tf, phase="train")
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ds = dataset.MVTec3DDataset(cls, *tf, phase="train", shot=2, seed=7)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # global state untouched
    np.random.seed(7)
    keep = np.sort(np.random.choice(4, 2, replace=False))
    assert ds.img_paths == [full.img_paths[k] for k in keep]
    assert ds.z_paths == [full.z_paths[k] for k in keep]
    all_of_them = dataset.MVTec3DDataset(cls, *tf, phase="train", shot=9)
    assert all_of_them.img_paths == full.img_paths and "shot (9) >= total samples (4)" in all_of_them.notes[0]
