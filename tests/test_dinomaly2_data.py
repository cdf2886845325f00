"""Dinomaly2's data pieces: the few-shot strong transforms (draws replayed plainly), the
few-shot draw, the class list from the data path, and the BTAD and MIAD layouts."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

import dataset
import synth
from dataset import DatasetError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
             270: Image.Transpose.ROTATE_270}


def plain_strong(img: Image.Image, size: int, isize: int) -> tuple[torch.Tensor, dict]:
    """The preview's few-shot transform with its draws replayed in order: the crop's area
    and log-aspect uniforms (10 attempts at most), its two randints when the window fits,
    else the whole image; Python's choice of angle; two flip draws."""
    img = img.resize((size, size), Image.BILINEAR)
    s = (isize / size) ** 2
    log_lo, log_hi = torch.log(torch.tensor([0.95, 1.05])).tolist()
    box, attempts = None, 0
    while box is None and attempts < 10:
        attempts += 1
        area = size * size * torch.empty(1).uniform_(s, s).item()
        aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi).item())
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= size and 0 < h <= size:
            top = torch.randint(0, size - h + 1, (1,)).item()
            left = torch.randint(0, size - w + 1, (1,)).item()
            box = (left, top, left + w, top + h)
    box = box or (0, 0, size, size)  # the fallback: the whole (square) image
    img = img.crop(box).resize((isize, isize), Image.BILINEAR)
    angle = random.choice([0, 90, 180, 270])
    img = img.transpose(TRANSPOSE[angle]) if angle else img
    hflip, vflip = torch.rand(1).item() < 0.5, torch.rand(1).item() < 0.5
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if hflip else img
    img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if vflip else img
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD, {"attempts": attempts, "fallback": box == (0, 0, size, size)
                              and attempts == 10, "angle": angle, "flips": (hflip, vflip)}


@pytest.mark.parametrize("src,size,isize", [(80, 64, 56), (70, 56, 56), (90, 112, 98)])
def test_strong_transforms_replay_the_draws(src, size, isize):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (src, src + 7, 3), dtype=np.uint8))
              for _ in range(24)]
    transform = dataset.get_strong_transforms(size, isize)
    torch.manual_seed(3)
    random.seed(3)
    got = [transform(img) for img in images]
    states = torch.get_rng_state(), random.getstate()
    torch.manual_seed(3)
    random.seed(3)
    expected = [plain_strong(img, size, isize) for img in images]
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    for x, (y, _) in zip(got, expected):
        assert x.shape == (3, isize, isize) and torch.equal(x, y)
    draws = [info for _, info in expected]
    assert {d["angle"] for d in draws} == {0, 90, 180, 270}
    assert {d["flips"] for d in draws} == {(a, b) for a in (True, False) for b in (True, False)}
    if size == isize:  # both the rare fit and the 10-miss fallback happen
        assert any(d["fallback"] for d in draws) and any(d["attempts"] < 10 for d in draws)
    else:  # the window always fits at once
        assert all(d["attempts"] == 1 for d in draws)


def test_random_rotate90_uses_python_random():
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8))
    random.seed(0)
    angles = [random.choice([0, 90, 180, 270]) for _ in range(8)]
    random.seed(0)
    state = torch.get_rng_state()
    out = [dataset.RandomRotate90()(img) for _ in range(8)]
    assert torch.equal(torch.get_rng_state(), state)  # no torch draw
    for o, a in zip(out, angles):
        assert np.array_equal(np.asarray(o), np.asarray(img.rotate(a)))


@pytest.fixture
def tree(tmp_path):
    return synth.make_mvtec(tmp_path / "data", classes=("aaa", "bbb", "ccc"), n_train=7,
                            size=32)


def test_fewshot_samples_draw_in_the_preview_order(tree):
    (tree / "bbb" / "train" / "good" / ".hidden.png").write_bytes(b"")  # never drawn
    random.seed(99)
    drawn = dataset.fewshot_samples(tree, ["ccc", "aaa", "bbb"], shot=4)
    after = random.getstate()
    random.seed(1)
    for cls in ["ccc", "aaa", "bbb"]:
        files = sorted((tree / cls / "train" / "good").glob("[!.]*.png"))
        assert [p for p, _ in ImageFolder(str(tree / cls / "train")).samples
                if not p.endswith(".hidden.png")] == [str(f) for f in files]
        assert drawn[cls] == random.sample([str(f) for f in files], 4)
    assert random.getstate() == after and list(drawn) == ["ccc", "aaa", "bbb"]
    assert dataset.fewshot_samples(tree, ["ccc", "aaa", "bbb"], shot=4, seed=1) == drawn
    assert dataset.fewshot_samples(tree, ["ccc"], shot=4, seed=2) != {"ccc": drawn["ccc"]}


