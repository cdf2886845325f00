"""MANTATinyDataset (five views side by side in one PNG) on a tiny synthetic MANTA-Tiny class."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from dataset import DatasetError
from test_dataset import plain_image_transform, plain_mask_transform

SIZE, ISIZE = 32, 28
H, WIDTH = 40, 1280 + 16  # five views: 4 × 256 columns, then the remaining 272


def columns(array):
    """The preview's view split written out."""
    return [array[:, :256], array[:, 256:512], array[:, 512:768], array[:, 768:1024], array[:, 1024:]]


def make_manta(root: Path, mask_values=(0, 255)) -> Path:
    """<root>/<group>/<class>/{train/good, test/good, test/crack, ground_truth/crack}."""
    cls = root / "mechanics" / "gear"
    rng = np.random.default_rng(0)
    for split, sub, n in (("train", "good", 3), ("test", "good", 1), ("test", "crack", 2)):
        (cls / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (H, WIDTH, 3), dtype=np.uint8)).save(cls / split / sub / f"{k:03d}.png")
    (cls / "ground_truth" / "crack").mkdir(parents=True)
    for k in range(2):
        mask = np.full((H, WIDTH), mask_values[0], np.uint8)
        mask[10:30, 300:400] = mask_values[1]            # view 1: a large defect
        mask[5:25, 1100 + k:1160] = mask_values[1]       # view 4 (the wide last one)
        mask[20, 600] = mask_values[1]                   # view 2: one pixel (resized peak below 1)
        Image.fromarray(mask, mode="L").save(cls / "ground_truth" / "crack" / f"{k:03d}_mask.png")
    return cls


@pytest.fixture
def tf():
    return dataset.get_data_transforms(SIZE, ISIZE)


def test_test_items_split_columns_and_label_faithfully(tmp_path, tf):
    cls = make_manta(tmp_path)
    ds = dataset.MANTATinyDataset(cls, *tf, phase="test")
    assert ds.labels == [1, 1, 0] and ds.types == ["crack", "crack", "good"]
    imgs, gts, labels, path = ds[0]
    assert path == str(cls / "test" / "crack" / "000.png")
    assert imgs.shape == (5, 3, ISIZE, ISIZE) and gts.shape == (5, 1, ISIZE, ISIZE)
    img = np.asarray(Image.open(path))
    mask = np.asarray(Image.open(cls / "ground_truth" / "crack" / "000_mask.png"))
    for v, (img_view, mask_view) in enumerate(zip(columns(img), columns(mask))):
        torch.testing.assert_close(imgs[v], plain_image_transform(Image.fromarray(img_view), SIZE, ISIZE),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(gts[v], plain_mask_transform(Image.fromarray(mask_view), SIZE, ISIZE),
                                   rtol=0, atol=0)
    # the preview's label: int(max(view)), 1 only where a transformed pixel is exactly 1.0
    assert labels.dtype == torch.int32
    assert labels.tolist() == [int(gts[v].max()) for v in range(5)] == [0, 1, 0, 0, 1]
    assert 0 < gts[2].max() < 1  # the one-pixel defect of view 2 is there, but labelled 0
    good_imgs, good_gts, good_labels, _ = ds[2]
    assert good_gts.shape == (5, 1, ISIZE, ISIZE) and good_gts.abs().sum() == 0
    assert good_labels.tolist() == [0] * 5


def test_zero_one_masks_faithful_and_binary_option(tmp_path, tf):
    cls = make_manta(tmp_path, mask_values=(0, 1))
    faithful = dataset.MANTATinyDataset(cls, *tf, phase="test")
    _, gts, labels, _ = faithful[0]
    assert gts.max() <= 1 / 255 + 1e-6 and labels.tolist() == [0] * 5  # the preview's caveat
    binary = dataset.MANTATinyDataset(cls, *tf, phase="test", binary_masks=True)
    _, gts, labels, _ = binary[0]
    assert labels.tolist() == [int((gts[v] > 0).any()) for v in range(5)] == [0, 1, 1, 0, 1]
    assert gts.max() == 1


def test_train_draws_a_view_with_python_random(tmp_path, tf):
    cls = make_manta(tmp_path)
    ds = dataset.MANTATinyDataset(cls, *tf, phase="train")
    assert len(ds) == 3
    random.seed(5)
    img, label = ds[1]
    random.seed(5)
    view = random.randint(0, 4)
    want = columns(np.asarray(Image.open(cls / "train" / "good" / "001.png")))[view]
    assert label == 0 and img.shape == (3, ISIZE, ISIZE)
    torch.testing.assert_close(img, plain_image_transform(Image.fromarray(want), SIZE, ISIZE), rtol=0, atol=1e-6)


def test_checks_and_errors(tmp_path, tf):
    cls = make_manta(tmp_path)
    ds = dataset.MANTATinyDataset(cls, *tf, phase="test")
    assert dataset.image_paths(ds) == ds.img_paths + [str(cls / "ground_truth" / "crack" / f"{k:03d}_mask.png")
                                                      for k in range(2)]
    dataset.check_mask_sizes(ds)
    (cls / "train" / "bad").mkdir()
    with pytest.raises(DatasetError, match="training folder .*train/bad is not good/"):
        dataset.MANTATinyDataset(cls, *tf, phase="train")
    Image.new("RGB", (1000, H)).save(cls / "test" / "good" / "000.png")
    with pytest.raises(DatasetError, match="000.png is 1000 px wide"):
        ds[2]
