"""MulSen-AD (RGB + infrared + point cloud) datasets, the STL reader and the depth map, on tiny trees."""
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import KDTree

import dataset
from dataset import DatasetError
from test_dataset import plain_image_transform, plain_mask_transform

SIZE, ISIZE = 32, 28
H, W = 20, 26


def grid_mesh(seed: int, n: int = 5) -> np.ndarray:
    """Triangles ``T × 3 × 3`` of a bumpy n × n grid (each inner vertex shared by six triangles)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.linspace(0, 0.04, n), np.linspace(0, 0.03, n))
    zs = 0.01 * rng.random((n, n))
    pts = np.stack([xs, ys, zs], axis=-1).astype(np.float32)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            tris.append([pts[i, j], pts[i, j + 1], pts[i + 1, j]])
            tris.append([pts[i + 1, j], pts[i, j + 1], pts[i + 1, j + 1]])
    return np.array(tris, np.float32)


def write_binary_stl(path: Path, tris: np.ndarray) -> None:
    body = b"".join(struct.pack("<3f", 0, 0, 1) + t.astype("<f4").tobytes() + b"\0\0" for t in tris)
    path.write_bytes(b"solid but binary".ljust(80, b" ") + struct.pack("<I", len(tris)) + body)


def write_ascii_stl(path: Path, tris: np.ndarray) -> None:
    lines = ["solid grid"]
    for t in tris:
        lines += ["facet normal 0 0 1", " outer loop"] + [f"  vertex {x!r} {y!r} {z!r}" for x, y, z in
                                                          t.astype(np.float64).tolist()]
        lines += [" endloop", "endfacet"]
    path.write_text("\n".join(lines + ["endsolid grid"]) + "\n")


def plain_vertices(tris):
    """open3d's read + remove_duplicated_vertices: distinct corners, first occurrence first."""
    seen = {}
    for corner in tris.reshape(-1, 3).astype(np.float64):
        seen.setdefault(tuple(corner), None)
    return np.array(list(seen))


def plain_depth_map(verts, size):
    """The preview's per-vertex loop written out."""
    h, w = size
    low, high = verts.min(0), verts.max(0)
    xr, yr = max(high[0] - low[0], 1e-8), max(high[1] - low[1], 1e-8)
    depth = np.full(size, -np.inf, np.float32)
    for x, y, z in verts:
        u = min(max(int(np.int32((x - low[0]) / xr * (w - 1))), 0), w - 1)
        v = min(max(int(np.int32((y - low[1]) / yr * (h - 1))), 0), h - 1)
        if depth[v, u] < z:
            depth[v, u] = z
    empty = depth == -np.inf
    depth[empty] = depth[~empty].min()
    return (depth - depth.min()) / (depth.max() - depth.min())


def plain_depth_mask(verts, points, size, tol=0.01):
    h, w = size
    low, high = verts.min(0), verts.max(0)
    xr, yr = max(high[0] - low[0], 1e-8), max(high[1] - low[1], 1e-8)
    mask = np.zeros(size, np.float32)
    tree = KDTree(verts)
    for p in points:
        for dist, idx in zip(*tree.query(p, k=10)):
            if dist < tol:
                u = int(np.clip(int((verts[idx, 0] - low[0]) / xr * (w - 1)), 0, w - 1))
                v = int(np.clip(int((verts[idx, 1] - low[1]) / yr * (h - 1)), 0, h - 1))
                mask[max(0, v - 1):min(h, v + 2), max(0, u - 1):min(w, u + 2)] = 1
    return mask


CRACK_LABELS = [(1, 0, 1), (0, 1, 0), (1, 1, 0)]  # rows of data.csv for numbers 2, 3, 11


