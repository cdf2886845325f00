"""RealIADDatasetv2 (the Dinomaly2 preview's multi-view Real-IAD reader) on tiny five-view layouts."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import dataset
from dataset import DatasetError
from test_dataset import plain_image_transform, plain_mask_transform

SIZE, ISIZE = 32, 28
H, W = 20, 24


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def _mask(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((H, W), np.uint8)
    rng = np.random.default_rng(seed)
    r, c = rng.integers(2, 12, 2)
    mask[r:r + 6, c:c + 8] = 255
    Image.fromarray(mask, mode="L").save(path)


# JSON order deliberately unsorted by object key and with the views of objects interleaved
TEST_RECORDS = [  # (image_path, mask_path, anomaly_class)
    ("OK/S0010/v_C1.png", None, "OK"),
    ("NG/AK/S0003/v_C1.png", "NG/AK/S0003/v_C1_mask.png", "AK"),
    ("OK/S0010/v_C2.png", None, "OK"),
    ("NG/AK/S0003/v_C2.png", None, "AK"),  # NG without a mask: normal
    ("OK/S0002/v_C1.png", None, "OK"),
    ("OK/S0002/v_C2.png", None, "OK"),
    ("NG/AK/S0003/v_C3.png", "NG/AK/S0003/v_C3_mask.png", "AK"),
    ("OK/S0010/v_C3.png", None, "OK"),
    ("OK/S0002/v_C3.png", None, "OK"),
]
TRAIN_RECORDS = [
    ("OK/S0007/v_C1.png", None, "OK"),
    ("OK/S0001/v_C1.png", None, "OK"),
    ("NG/QS/S0005/v_C1.png", None, "QS"),  # labelled, no mask: the preview crashed here
    ("OK/S0007/v_C2.png", None, "OK"),
    ("OK/S0001/v_C2.png", None, "OK"),
    ("NG/QS/S0005/v_C2.png", None, "QS"),
]


def make_multiview(root: Path, cat: str, split: str, version: str, nested: bool,
                   test=TEST_RECORDS, train=TRAIN_RECORDS) -> Path:
    img_dir = root / version / cat / (cat if nested else "")
    for k, (img, mask, _) in enumerate(test + train):
        _image(img_dir / img, k)
        if mask:
            _mask(img_dir / mask, k)
    def rec(r):
        return {"image_path": r[0], "mask_path": r[1], "anomaly_class": r[2], "category": r[2]}
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / f"{cat}.json").write_text(json.dumps({"train": [rec(r) for r in train],
                                                         "test": [rec(r) for r in test]}))
    return img_dir


def oracle_objects(records):
    """The preview's grouping written plainly: key = folders joined without '/', sorted keys."""
    groups = {}
    for r in records:
        groups.setdefault("".join(r[0].split("/")[:-1]), []).append(r)
    return [groups[k] for k in sorted(groups)]


@pytest.fixture
def tf():
    return dataset.get_data_transforms(SIZE, ISIZE)


@pytest.mark.parametrize("nested", [True, False])
def test_test_objects_items_and_labels(tmp_path, tf, nested):
    img_dir = make_multiview(tmp_path, "toy", "realiadvariety_jsons", "realiadvariety_raw", nested)
    ds = dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="test", split="realiadvariety_jsons",
                                  version="realiadvariety_raw")
    objects = oracle_objects(TEST_RECORDS)
    # string order of the keys: 'NGAKS0003' < 'OKS0002' < 'OKS0010'
    assert [o[0][0].split("/")[-2] for o in objects] == ["S0003", "S0002", "S0010"]
    assert len(ds) == 3
    assert ds.img_paths == [[str(img_dir / r[0]) for r in o] for o in objects]
    expected_labels = [[r[2] != "OK" and r[1] is not None for r in o] for o in objects]
    assert ds.labels == expected_labels == [[True, False, True], [False] * 3, [False] * 3]
    imgs, gts, labels, paths = ds[0]
    assert imgs.shape == (3, 3, ISIZE, ISIZE) and gts.shape == (3, 1, ISIZE, ISIZE)
    assert labels.dtype == torch.bool and labels.tolist() == [True, False, True]
    assert paths == [str(img_dir / r[0]) for r in objects[0]]
    for v, (img, mask, _) in enumerate(objects[0]):
        torch.testing.assert_close(imgs[v], plain_image_transform(Image.open(img_dir / img), SIZE, ISIZE),
                                   rtol=0, atol=1e-6)
        want = (plain_mask_transform(Image.open(img_dir / mask), SIZE, ISIZE) if v != 1
                else torch.zeros(1, ISIZE, ISIZE))
        torch.testing.assert_close(gts[v], want, rtol=0, atol=0)
    assert gts[0].max() == 1 and gts[1].max() == 0


def test_collation_of_objects(tmp_path, tf):
    make_multiview(tmp_path, "toy", "realiadvariety_jsons", "realiadvariety_raw", nested=True)
    ds = dataset.RealIADDatasetv2(tmp_path, "toy", *tf, "test", split="realiadvariety_jsons",
                                  version="realiadvariety_raw")
    img, gt, label, paths = next(iter(DataLoader(ds, batch_size=2)))
    assert img.shape == (2, 3, 3, ISIZE, ISIZE) and gt.shape == (2, 3, 1, ISIZE, ISIZE)
    assert label.shape == (2, 3) and label.dtype == torch.bool
    assert len(paths) == 3 and all(len(p) == 2 for p in paths)  # V tuples of B paths
    assert paths[1] == (ds.img_paths[0][1], ds.img_paths[1][1])


