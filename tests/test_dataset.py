"""Datasets and transforms on synthetic trees in the real layouts."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import dataset
import synth
from dataset import DatasetError

SIZE, ISIZE = 64, 56  # small stand-ins for 448 / 392
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def plain_image_transform(img: Image.Image, size: int, isize: int) -> torch.Tensor:
    """The reference recipe written out: PIL bilinear resize -> [0,1] -> centre crop -> normalise."""
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    top = int(round((size - isize) / 2))
    x = x[:, top:top + isize, top:top + isize]
    return (x - MEAN) / STD


def plain_mask_transform(mask: Image.Image, size: int, isize: int) -> torch.Tensor:
    arr = np.asarray(mask.resize((size, size), Image.BILINEAR))
    top = int(round((size - isize) / 2))
    return torch.from_numpy(arr[top:top + isize, top:top + isize].copy()).float()[None] / 255


@pytest.fixture
def transforms_():
    return dataset.get_data_transforms(SIZE, ISIZE)


@pytest.fixture
def mvtec(tmp_path):
    return synth.make_mvtec(tmp_path / "mvtec", classes=("aaa", "bbb"), n_train=3, n_good=2,
                            defects={"crack": 2, "hole": 1}, size=80)


def test_class_lists_follow_the_spec():
    assert len(dataset.MVTEC_CLASSES) == 15 and len(set(dataset.MVTEC_CLASSES)) == 15
    assert dataset.MVTEC_CLASSES[:6] == ["carpet", "grid", "leather", "tile", "wood", "bottle"]
    assert dataset.MVTEC_CLASSES[-1] == "zipper"
    assert dataset.VISA_CLASSES == ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
                                    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
    assert len(dataset.REALIAD_CLASSES) == 30 and len(set(dataset.REALIAD_CLASSES)) == 30
    assert dataset.REALIAD_CLASSES[:2] == ["audiojack", "bottle_cap"]
    assert dataset.REALIAD_CLASSES[-6:] == ["usb_adaptor", "u_block", "vcpill", "wooden_beads", "woodstick", "zipper"]


@pytest.mark.parametrize("size,isize", [(SIZE, ISIZE), (448, 392)])
def test_transforms_equal_plain_recomputation(size, isize):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))  # not square
    mask = Image.fromarray((rng.random((90, 120)) > 0.7).astype(np.uint8) * 255, mode="L")
    data_t, gt_t = dataset.get_data_transforms(size, isize)
    x = data_t(img)
    assert x.shape == (3, isize, isize) and x.dtype == torch.float32
    torch.testing.assert_close(x, plain_image_transform(img, size, isize), rtol=0, atol=1e-6)
    m = gt_t(mask)
    assert m.shape == (1, isize, isize)
    torch.testing.assert_close(m, plain_mask_transform(mask, size, isize), rtol=0, atol=0)
    assert ((m > 0) & (m < 1)).any(), "bilinear resize of a binary mask must leave fractional edges"


def test_transforms_custom_mean_std():
    img = Image.fromarray(np.full((20, 20, 3), 128, np.uint8))
    data_t, _ = dataset.get_data_transforms(16, 16, mean_train=[0.5, 0.5, 0.5], std_train=[0.25, 0.25, 0.25])
    torch.testing.assert_close(data_t(img), torch.full((3, 16, 16), (128 / 255 - 0.5) / 0.25))


def test_mvtec_test_items(mvtec, transforms_):
    data_t, gt_t = transforms_
    ds = dataset.MVTecDataset(mvtec / "aaa", data_t, gt_t, phase="test")
    assert len(ds) == 5
    assert ds.types == ["crack", "crack", "good", "good", "hole"]  # sorted defect folders
    assert ds.labels == [1, 1, 0, 0, 1]
    for i, (defect, name) in enumerate([("crack", "000"), ("crack", "001"), ("good", "000"),
                                        ("good", "001"), ("hole", "000")]):
        img, gt, label, img_path = ds[i]
        expected_path = os.path.join(mvtec / "aaa" / "test" / defect, f"{name}.png")
        assert isinstance(img_path, str) and img_path == expected_path
        assert img.shape == (3, ISIZE, ISIZE) and gt.shape == (1, ISIZE, ISIZE)
        assert isinstance(label, int) and label == (defect != "good")
        torch.testing.assert_close(img, plain_image_transform(Image.open(expected_path), SIZE, ISIZE),
                                   rtol=0, atol=1e-6)
        if defect == "good":
            assert ds.gt_paths[i] is None and torch.count_nonzero(gt) == 0
        else:
            # the i-th image pairs with the i-th mask of the same defect folder
            mask_path = mvtec / "aaa" / "ground_truth" / defect / f"{name}_mask.png"
            assert ds.gt_paths[i] == str(mask_path)
            torch.testing.assert_close(gt, plain_mask_transform(Image.open(mask_path), SIZE, ISIZE), rtol=0, atol=0)
            assert gt.max() == 1 and gt.min() == 0 and ((gt > 0) & (gt < 1)).any()


def test_mvtec_pairs_by_sorted_order_not_by_name(mvtec, transforms_):
    """Masks need not share names with images: without a name match, the reference's sorted lists
    pair them, and a note says so."""
    gt_dir = mvtec / "aaa" / "ground_truth" / "crack"
    (gt_dir / "000_mask.png").rename(gt_dir / "a.png")
    (gt_dir / "001_mask.png").rename(gt_dir / "b.png")
    ds = dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")
    assert ds.gt_paths[:2] == [str(gt_dir / "a.png"), str(gt_dir / "b.png")]
    assert [Path(p).name for p in ds.img_paths[:2]] == ["000.png", "001.png"]
    assert ds.notes == [f"ground_truth/crack of {mvtec / 'aaa'}: masks paired with images by sorted order "
                        "(no X_mask.png or X.png for 000.png, 001.png)"]
    assert dataset.MVTecDataset(mvtec / "bbb", *transforms_, phase="test").notes == []  # paired by name


def test_mvtec_test_batches_collate(mvtec, transforms_):
    ds = dataset.MVTecDataset(mvtec / "bbb", *transforms_, phase="test")
    img, gt, label, paths = next(iter(DataLoader(ds, batch_size=5)))
    assert img.shape == (5, 3, ISIZE, ISIZE) and gt.shape == (5, 1, ISIZE, ISIZE)
    assert label.tolist() == [1, 1, 0, 0, 1] and list(paths) == ds.img_paths


def test_mvtec_extensions(mvtec, transforms_):
    good = mvtec / "aaa" / "test" / "good"
    Image.open(good / "000.png").convert("RGB").save(good / "x.jpg")
    Image.open(good / "000.png").convert("RGB").save(good / "y.JPG")
    Image.open(good / "000.png").save(good / "z.bmp")
    Image.open(good / "000.png").save(good / "w.tif")  # not read by the reference; the training set's rule takes it
    (good / "notes.txt").write_text("not an image")
    ds = dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")
    assert [Path(p).name for p in ds.img_paths if "/good/" in p] == ["000.png", "001.png", "w.tif", "x.jpg",
                                                                     "y.JPG", "z.bmp"]
    w = ds.img_paths.index(str(good / "w.tif"))
    assert torch.equal(ds[w][0], ds[ds.img_paths.index(str(good / "000.png"))][0])  # lossless copy, same tensor


def test_rgb_mask_gives_the_gt_of_the_grey_one(mvtec, transforms_):
    """A multi-channel mask becomes one channel (max over the colours): the gt is 1 × H × W."""
    mask_path = mvtec / "aaa" / "ground_truth" / "hole" / "000_mask.png"
    _, grey_gt, _, _ = dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")[4]
    Image.open(mask_path).convert("RGB").save(mask_path)
    assert Image.open(mask_path).mode == "RGB"
    _, gt, _, _ = dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")[4]
    assert gt.shape == (1, ISIZE, ISIZE) and gt.max() == 1
    assert torch.equal(gt, grey_gt)


def test_mvtec_train_phase(mvtec, transforms_):
    ds = dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="train")
    assert len(ds) == 3
    img, gt, label, img_path = ds[2]  # the reference's 4-tuple in every phase
    assert label == 0 and img.shape == (3, ISIZE, ISIZE)
    assert torch.equal(gt, torch.zeros(1, ISIZE, ISIZE)) and img_path.endswith("train/good/002.png")
    expected = plain_image_transform(Image.open(mvtec / "aaa" / "train" / "good" / "002.png"), SIZE, ISIZE)
    torch.testing.assert_close(img, expected, rtol=0, atol=1e-6)


def test_mask_count_mismatch_names_the_folder(mvtec, transforms_):
    (mvtec / "aaa" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DatasetError) as err:
        dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")
    msg = str(err.value)
    assert str(mvtec / "aaa" / "test" / "crack") in msg and "2 images" in msg and "1 masks" in msg


def test_missing_ground_truth_folder_is_a_mismatch(mvtec, transforms_):
    for p in (mvtec / "aaa" / "ground_truth" / "hole").iterdir():
        p.unlink()
    (mvtec / "aaa" / "ground_truth" / "hole").rmdir()
    with pytest.raises(DatasetError, match=r"test/hole: 1 images but 0 masks .*\(folder missing\)"):
        dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")


def test_missing_folders_are_named(tmp_path, mvtec, transforms_):
    with pytest.raises(DatasetError, match="data root not found: .*nowhere"):
        dataset.MVTecDataset(tmp_path / "nowhere" / "aaa", *transforms_, phase="test")
    with pytest.raises(DatasetError, match="class folder not found: .*zzz"):
        dataset.MVTecDataset(mvtec / "zzz", *transforms_, phase="test")
    with pytest.raises(DatasetError, match="class folder not found: .*zzz"):
        dataset.mvtec_train_set(mvtec, ["aaa", "zzz"], transforms_[0])
    with pytest.raises(DatasetError, match="data root not found"):
        dataset.mvtec_train_set(tmp_path / "nowhere", ["aaa"], transforms_[0])
    (mvtec / "ccc").mkdir()
    with pytest.raises(DatasetError, match="no train/good folder in .*ccc"):
        dataset.mvtec_train_set(mvtec, ["ccc"], transforms_[0])
    with pytest.raises(DatasetError, match="no train/good folder in .*ccc"):
        dataset.MVTecDataset(mvtec / "ccc", *transforms_, phase="train")
    with pytest.raises(DatasetError, match="no test folder in .*ccc"):
        dataset.MVTecDataset(mvtec / "ccc", *transforms_, phase="test")
    (mvtec / "ccc" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images in"):
        dataset.mvtec_train_set(mvtec, ["ccc"], transforms_[0])
    with pytest.raises(DatasetError, match="no images .* in .*ccc/train/good"):
        dataset.MVTecDataset(mvtec / "ccc", *transforms_, phase="train")
    (mvtec / "ccc" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no test images found"):
        dataset.MVTecDataset(mvtec / "ccc", *transforms_, phase="test")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_image_is_named(mvtec, transforms_):
    bad = mvtec / "aaa" / "test" / "crack" / "001.png"
    _truncate(bad)
    ds = dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        dataset.check_images(dataset.image_paths(ds))
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        ds[1]
    ds[0]  # the others still load


def test_check_images_catches_truncated_jpeg_and_missing_files(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    dataset.check_images([good])  # passes
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        dataset.check_images([good, bad])
    with pytest.raises(DatasetError, match=f"cannot read image {tmp_path / 'gone.png'}.*and 1 more"):
        dataset.check_images([tmp_path / "gone.png", good, bad])


def test_corrupt_mask_is_named(mvtec, transforms_):
    bad = mvtec / "aaa" / "ground_truth" / "crack" / "000_mask.png"
    _truncate(bad)
    ds = dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="test")
    assert str(bad) in dataset.image_paths(ds)
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        dataset.check_images(dataset.image_paths(ds))
    with pytest.raises(DatasetError, match=f"cannot read mask {bad}"):
        ds[0]


def test_training_image_corrupt_is_named(mvtec, transforms_):
    bad = mvtec / "bbb" / "train" / "good" / "001.png"
    _truncate(bad)
    train = dataset.mvtec_train_set(mvtec, ["aaa", "bbb"], transforms_[0])
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        train[4]
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        dataset.check_images(dataset.image_paths(train))


def test_discover_classes(tmp_path):
    root = synth.make_mvtec(tmp_path / "custom", classes=("zeta", "alpha", "mid"), n_train=1, n_good=1,
                            defects={"x": 1}, size=16)
    (root / "no_train").mkdir()
    (root / "only_train" / "train").mkdir(parents=True)
    (root / "readme.txt").write_text("not a class")
    assert dataset.discover_classes(root) == ["alpha", "mid", "zeta"]
    with pytest.raises(DatasetError, match="data root not found"):
        dataset.discover_classes(tmp_path / "absent")
    with pytest.raises(DatasetError, match="no class folders with train/good"):
        dataset.discover_classes(root / "no_train")


def test_mvtec_train_set_matches_reference_imagefolder(mvtec, transforms_):
    data_t, _ = transforms_
    train = dataset.mvtec_train_set(mvtec, ["bbb", "aaa"], data_t)
    assert len(train) == 6
    # the reference: ImageFolder(<class>/train) per class, samples relabelled to the class index
    expected = []
    for i, cls in enumerate(["bbb", "aaa"]):
        expected += [(p, i) for p, _ in ImageFolder(str(mvtec / cls / "train")).samples]
    assert [s for d in train.datasets for s in d.samples] == expected
    assert expected[0][0].endswith("bbb/train/good/000.png")
    for idx in (0, 4):
        img, label = train[idx]
        assert label == expected[idx][1]
        torch.testing.assert_close(img, plain_image_transform(Image.open(expected[idx][0]), SIZE, ISIZE),
                                   rtol=0, atol=1e-6)
    assert dataset.image_paths(train) == [p for p, _ in expected]


def test_image_cache_is_exact(mvtec, transforms_):
    data_t, gt_t = transforms_
    plain = dataset.mvtec_train_set(mvtec, ["aaa", "bbb"], data_t)
    cached = dataset.mvtec_train_set(mvtec, ["aaa", "bbb"], data_t, cache_images=True)
    assert len(cached) == len(plain) == 6
    assert dataset.image_paths(cached) == dataset.image_paths(plain)
    for i in range(len(plain)):
        (a, la), (b, lb) = plain[i], cached[i]
        assert la == lb and torch.equal(a, b)
    # the cache holds uint8 images at the resize size
    arrays = cached.datasets[0].images.cache.arrays
    assert arrays[0].dtype == np.uint8 and arrays[0].shape == (SIZE, SIZE, 3)
    test_plain = dataset.MVTecDataset(mvtec / "aaa", data_t, gt_t, phase="test")
    test_cached = dataset.MVTecDataset(mvtec / "aaa", data_t, gt_t, phase="test", cache_images=True)
    for i in range(len(test_plain)):
        for u, v in zip(test_plain[i], test_cached[i]):
            assert torch.equal(u, v) if torch.is_tensor(u) else u == v


def test_image_cache_needs_a_splittable_transform(mvtec):
    with pytest.raises(ValueError, match="first step is Resize"):
        dataset.mvtec_train_set(mvtec, ["aaa"], lambda img: img, cache_images=True)
    resize, rest = dataset.split_resize(dataset.get_data_transforms(SIZE, ISIZE)[0])
    assert tuple(resize.size) == (SIZE, SIZE)
    assert [type(t).__name__ for t in rest.transforms] == ["ToTensor", "CenterCrop", "Normalize"]


@pytest.fixture
def realiad(tmp_path):
    return synth.make_realiad(tmp_path / "realiad", categories=("audiojack", "usb"), n_train=3,
                              n_test_ok=2, n_test_ng=2, size=48)


def test_realiad_items(realiad, transforms_):
    data_t, gt_t = transforms_
    train = dataset.RealIADDataset(realiad, "usb", data_t, gt_t, phase="train")
    assert len(train) == 3
    img, label = train[1]
    assert img.shape == (3, ISIZE, ISIZE) and label == 0 and isinstance(label, int)
    path = realiad / "realiad_1024" / "usb" / "OK" / "S0002" / "usb_0002_OK_C1.jpg"
    torch.testing.assert_close(img, plain_image_transform(Image.open(path), SIZE, ISIZE), rtol=0, atol=1e-6)

    test = dataset.RealIADDataset(realiad, "usb", data_t, gt_t, phase="test")
    assert len(test) == 4 and test.labels == [0, 0, 1, 1] and test.types == ["OK", "OK", "AK", "AK"]
    img, gt, label, img_path = test[0]
    assert label == 0 and gt.shape == (1, ISIZE, ISIZE) and torch.count_nonzero(gt) == 0
    assert img_path == os.path.join(realiad / "realiad_1024" / "usb", "OK/S0004/usb_0004_OK_C1.jpg")
    img, gt, label, img_path = test[3]
    stem = realiad / "realiad_1024" / "usb" / "NG" / "AK" / "S0007" / "usb_0007_NG_AK_C1"
    assert label == 1 and img_path == f"{stem}.jpg"
    torch.testing.assert_close(gt, plain_mask_transform(Image.open(f"{stem}.png"), SIZE, ISIZE), rtol=0, atol=0)
    assert gt.max() == 1 and ((gt > 0) & (gt < 1)).any()
    dataset.check_images(dataset.image_paths(test))
    assert len(dataset.image_paths(test)) == 6  # 4 images + 2 masks


def test_realiad_cache_is_exact(realiad, transforms_):
    plain = dataset.RealIADDataset(realiad, "audiojack", *transforms_, phase="train")
    cached = dataset.RealIADDataset(realiad, "audiojack", *transforms_, phase="train", cache_images=True)
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], cached[i][0]) and plain[i][1] == cached[i][1]


def test_realiad_errors(realiad, transforms_, tmp_path):
    json_path = realiad / "realiad_jsons" / "realiad_jsons" / "usb.json"
    json_path.unlink()
    with pytest.raises(DatasetError, match=f"Real-IAD split file not found: {json_path}"):
        dataset.RealIADDataset(realiad, "usb", *transforms_, phase="test")
    with pytest.raises(DatasetError, match="category folder not found: .*realiad_1024/nope"):
        dataset.RealIADDataset(realiad, "nope", *transforms_, phase="test")
    with pytest.raises(DatasetError, match="data root not found"):
        dataset.RealIADDataset(tmp_path / "absent", "usb", *transforms_, phase="test")
    bad = realiad / "realiad_jsons" / "realiad_jsons" / "audiojack.json"
    bad.write_text('{"train": []}')
    with pytest.raises(DatasetError, match="no readable 'test' list"):
        dataset.RealIADDataset(realiad, "audiojack", *transforms_, phase="test")
    with pytest.raises(DatasetError, match="'train' list .* is empty"):
        dataset.RealIADDataset(realiad, "audiojack", *transforms_, phase="train")


def test_bad_phase(mvtec, transforms_):
    with pytest.raises(ValueError, match="phase"):
        dataset.MVTecDataset(mvtec / "aaa", *transforms_, phase="val")