def make_mulsen(root: Path, cls: str = "capsule") -> Path:
    rng = np.random.default_rng(0)
    base = root / cls
    folders = {("train",): (0, 1, 2, 10), ("test", "good"): (0, 1), ("test", "crack"): (2, 3, 11)}
    for rel, numbers in folders.items():
        for modality in ("RGB", "Infrared", "Pointcloud"):
            base.joinpath(modality, *rel).mkdir(parents=True, exist_ok=True)
        for n in numbers:
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(base.joinpath("RGB", *rel, f"{n}.png"))
            Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8), mode="L").save(
                base.joinpath("Infrared", *rel, f"{n}.png"))
            writer = write_ascii_stl if n % 2 else write_binary_stl
            writer(base.joinpath("Pointcloud", *rel, f"{n}.stl"), grid_mesh(n))
    (base / "RGB" / "train" / "notes.png").write_bytes(b"")  # no number: ignored, as the preview does
    for modality in ("RGB", "Infrared", "Pointcloud"):
        (base / modality / "GT" / "crack").mkdir(parents=True)
    with open(base / "RGB" / "GT" / "crack" / "data.csv", "w") as f:
        f.write("object,label_rgb,label_infra,label_pc\n")
        f.writelines(f"{n},{a},{b},{c}\n" for n, (a, b, c) in zip((2, 3, 11), CRACK_LABELS))
    for n, (a, b, c) in zip((2, 3, 11), CRACK_LABELS):
        for modality, flag in (("RGB", a), ("Infrared", b)):
            if flag:
                mask = np.zeros((H, W), np.uint8)
                mask[4:12, 5 + n:15] = 255
                Image.fromarray(mask, mode="L").save(base / modality / "GT" / "crack" / f"{n}.png")
        if c:
            (base / "Pointcloud" / "GT" / "crack" / f"{n}.txt").write_text("0.01,0.01,0.005,1\n0.03,0.02,0.004,1\n")
    return root


@pytest.fixture
def tf():
    return dataset.get_data_transforms(SIZE, ISIZE)


def test_stl_reader_binary_and_ascii(tmp_path):
    tris = grid_mesh(3)
    write_binary_stl(tmp_path / "b.stl", tris)
    write_ascii_stl(tmp_path / "a.stl", tris)
    np.testing.assert_array_equal(dataset.read_stl(tmp_path / "b.stl"), tris)
    np.testing.assert_array_equal(dataset.read_stl(tmp_path / "a.stl"), tris.astype(np.float64))
    verts = dataset.stl_vertices(tmp_path / "b.stl")
    assert verts.shape == (25, 3)  # 5 × 5 grid, 32 triangles
    np.testing.assert_array_equal(verts, plain_vertices(tris))
    (tmp_path / "bad.stl").write_bytes(b"\x00\xff" * 50)
    with pytest.raises(DatasetError, match="cannot read mesh .*bad.stl"):
        dataset.read_stl(tmp_path / "bad.stl")


@pytest.mark.parametrize("size", [(20, 26), (7, 5)])
def test_depth_map_and_mask_equal_the_plain_loops(tmp_path, size):
    tris = grid_mesh(4, n=7)
    write_binary_stl(tmp_path / "m.stl", tris)
    verts = plain_vertices(tris)
    depth = dataset.stl_to_depth_map(tmp_path / "m.stl", size)
    assert depth.shape == size and depth.dtype == np.float32
    np.testing.assert_array_equal(depth, plain_depth_map(verts, size))
    points = np.array([[0.01, 0.01, 0.005], [0.035, 0.02, 0.0], [0.5, 0.5, 0.5]])  # the last: too far
    mask = dataset.create_depth_mask_from_3d_mask(tmp_path / "m.stl", points, size)
    np.testing.assert_array_equal(mask, plain_depth_mask(verts, points, size))
    assert 0 < mask.sum() < mask.size