def test_train_single_views_in_json_order(tmp_path, tf):
    img_dir = make_multiview(tmp_path, "toy", "realiad_jsons/realiad_jsons", "realiad_1024", nested=False)
    ds = dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="train", split="realiad_jsons/realiad_jsons")
    assert ds.img_paths == [str(img_dir / r[0]) for r in TRAIN_RECORDS]
    assert ds.labels == [r[2] != "OK" for r in TRAIN_RECORDS]
    img, label = ds[2]
    assert img.shape == (3, ISIZE, ISIZE) and isinstance(label, np.bool_) and label
    torch.testing.assert_close(img, plain_image_transform(Image.open(img_dir / TRAIN_RECORDS[2][0]), SIZE, ISIZE),
                               rtol=0, atol=1e-6)
    batch_img, batch_label = next(iter(DataLoader(ds, batch_size=3)))
    assert batch_label.dtype == torch.bool and batch_label.tolist() == [False, False, True]
    assert dataset.image_paths(ds) == ds.img_paths  # training reads no mask


def test_five_view_train(tmp_path, tf):
    img_dir = make_multiview(tmp_path, "toy", "realiad_jsons", "realiad_1024", nested=False)
    ds = dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="train", five_view_train=True)
    objects = oracle_objects(TRAIN_RECORDS)
    assert ds.img_paths == [[str(img_dir / r[0]) for r in o] for o in objects]
    assert ds.labels == [[False, False]] * 3
    imgs, ones = ds[0]
    assert imgs.shape == (2, 3, ISIZE, ISIZE) and ones.dtype == torch.uint8 and ones.tolist() == [1, 1]


def test_objects_with_other_view_counts_are_refused(tmp_path, tf):
    ragged = TEST_RECORDS[:-1]  # S0002 loses its third view
    make_multiview(tmp_path, "toy", "realiad_jsons", "realiad_1024", nested=False, test=ragged)
    with pytest.raises(DatasetError, match=r"toy.json: object 'OKS0002' has 2 views but 2 other objects have 3"):
        dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="test")


def test_checks_read_every_file(tmp_path, tf):
    img_dir = make_multiview(tmp_path, "toy", "realiad_jsons", "realiad_1024", nested=False)
    ds = dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="test")
    files = dataset.image_paths(ds)
    assert sorted(files) == sorted([str(img_dir / r[0]) for r in TEST_RECORDS] +
                                   [str(img_dir / r[1]) for r in TEST_RECORDS if r[1]])
    dataset.check_images(files)
    dataset.check_mask_sizes(ds)
    Image.new("L", (W + 1, H)).save(img_dir / TEST_RECORDS[1][1])
    with pytest.raises(DatasetError, match="v_C1_mask.png is 25×20"):
        dataset.check_mask_sizes(ds)


def test_errors_name_the_file(tmp_path, tf):
    with pytest.raises(DatasetError, match="class folder not found"):
        dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="test")
    make_multiview(tmp_path, "toy", "realiad_jsons", "realiad_1024", nested=False)
    with pytest.raises(DatasetError, match=f"split file not found: {tmp_path / 'other' / 'toy.json'}"):
        dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="test", split="other")
    json_path = tmp_path / "realiad_jsons" / "toy.json"
    json_path.write_text(json.dumps({"train": [], "test": [{"mask_path": None, "anomaly_class": "OK"}]}))
    with pytest.raises(DatasetError, match="record 0 of 'test' has no string 'image_path'"):
        dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="test")
    with pytest.raises(ValueError):
        dataset.RealIADDatasetv2(tmp_path, "toy", *tf, phase="val")


def test_multiview_layout_and_classes(tmp_path):
    variety = tmp_path / "Real-IAD_Variety"
    (variety / "realiadvariety_jsons").mkdir(parents=True)
    for name in ("usb", "u_block", "audiojack"):
        (variety / "realiadvariety_jsons" / f"{name}.json").write_text("{}")
    assert dataset.multiview_layout(variety) == ("realiadvariety_jsons", "realiadvariety_raw")
    assert dataset.multiview_classes(variety) == ["audiojack", "u_block", "usb"]  # sorted: u_block first
    plain = tmp_path / "Real-IAD"
    (plain / "realiad_jsons" / "realiad_jsons").mkdir(parents=True)
    (plain / "realiad_jsons" / "realiad_jsons" / "pcb.json").write_text("{}")
    assert dataset.multiview_layout(plain) == ("realiad_jsons/realiad_jsons", "realiad_1024")
    assert dataset.multiview_classes(plain) == ["pcb"]  # the preview needed realiadvariety_jsons/ here
    manta = dataset.multiview_classes(tmp_path / "MANTATiny")
    assert len(manta) == 38 and manta[0] == "agriculture/maize" and manta[-1] == "medicine/yellow_tablet"
    with pytest.raises(DatasetError, match="split folder not found"):
        dataset.multiview_classes(tmp_path / "nothing")