def test_fewshot_train_set_and_refusals(tree):
    drawn = dataset.fewshot_samples(tree, ["aaa", "bbb"], shot=3)
    data_tf, _ = dataset.get_data_transforms(32, 28)
    train = dataset.mvtec_train_set(tree, ["aaa", "bbb"], data_tf, samples=drawn)
    assert len(train) == 6
    assert [s for part in train.datasets for s in part.samples] == [
        (p, 0) for p in drawn["aaa"]] + [(p, 1) for p in drawn["bbb"]]
    with pytest.raises(DatasetError, match=r"--shot 8 is more than the 7 training images of "
                                           r"class aaa .*--shot 7 or less"):
        dataset.fewshot_samples(tree, ["aaa", "bbb"], shot=8)
    with pytest.raises(DatasetError, match="--shot must be"):
        dataset.fewshot_samples(tree, ["aaa"], shot=0)
    with pytest.raises(DatasetError, match="class folder not found"):
        dataset.fewshot_samples(tree, ["zzz"], shot=1)


def test_classes_for_path(tmp_path):
    assert dataset.classes_for_path("../mvtec_anomaly_detection") == dataset.MVTEC_CLASSES
    assert dataset.classes_for_path("/d/VisA_pytorch/1cls") == dataset.VISA_CLASSES
    assert dataset.classes_for_path("../BTech_Dataset_transformed") == ["01", "02", "03"]
    assert dataset.classes_for_path("../MPDD") == dataset.MPDD_CLASSES
    assert dataset.classes_for_path("../MIAD") == dataset.MIAD_CLASSES
    assert dataset.classes_for_path("../Uni-Medical") == ["BraTS2021", "LIVER", "RESC"]
    assert dataset.classes_for_path("/x/mvtec_visa_btech") == dataset.MVTEC_CLASSES  # first wins
    assert len(dataset.MIAD_CLASSES) == 7 and dataset.MIAD_CLASSES[0] == "catenary_dropper"
    root = tmp_path / "ADNet"
    for name in ("zeta", "alpha", ".cache", "Mid"):
        (root / name).mkdir(parents=True)
    (root / "notes.txt").write_text("x")
    assert dataset.classes_for_path(root) == ["Mid", "alpha", "zeta"]  # sorted, folders only
    with pytest.raises(DatasetError, match="data root not found"):
        dataset.classes_for_path(tmp_path / "missing")


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_btad(root, ext_img=".bmp", ext_mask=".png"):
    """BTAD: <cls>/train/ok, test/{ok,ko}, ground_truth/ko (images and masks in BMP or PNG)."""
    rng = np.random.default_rng(0)
    for i in range(3):
        write(root / "03" / "train" / "ok" / f"{i:04d}{ext_img}", rng.integers(0, 256, (40, 40, 3),
                                                                              dtype=np.uint8))
        write(root / "03" / "test" / "ok" / f"{i:04d}{ext_img}", rng.integers(0, 256, (40, 40, 3),
                                                                             dtype=np.uint8))
    for i in range(2):
        write(root / "03" / "test" / "ko" / f"{i:04d}{ext_img}", rng.integers(0, 256, (40, 40, 3),
                                                                             dtype=np.uint8))
        mask = np.zeros((40, 40), np.uint8)
        mask[5 + i:20, 10:30] = 255
        write(root / "03" / "ground_truth" / "ko" / f"{i:04d}{ext_mask}", mask)
    return root


@pytest.mark.parametrize("ext_img,ext_mask", [(".bmp", ".png"), (".png", ".bmp"),
                                              (".bmp", ".bmp")])
def test_btad_layout(tmp_path, ext_img, ext_mask):
    root = make_btad(tmp_path / "BTech_Dataset_transformed", ext_img, ext_mask)
    tf, gt_tf = dataset.get_data_transforms(40, 40)
    test = dataset.MVTecDataset(root / "03", tf, gt_tf, phase="test")
    assert test.labels == [1, 1, 0, 0, 0] and test.types == ["ko"] * 2 + ["ok"] * 3
    assert [p.rsplit("/", 2)[-2:] for p in test.gt_paths[:2]] == [
        ["ko", f"0000{ext_mask}"], ["ko", f"0001{ext_mask}"]]
    img, gt, label, _ = test[1]
    assert label == 1 and gt.shape == (1, 40, 40) and gt.sum() == 14 * 20  # rows 6..19
    assert test[2][1].sum() == 0
    train = dataset.MVTecDataset(root / "03", tf, gt_tf, phase="train")
    assert len(train) == 3 and train.types == ["ok"] * 3
    assert len(dataset.mvtec_train_set(root, ["03"], tf)) == 3
    assert dataset.discover_classes(root) == ["03"]
    assert len(dataset.fewshot_samples(root, ["03"], shot=2)["03"]) == 2


def test_miad_layout(tmp_path):
    """MIAD: the MVTec AD layout under its own class names."""
    root = synth.make_mvtec(tmp_path / "MIAD", classes=tuple(dataset.MIAD_CLASSES[:2]),
                            n_train=2, n_good=1, defects={"broken": 2}, size=32)
    classes = dataset.classes_for_path(root)
    assert classes == dataset.MIAD_CLASSES
    tf, gt_tf = dataset.get_data_transforms(32, 28)
    test = dataset.MVTecDataset(root / classes[1], tf, gt_tf, phase="test")
    assert test.labels == [1, 1, 0] and all(p.endswith("_mask.png") for p in test.gt_paths[:2])
    assert len(dataset.mvtec_train_set(root, classes[:2], tf)) == 4