def test_train_pairs_by_number(tmp_path, tf):
    root = make_mulsen(tmp_path)
    ds = dataset.MulSenTrainDataset("capsule", *tf, dataset_path=root)
    assert [Path(r).name for r, _, _ in ds.img_paths] == ["0.png", "1.png", "2.png", "10.png"]
    assert [Path(i).parent.parent.name for _, i, _ in ds.img_paths] == ["Infrared"] * 4
    assert "notes.png" in ds.notes[0]
    (rgb, ir), label = ds[3]
    assert label == 0 and rgb.shape == ir.shape == (3, ISIZE, ISIZE)
    base = root / "capsule"
    torch.testing.assert_close(rgb, plain_image_transform(Image.open(base / "RGB/train/10.png"), SIZE, ISIZE),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(ir, plain_image_transform(Image.open(base / "Infrared/train/10.png"), SIZE, ISIZE),
                               rtol=0, atol=1e-6)
    (rgb, ir, depth), _ = dataset.MulSenTrainDataset("capsule", *tf, depth=True, dataset_path=root)[3]
    grey = np.rint(plain_depth_map(plain_vertices(grid_mesh(10)), (ISIZE, ISIZE)) * 255).astype(np.uint8)
    torch.testing.assert_close(depth, plain_image_transform(Image.fromarray(grey), SIZE, ISIZE), rtol=0, atol=1e-6)


def test_test_labels_masks_and_depth(tmp_path, tf):
    root = make_mulsen(tmp_path)
    base = root / "capsule"
    ds = dataset.MulSenTestDataset("capsule", *tf, dataset_path=root)
    assert ds.labels == CRACK_LABELS + [(0, 0, 0)] * 2  # 'crack' sorts before 'good'
    (rgb, ir), labels, (rgb_mask, ir_mask), (rgb_path, ir_path) = ds[0]
    assert labels == (1, 0, 1) and rgb_path == str(base / "RGB/test/crack/2.png")
    want = plain_mask_transform(Image.open(base / "RGB/GT/crack/2.png"), SIZE, ISIZE)
    torch.testing.assert_close(rgb_mask, torch.where(want > 0.5, 1.0, 0.0), rtol=0, atol=0)
    assert ir_mask.shape == (1, ISIZE, ISIZE) and ir_mask.sum() == 0
    assert set(rgb_mask.unique().tolist()) == {0.0, 1.0}
    assert dataset.image_paths(ds).count(str(base / "Infrared/GT/crack/3.png")) == 1
    dataset.check_images(dataset.image_paths(ds))
    dataset.check_mask_sizes(ds)
    deep = dataset.MulSenTestDataset("capsule", *tf, depth=True, dataset_path=root)
    (rgb, ir, depth), labels, (_, _, pc_mask), (_, _, pc_path) = deep[0]
    assert pc_path == str(base / "Pointcloud/test/crack/2.stl") and depth.shape == (3, ISIZE, ISIZE)
    points = np.array([[0.01, 0.01, 0.005], [0.03, 0.02, 0.004]])
    want = plain_depth_mask(plain_vertices(grid_mesh(2)), points, (ISIZE, ISIZE))
    torch.testing.assert_close(pc_mask, torch.from_numpy(want)[None], rtol=0, atol=0)
    assert deep[1][2][2].sum() == 0  # label_pc 0: empty point-cloud mask
    assert str(base / "Pointcloud/GT/crack/2.txt") in deep.files()


def test_missing_modalities_and_labels_are_named(tmp_path, tf):
    root = make_mulsen(tmp_path)
    base = root / "capsule"
    (base / "Pointcloud/train/10.stl").unlink()
    dataset.MulSenTrainDataset("capsule", *tf, dataset_path=root)  # meshes only read with depth=True
    with pytest.raises(DatasetError, match=f"no mesh numbered 10 in {base / 'Pointcloud/train'}"):
        dataset.MulSenTrainDataset("capsule", *tf, depth=True, dataset_path=root)
    (base / "Infrared/train/1.png").unlink()
    with pytest.raises(DatasetError, match=f"no infrared image numbered 1 in {base / 'Infrared/train'} for "):
        dataset.MulSenTrainDataset("capsule", *tf, dataset_path=root)
    (base / "Infrared/GT/crack/11.png").unlink()
    with pytest.raises(DatasetError, match=f"mask file not found: {base / 'Infrared/GT/crack/11.png'}"):
        dataset.MulSenTestDataset("capsule", *tf, dataset_path=root)
    with open(base / "RGB/GT/crack/data.csv", "a") as f:
        f.write("12,1,0,0\n")
    with pytest.raises(DatasetError, match="data.csv has 4 label rows but its folder has 3 samples"):
        dataset.MulSenTestDataset("capsule", *tf, dataset_path=root)
    with pytest.raises(DatasetError, match="class folder not found"):
        dataset.MulSenTestDataset("cotton", *tf, dataset_path=root)
    assert dataset.mulsen_classes()[:3] == ["capsule", "cotton", "cube"] and len(dataset.mulsen_classes()) == 15
