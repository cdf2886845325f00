"""Real-world data (every input works, or stops cleanly): image and mask encodings, mask pairing,
extensions, hidden files, mask sizes, Real-IAD records, errors from DataLoader workers."""
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader

import dataset
from engine import heatmaps
from dataset import DatasetError
from test_dataset import ISIZE, SIZE, plain_image_transform, plain_mask_transform

H, W = 48, 64  # not square, so that a transposed mask is a different size


# ----------------------------------------------------------------------------- builders

def picture(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A grey ``h × w`` uint8 picture using the whole 0..255 range (gradient plus noise)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, h * w).reshape(h, w)
    return np.clip(ramp + rng.normal(0, 40, (h, w)), 0, 255).astype(np.uint8)


def region(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """A boolean ``h × w`` ellipse (the anomalous area)."""
    rng = np.random.default_rng(100 + seed)
    cy, cx = rng.uniform(h / 3, 2 * h / 3), rng.uniform(w / 3, 2 * w / 3)
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / (h / 5)) ** 2 + ((xx - cx) / (w / 6)) ** 2 <= 1.0


def save_l(a: np.ndarray, path: Path) -> None:
    Image.fromarray(a).save(path)


def palette_image(index: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    img = Image.frombytes("P", (index.shape[1], index.shape[0]), index.astype(np.uint8).tobytes())
    img.putpalette([c for rgb in colours for c in rgb])
    return img


# The same 8-bit grey picture ``a`` as other encodings: (file suffix, writer).
IMAGE_ENCODINGS: dict[str, tuple[str, Callable[[np.ndarray, Path], None]]] = {
    "L": (".png", save_l),
    "I;16 v*257 png": (".png", lambda a, p: Image.fromarray(a.astype(np.uint16) * 257).save(p)),
    "I;16 v*256 png": (".png", lambda a, p: Image.fromarray(a.astype(np.uint16) * 256).save(p)),
    "I;16 v*257 tif": (".tif", lambda a, p: Image.fromarray(a.astype(np.uint16) * 257).save(p)),
    "I;16B v*256 tif": (".tif", lambda a, p: Image.fromarray((a.astype(np.uint16) * 256).astype(">u2")).save(p)),
    "I (16-bit pgm)": (".pgm", lambda a, p: Image.fromarray(a.astype(np.uint16) * 257).save(p)),
    "I v*257 tif": (".tif", lambda a, p: Image.fromarray(a.astype(np.int32) * 257).save(p)),
    "I with negatives": (".tif", lambda a, p: Image.fromarray(
        np.where(a == 0, -7, a.astype(np.int32) * 257).astype(np.int32)).save(p)),
    "F 0..1 tif": (".tif", lambda a, p: Image.fromarray((a / 255).astype(np.float32)).save(p)),
    "F 0..255 tif": (".tif", lambda a, p: Image.fromarray(a.astype(np.float32)).save(p)),
}
EXPECTED_FILE_MODE = {"L": "L", "I;16 v*257 png": "I;16", "I;16 v*256 png": "I;16", "I;16 v*257 tif": "I;16",
                      "I;16B v*256 tif": "I;16B", "I (16-bit pgm)": "I", "I v*257 tif": "I",
                      "I with negatives": "I", "F 0..1 tif": "F", "F 0..255 tif": "F"}


def make_class(root: Path, encoding: str = "L", n_train: int = 2, n_good: int = 1, n_bad: int = 2) -> Path:
    """One MVTec-layout class folder ``root`` with grey pictures in ``encoding`` and 0/255 L masks
    ``ground_truth/crack/NNN_mask.png``; returns ``root``."""
    suffix, save = IMAGE_ENCODINGS[encoding]
    for folder, n, seed in (("train/good", n_train, 0), ("test/good", n_good, 10), ("test/crack", n_bad, 20)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            save(picture(seed + i), root / folder / f"{i:03d}{suffix}")
    (root / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
    for i in range(n_bad):
        save_l(region(i).astype(np.uint8) * 255, root / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def make_realiad(root: Path, category: str = "usb", encoding: str = "L",
                 records: dict[str, list] | None = None) -> Path:
    """A Real-IAD tree with one category: 2 train OK, 1 test OK, 1 test NG (0/255 L mask);
    ``records`` replaces the split file's content. Returns ``root``."""
    suffix, save = IMAGE_ENCODINGS[encoding]
    img_root = root / "realiad_1024" / category
    split: dict[str, list] = {"train": [], "test": []}
    for phase, name, seed in (("train", "OK/S0001/a", 0), ("train", "OK/S0002/b", 1), ("test", "OK/S0003/c", 2),
                              ("test", "NG/AK/S0004/d", 3)):
        (img_root / name).parent.mkdir(parents=True, exist_ok=True)
        save(picture(seed), img_root / f"{name}{suffix}")
        anomalous = "NG" in name
        if anomalous:
            save_l(region(seed).astype(np.uint8) * 255, img_root / f"{name}_mask.png")
        split[phase].append({"image_path": f"{name}{suffix}", "anomaly_class": "AK" if anomalous else "OK",
                             "mask_path": f"{name}_mask.png" if anomalous else None})
    json_dir = root / "realiad_jsons" / "realiad_jsons"
    json_dir.mkdir(parents=True, exist_ok=True)
    (json_dir / f"{category}.json").write_text(json.dumps(split if records is None else records))
    return root


@pytest.fixture
def transforms_():
    return dataset.get_data_transforms(SIZE, ISIZE)


def _equal_items(a, b) -> None:
    """Datasets ``a`` and ``b`` give equal items (tensors exactly; paths: the same file stem)."""
    assert len(a) == len(b)
    for i in range(len(a)):
        for u, v in zip(a[i], b[i]):
            if torch.is_tensor(u):
                assert torch.equal(u, v)
            elif isinstance(u, str):
                assert Path(u).stem == Path(v).stem
            else:
                assert u == v


# ----------------------------------------------------------------------------- 1. image modes

@pytest.mark.parametrize("encoding", list(IMAGE_ENCODINGS))
def test_high_depth_grey_reads_as_its_8bit_picture(tmp_path, transforms_, encoding):
    a = picture()
    suffix, save = IMAGE_ENCODINGS[encoding]
    path = tmp_path / f"x{suffix}"
    save(a, path)
    assert Image.open(path).mode == EXPECTED_FILE_MODE[encoding]
    rgb = dataset.load_rgb(path)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.repeat(a[..., None], 3, axis=2))
    assert torch.equal(transforms_[0](rgb), plain_image_transform(Image.fromarray(a), SIZE, ISIZE))


def test_pil_alone_clips_16bit(tmp_path):
    """Why load_rgb scales: PIL's convert('RGB') clips 16-bit values at 255."""
    path = tmp_path / "x.png"
    Image.fromarray(np.full((4, 4), 100 * 257, np.uint16)).save(path)
    assert np.asarray(Image.open(path).convert("RGB")).max() == 255
    assert np.asarray(dataset.load_rgb(path)).max() == 100


def test_wide_32bit_integers_use_the_top_byte(tmp_path):
    a = picture() // 2  # 0..127: v << 24 still fits a signed 32-bit int
    path = tmp_path / "x.tif"
    Image.fromarray(a.astype(np.int32) << 24).save(path)
    assert np.array_equal(np.asarray(dataset.load_rgb(path))[..., 0], a)


@pytest.mark.parametrize("mode", ["I;16L", "I;16N"])
def test_16bit_modes_without_a_file_format(mode):
    """Pillow writes no file in these modes; the conversion is the same as I;16's."""
    a = picture()
    raw = (a.astype(np.uint16) * 257).astype("<u2" if mode == "I;16L" else "=u2").tobytes()
    img = Image.frombytes(mode, (W, H), raw)
    assert img.mode == mode
    assert np.array_equal(np.asarray(dataset.images._to_rgb(img))[..., 1], a)
    assert np.array_equal(dataset.images._mask_to_8bit(dataset.images._mask_channel(img), mode), a)  # v*257 -> v


def _ordinary(a: np.ndarray) -> dict[str, tuple[str, Image.Image]]:
    """8-bit pictures in every mode a file holds: name (mode first) -> (suffix, image)."""
    rgb = Image.fromarray(np.stack([a, 255 - a, a // 3], axis=-1))
    la = Image.merge("LA", (Image.fromarray(a), Image.fromarray(255 - a)))
    pal = palette_image(a % 4, [(0, 0, 0), (255, 0, 0), (0, 200, 0), (10, 20, 255)])
    pa = Image.merge("PA", (pal, Image.fromarray(255 - a)))
    pa.putpalette(pal.getpalette())
    return {"1": (".png", Image.fromarray(a > 128)), "1 bmp": (".bmp", Image.fromarray(a > 128)),
            "L": (".png", Image.fromarray(a)), "LA": (".png", la), "P": (".png", pal), "PA": (".tif", pa),
            "RGB": (".png", rgb), "RGB bmp": (".bmp", rgb), "RGB jpg": (".jpg", rgb),
            "RGBA": (".png", Image.merge("RGBA", (*rgb.split(), Image.fromarray(a)))),
            "CMYK tif": (".tif", rgb.convert("CMYK")), "CMYK jpg": (".jpg", rgb.convert("CMYK")),
            "YCbCr tif": (".tif", rgb.convert("YCbCr")), "RGB webp": (".webp", rgb)}


@pytest.mark.parametrize("name", list(_ordinary(picture())))
def test_ordinary_modes_are_pils_convert_rgb(tmp_path, name):
    suffix, img = _ordinary(picture())[name]
    path = tmp_path / f"x{suffix}"
    img.save(path)
    reference = np.asarray(Image.open(path).convert("RGB"))
    assert Image.open(path).mode == name.split()[0]
    assert np.array_equal(np.asarray(dataset.load_rgb(path)), reference)


def test_palette_transparency_warns_in_pil_but_not_here(tmp_path):
    path = tmp_path / "p.png"
    palette_image(picture() % 4, [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]).save(
        path, transparency=bytes([0, 128, 255, 255]))
    with pytest.warns(UserWarning, match="Transparency"):
        reference = np.asarray(Image.open(path).convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = np.asarray(dataset.load_rgb(path))
        mask = np.asarray(dataset.load_mask(path))
    assert np.array_equal(rgb, reference)
    assert np.array_equal(mask, np.where(picture() % 4 > 0, 255, 0))  # three colours, one black: binary


@pytest.mark.parametrize("encoding", ["I;16 v*257 png", "I;16 v*256 png", "I;16B v*256 tif"])
@pytest.mark.parametrize("cache", [False, True])
def test_16bit_datasets_equal_8bit_ones(tmp_path, transforms_, encoding, cache):
    """The acceptance test: the same pictures as 8-bit L and as 16-bit give equal tensors in the
    test set, the training set and Real-IAD, with and without the image cache."""
    data_t, gt_t = transforms_
    grey, deep = make_class(tmp_path / "a" / "cls"), make_class(tmp_path / "b" / "cls", encoding)
    _equal_items(dataset.MVTecDataset(grey, data_t, gt_t, "test", cache_images=cache),
                 dataset.MVTecDataset(deep, data_t, gt_t, "test", cache_images=cache))
    _equal_items(dataset.MVTecDataset(grey, data_t, gt_t, "train", cache_images=cache),
                 dataset.MVTecDataset(deep, data_t, gt_t, "train", cache_images=cache))
    train_grey = dataset.mvtec_train_set(grey.parent, ["cls"], data_t, cache_images=cache)
    train_deep = dataset.mvtec_train_set(deep.parent, ["cls"], data_t, cache_images=cache)
    _equal_items(train_grey, train_deep)
    # and it is the picture itself, through the reference recipe
    assert torch.equal(train_deep[1][0], plain_image_transform(Image.fromarray(picture(1)), SIZE, ISIZE))
    r_grey = make_realiad(tmp_path / "ra")
    r_deep = make_realiad(tmp_path / "rb", encoding=encoding)
    for phase in ("train", "test"):
        _equal_items(dataset.RealIADDataset(r_grey, "usb", data_t, gt_t, phase, cache_images=cache),
                     dataset.RealIADDataset(r_deep, "usb", data_t, gt_t, phase, cache_images=cache))


def test_heatmap_view_reads_16bit_like_training(tmp_path):
    save_l(picture(), tmp_path / "a.png")
    IMAGE_ENCODINGS["I;16 v*257 png"][1](picture(), tmp_path / "b.png")
    view = heatmaps.load_view(tmp_path / "b.png", 64, 56, (56, 56))
    assert np.array_equal(view, heatmaps.load_view(tmp_path / "a.png", 64, 56, (56, 56)))
    assert view.std() > 10  # not the clipped all-white picture


# ----------------------------------------------------------------------------- 2. mask encodings

def _binary_masks(r: np.ndarray) -> dict[str, tuple[str, Image.Image]]:
    """The 0/255 mask ``r`` in other encodings that all mean the same region."""
    u8 = r.astype(np.uint8)
    red = np.stack([u8 * 255, u8 * 0, u8 * 0], axis=-1)
    green_rgba = np.stack([u8 * 0, u8 * 200, u8 * 0, (1 - u8) * 255], axis=-1)  # alpha is the complement
    return {
        "1 png": (".png", Image.fromarray(r)), "1 bmp": (".bmp", Image.fromarray(r)),
        "L 0/1": (".png", Image.fromarray(u8)), "L 0/7": (".png", Image.fromarray(u8 * 7)),
        "L tif": (".tif", Image.fromarray(u8 * 255)),
        "LA": (".png", Image.merge("LA", (Image.fromarray(u8 * 255), Image.fromarray(picture())))),
        "P": (".png", palette_image(u8, [(0, 0, 0), (128, 0, 255)])),
        "RGB red": (".png", Image.fromarray(red)), "RGBA alpha ignored": (".png", Image.fromarray(green_rgba)),
        "CMYK": (".tif", Image.fromarray(red).convert("CMYK")),
        "I;16 0/65535": (".png", Image.fromarray(u8.astype(np.uint16) * 65535)),
        "I;16 0/1": (".png", Image.fromarray(u8.astype(np.uint16))),
        "I;16B 0/40000": (".tif", Image.fromarray((u8.astype(np.uint16) * 40000).astype(">u2"))),
        "I 0/65535": (".tif", Image.fromarray(u8.astype(np.int32) * 65535)),
        "I 0/1": (".tif", Image.fromarray(u8.astype(np.int32))),
        "F 0/1": (".tif", Image.fromarray(u8.astype(np.float32))),
        "F 0/255": (".tif", Image.fromarray(u8.astype(np.float32) * 255)),
    }


@pytest.mark.parametrize("name", list(_binary_masks(region())))
def test_binary_mask_encodings_give_the_0_255_gt(tmp_path, transforms_, name):
    gt_t = transforms_[1]
    r = region()
    reference = gt_t(Image.fromarray(r.astype(np.uint8) * 255))
    suffix, img = _binary_masks(r)[name]
    path = tmp_path / f"m{suffix}"
    img.save(path)
    mask = dataset.load_mask(path)
    assert mask.mode == "L" and mask.size == (W, H)
    assert np.array_equal(np.asarray(mask), r.astype(np.uint8) * 255)
    gt = gt_t(mask)
    assert gt.shape == (1, ISIZE, ISIZE) and torch.equal(gt, reference)


def test_binary_mask_in_a_dataset(tmp_path, transforms_):
    """A 0/1 mask (named X.tif) gives the gt of the 0/255 one, also at --gt_threshold 0.5."""
    root = make_class(tmp_path / "cls")
    reference = dataset.MVTecDataset(root, *transforms_, "test")[0][1]
    (root / "ground_truth" / "crack" / "000_mask.png").unlink()
    Image.fromarray(region(0).astype(np.uint8)).save(root / "ground_truth" / "crack" / "000.tif")
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    assert ds.gt_paths[0].endswith("000.tif") and ds.notes == []
    gt = ds[0][1]
    assert torch.equal(gt, reference) and torch.equal(gt > 0.5, reference > 0.5) and (gt > 0.5).any()
    # read as it was before (no scaling), the 0/1 mask vanishes at 0.5
    assert not (plain_mask_transform(Image.fromarray(region(0).astype(np.uint8)), SIZE, ISIZE) > 0.5).any()


def test_antialiased_grey_mask_is_unchanged(tmp_path, transforms_):
    soft = np.asarray(Image.fromarray(region().astype(np.uint8) * 255).resize((W // 4, H // 4), Image.BILINEAR)
                      .resize((W, H), Image.BILINEAR))
    assert len(np.unique(soft)) > 10
    save_l(soft, tmp_path / "m.png")
    gt = transforms_[1](dataset.load_mask(tmp_path / "m.png"))
    assert torch.equal(gt, plain_mask_transform(Image.open(tmp_path / "m.png"), SIZE, ISIZE))


def _ceil255(v: np.ndarray, top: int) -> np.ndarray:
    return (v.astype(np.int64) * 255 + top - 1) // top


def test_16bit_grey_mask_scales_and_stays_positive(tmp_path, transforms_):
    soft = picture()
    v = soft.astype(np.uint16) * 257
    v[0, 0], v[0, 1] = 1, 40000  # tiny positive; above 32767 (was negative as int16)
    Image.fromarray(v).save(tmp_path / "m.png")
    mask = np.asarray(dataset.load_mask(tmp_path / "m.png"))
    assert np.array_equal(mask, _ceil255(v, 65535))
    assert mask[0, 0] == 1 and mask[0, 1] == 156
    assert np.array_equal(mask[1:], soft[1:])  # v*257 -> v
    # high values are anomalous after the transform
    high = np.where(region(), 50000, 0).astype(np.uint16)
    high[0, 0] = 3  # not binary
    Image.fromarray(high).save(tmp_path / "h.png")
    gt = transforms_[1](dataset.load_mask(tmp_path / "h.png"))
    expected = plain_mask_transform(Image.fromarray(_ceil255(high, 65535).astype(np.uint8)), SIZE, ISIZE)
    assert torch.equal(gt, expected) and gt.min() >= 0 and gt.max() == pytest.approx(195 / 255)


def test_wide_int_and_float_masks(tmp_path):
    v = np.zeros((H, W), np.int32)
    v[region()] = 2**31 - 1
    v[0, 0] = 70000
    Image.fromarray(v).save(tmp_path / "i.tif")
    assert np.array_equal(np.asarray(dataset.load_mask(tmp_path / "i.tif")), _ceil255(v, 2**32 - 1))
    assert np.asarray(dataset.load_mask(tmp_path / "i.tif"))[0, 0] == 1
    soft = picture()
    Image.fromarray((soft / 255).astype(np.float32)).save(tmp_path / "f1.tif")
    assert np.array_equal(np.asarray(dataset.load_mask(tmp_path / "f1.tif")), soft)
    f = np.array([[0.0, 0.2, 10.3, 300.0, -4.0, 255.0]], np.float32)
    Image.fromarray(f).save(tmp_path / "f2.tif")
    assert np.asarray(dataset.load_mask(tmp_path / "f2.tif")).tolist() == [[0, 1, 11, 255, 0, 255]]


@pytest.mark.parametrize("make", [
    lambda: Image.new("L", (W, H)), lambda: Image.fromarray(np.zeros((H, W), np.uint16)),
    lambda: Image.new("F", (W, H)), lambda: Image.new("RGB", (W, H)), lambda: Image.new("1", (W, H))])
def test_all_zero_masks_stay_zero(tmp_path, transforms_, make):
    path = tmp_path / "m.tif"
    make().save(path)
    gt = transforms_[1](dataset.load_mask(path))
    assert gt.shape == (1, ISIZE, ISIZE) and torch.count_nonzero(gt) == 0


def test_unsupported_mode_is_rejected_up_front(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("LAB", (W, H), (50, 10, 10)).save(path)
    assert Image.open(path).mode == "LAB"
    message = f"cannot read image {path}: image mode LAB is not supported"
    with pytest.raises(DatasetError, match=message):
        dataset.check_images([path])
    with pytest.raises(DatasetError, match=message):
        dataset.load_rgb(path)
    with pytest.raises(DatasetError, match=f"cannot read mask {path}: image mode LAB"):
        dataset.load_mask(path)


# ----------------------------------------------------------------------------- 3. mask pairing

def _pairing_class(root: Path, images: list[str], masks: list[str]) -> Path:
    """A class folder whose ``test/crack`` holds ``images`` and ``ground_truth/crack`` ``masks``,
    each mask a different region (mask k: region(k))."""
    make_class(root, n_bad=0)
    (root / "test" / "crack").mkdir(exist_ok=True)
    for i, name in enumerate(images):
        save_l(picture(30 + i), root / "test" / "crack" / name)
    for k, name in enumerate(masks):
        save_l(region(k).astype(np.uint8) * 255, root / "ground_truth" / "crack" / name)
    return root


def _pairs(ds) -> dict[str, str]:
    return {Path(i).name: Path(m).name for i, m in zip(ds.img_paths, ds.gt_paths) if m is not None}


def test_pairs_by_name_before_order(tmp_path, transforms_):
    root = _pairing_class(tmp_path / "cls", ["b.png", "a.png"], ["a_mask.png", "b.png"])
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    assert _pairs(ds) == {"a.png": "a_mask.png", "b.png": "b.png"} and ds.notes == []
    # names where the sorted lists disagree: sorted order would swap them
    root = _pairing_class(tmp_path / "cls2", ["a.png", "a0.png"], ["a_mask.png", "a0.png"])
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    assert sorted(os.listdir(root / "ground_truth" / "crack")) == ["a0.png", "a_mask.png"]
    assert _pairs(ds) == {"a.png": "a_mask.png", "a0.png": "a0.png"} and ds.notes == []
    a = ds.img_paths.index(str(root / "test" / "crack" / "a.png"))
    assert torch.equal(ds[a][1], transforms_[1](Image.fromarray(region(0).astype(np.uint8) * 255)))


def test_name_pairing_prefers_png_and_notes_extra_masks(tmp_path, transforms_):
    root = _pairing_class(tmp_path / "cls", ["a.jpg", "b.JPG"], ["a.bmp", "a_mask.png", "b.tif", "c_mask.png"])
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    assert _pairs(ds) == {"a.jpg": "a_mask.png", "b.JPG": "b.tif"}
    assert ds.notes == [f"ground_truth/crack of {root}: 2 masks without a test image ignored (a.bmp, c_mask.png)"]


def test_sorted_order_fallback_is_noted(tmp_path, transforms_):
    root = _pairing_class(tmp_path / "cls", ["000.png", "001.png"], ["x.png", "y.png"])
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    assert _pairs(ds) == {"000.png": "x.png", "001.png": "y.png"}
    assert ds.notes == [f"ground_truth/crack of {root}: masks paired with images by sorted order "
                        "(no X_mask.png or X.png for 000.png, 001.png)"]
    # a partial name match that agrees with the order is fine
    root = _pairing_class(tmp_path / "cls2", ["a.png", "b.png", "c.png", "d.png", "e.png"],
                          ["a_mask.png", "p.png", "q.png", "r.png", "s.png"])
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    assert _pairs(ds)["a.png"] == "a_mask.png" and _pairs(ds)["e.png"] == "s.png"
    assert ds.notes[0].endswith("(no X_mask.png or X.png for b.png, c.png, d.png, … (4 in all))")


def test_sorted_order_contradicting_a_name_is_an_error(tmp_path, transforms_):
    root = _pairing_class(tmp_path / "cls", ["a.png", "b.png"], ["b_mask.png", "z.png"])
    crack = root / "ground_truth" / "crack"
    with pytest.raises(DatasetError) as err:
        dataset.MVTecDataset(root, *transforms_, "test")
    assert str(err.value).startswith(f"test image {root / 'test' / 'crack' / 'b.png'} has the mask "
                                     f"{crack / 'b_mask.png'} by name but {crack / 'z.png'} by sorted order")


def test_image_without_a_mask_is_named(tmp_path, transforms_):
    root = _pairing_class(tmp_path / "cls", ["000.png", "001.png", "002.png"], ["000_mask.png", "001_mask.png"])
    with pytest.raises(DatasetError, match=r"3 images but 2 masks .*; no X_mask.png or X.png for 002.png —"):
        dataset.MVTecDataset(root, *transforms_, "test")


def test_two_images_for_one_mask_is_an_error(tmp_path, transforms_):
    root = _pairing_class(tmp_path / "cls", ["a.png", "a.jpg"], ["a_mask.png"])
    with pytest.raises(DatasetError, match=r"images .*a.jpg and .*a.png both pair by name with mask .*a_mask.png"):
        dataset.MVTecDataset(root, *transforms_, "test")


def test_mvtec_names_pair_as_sorted_order(tmp_path, transforms_):
    """On MVTec AD (000.png <-> 000_mask.png) name and order agree: the reference's pairs, no note."""
    root = make_class(tmp_path / "cls", n_bad=12)
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    crack = [(i, m) for i, m in zip(ds.img_paths, ds.gt_paths) if m is not None]
    images = sorted(str(p) for p in (root / "test" / "crack").iterdir())
    masks = sorted(str(p) for p in (root / "ground_truth" / "crack").iterdir())
    assert crack == list(zip(images, masks)) and ds.notes == []


def test_realiad_has_empty_notes(tmp_path, transforms_):
    assert dataset.RealIADDataset(make_realiad(tmp_path), "usb", *transforms_, "test").notes == []


# ----------------------------------------------------------------------------- 4. extensions, hidden files

def test_every_image_extension_is_read(tmp_path, transforms_):
    root = make_class(tmp_path / "cls", n_good=0, n_bad=0)
    a = picture(5)
    good = root / "test" / "good"
    lossless = {"a.png": {}, "b.PNG": {}, "c.bmp": {}, "d.tif": {}, "e.tiff": {}, "f.webp": {"lossless": True},
                "g.ppm": {}, "h.pgm": {}}
    for name, options in lossless.items():
        Image.fromarray(a).save(good / name, **options)
    for name in ("i.jpeg", "j.JPG", "k.jpg"):
        Image.fromarray(a).save(good / name, format="JPEG")
    (good / "notes.txt").write_text("not an image")
    for name in ("000.tiff", "001.JPEG"):  # anomalous ones pair with their masks by name
        Image.fromarray(a).save(root / "test" / "crack" / name)
        save_l(region().astype(np.uint8) * 255, root / "ground_truth" / "crack" / f"{name[:3]}_mask.png")
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    assert [Path(p).name for p in ds.img_paths] == ["000.tiff", "001.JPEG", "a.png", "b.PNG", "c.bmp", "d.tif",
                                                   "e.tiff", "f.webp", "g.ppm", "h.pgm", "i.jpeg", "j.JPG", "k.jpg"]
    assert ds.labels == [1, 1] + [0] * 11 and ds.notes == []
    expected = plain_image_transform(Image.fromarray(a), SIZE, ISIZE)
    for i, path in enumerate(ds.img_paths):
        if Path(path).name in lossless:
            assert torch.equal(ds[i][0], expected), path
    # the train phase lists train/good with the same rule
    Image.fromarray(a).save(root / "train" / "good" / "z.TIFF")
    train = dataset.MVTecDataset(root, *transforms_, "train")
    assert [Path(p).name for p in train.img_paths] == ["000.png", "001.png", "z.TIFF"]
    samples = dataset.mvtec_train_set(root.parent, ["cls"], transforms_[0]).datasets[0].samples
    assert [Path(p).name for p, _ in samples] == ["000.png", "001.png", "z.TIFF"]


def _litter(root: Path) -> None:
    """What macOS, Jupyter and Finder leave in a dataset: hidden files and folders."""
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack", "."):
        (root / folder / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a PNG")
        (root / folder / ".DS_Store").write_bytes(b"Bud1")
    for folder in ("train", "train/good", "test", "test/crack", "ground_truth", "ground_truth/crack"):
        hidden = root / folder / ".ipynb_checkpoints"
        hidden.mkdir()
        save_l(picture(99), hidden / "000-checkpoint.png")
    (root.parent / ".hidden_class" / "train" / "good").mkdir(parents=True)


def test_hidden_files_and_folders_are_skipped(tmp_path, transforms_):
    clean = make_class(tmp_path / "clean" / "cls")
    messy = make_class(tmp_path / "messy" / "cls")
    _litter(messy)
    for phase in ("test", "train"):
        a = dataset.MVTecDataset(clean, *transforms_, phase)
        b = dataset.MVTecDataset(messy, *transforms_, phase)
        assert [os.path.relpath(p, messy) for p in b.img_paths] == [os.path.relpath(p, clean) for p in a.img_paths]
        assert b.labels == a.labels and b.types == a.types and b.notes == []
        _equal_items(a, b)
    train_a = dataset.mvtec_train_set(clean.parent, ["cls"], transforms_[0])
    train_b = dataset.mvtec_train_set(messy.parent, ["cls"], transforms_[0])
    assert [os.path.relpath(p, messy) for p, _ in train_b.datasets[0].samples] == ["train/good/000.png",
                                                                                  "train/good/001.png"]
    _equal_items(train_a, train_b)
    assert dataset.discover_classes(messy.parent) == ["cls"]
    dataset.check_images(dataset.image_paths(dataset.MVTecDataset(messy, *transforms_, "test")))


# ----------------------------------------------------------------------------- 5. mask sizes

def _transpose_mask(root: Path, name: str = "001_mask.png") -> Path:
    path = root / "ground_truth" / "crack" / name
    Image.fromarray(np.asarray(Image.open(path)).T.copy()).save(path)
    return path


def test_transposed_mask_is_an_error_before_and_during_loading(tmp_path, transforms_):
    root = make_class(tmp_path / "cls")
    dataset.check_mask_sizes(dataset.MVTecDataset(root, *transforms_, "test"))  # clean: passes
    mask = _transpose_mask(root)
    image = root / "test" / "crack" / "001.png"
    expected = (f"mask {mask} is 48×64 (W×H) but its image {image} is 64×48 — each mask must have its "
                "image's size (a transposed or resized mask?): fix or replace the mask")
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    with pytest.raises(DatasetError) as err:
        dataset.check_mask_sizes(ConcatDataset([dataset.mvtec_train_set(root.parent, ["cls"], transforms_[0]), ds]))
    assert str(err.value) == expected
    with pytest.raises(DatasetError) as err:
        ds[1]
    assert str(err.value) == expected
    ds[0]  # the other mask still loads
    cached = dataset.MVTecDataset(root, *transforms_, "test", cache_images=True)
    with pytest.raises(DatasetError, match="is 48×64 .W×H. but its image"):
        cached[1]
    _transpose_mask(root, "000_mask.png")
    with pytest.raises(DatasetError, match=r"000_mask.png is 48×64 .* \(and 1 more mismatched masks\)"):
        dataset.check_mask_sizes(ds)


def test_realiad_mask_size_is_checked(tmp_path, transforms_):
    root = make_realiad(tmp_path)
    mask = root / "realiad_1024" / "usb" / "NG" / "AK" / "S0004" / "d_mask.png"
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(mask)
    test = dataset.RealIADDataset(root, "usb", *transforms_, "test")
    train = dataset.RealIADDataset(root, "usb", *transforms_, "train")
    image = mask.parent / "d.png"
    with pytest.raises(DatasetError, match=f"mask {mask} is 64×49 .W×H. but its image {image} is 64×48"):
        dataset.check_mask_sizes(ConcatDataset([train, test]))
    with pytest.raises(TypeError, match="list"):
        dataset.check_mask_sizes([test])


# ----------------------------------------------------------------------------- 6. Real-IAD records

GOOD_NG = {"image_path": "NG/AK/S0004/d.png", "anomaly_class": "AK", "mask_path": "NG/AK/S0004/d_mask.png"}


@pytest.mark.parametrize("record,says", [
    ({"anomaly_class": "AK", "mask_path": "NG/AK/S0004/d_mask.png"}, "has no 'image_path' field"),
    ({"image_path": "NG/AK/S0004/d.png", "mask_path": "NG/AK/S0004/d_mask.png"},
     "(image_path 'NG/AK/S0004/d.png') has no 'anomaly_class' field"),
    ({"image_path": "NG/AK/S0004/d.png", "anomaly_class": "AK"},
     "(image_path 'NG/AK/S0004/d.png') is anomalous ('AK') but has no 'mask_path'"),
    ({**GOOD_NG, "mask_path": None}, "is anomalous ('AK') but has no 'mask_path'"),
    ({**GOOD_NG, "anomaly_class": 3}, "(image_path 'NG/AK/S0004/d.png') has 'anomaly_class' of type int, not a string"),
    ({**GOOD_NG, "image_path": ["x"]}, "has 'image_path' of type list, not a string"),
    ({**GOOD_NG, "mask_path": 7}, "has 'mask_path' of type int, not a string"),
    ({**GOOD_NG, "image_path": ""}, "has an empty 'image_path' field"),
    ("NG/AK/S0004/d.png", "is a str, not an object"),
])
def test_realiad_bad_record_is_named(tmp_path, transforms_, record, says):
    ok = {"image_path": "OK/S0003/c.png", "anomaly_class": "OK"}  # no mask_path: fine for OK
    records = {"train": [], "test": [ok, {**ok, "mask_path": None}, ok, record]}
    root = make_realiad(tmp_path, records=records)
    json_path = root / "realiad_jsons" / "realiad_jsons" / "usb.json"
    with pytest.raises(DatasetError) as err:
        dataset.RealIADDataset(root, "usb", *transforms_, "test")
    assert str(err.value).startswith(f"Real-IAD split file {json_path}: record 3 of 'test'")
    assert says in str(err.value) and str(err.value).endswith(" — fix or re-extract the split file")


def test_realiad_ok_records_need_no_mask_path(tmp_path, transforms_):
    ok = {"image_path": "OK/S0003/c.png", "anomaly_class": "OK"}
    root = make_realiad(tmp_path, records={"train": [ok], "test": [ok, {**ok, "mask_path": None}, GOOD_NG]})
    ds = dataset.RealIADDataset(root, "usb", *transforms_, "test")
    assert ds.labels == [0, 0, 1] and ds.gt_paths[:2] == [None, None]
    assert ds[2][1].max() == 1
    root = make_realiad(tmp_path / "b", records={"train": {"a": 1}, "test": []})
    with pytest.raises(DatasetError, match="has no readable 'train' list .*'train' is a dict, not a list"):
        dataset.RealIADDataset(root, "usb", *transforms_, "train")


# ----------------------------------------------------------------------------- 7. errors in workers

def _first_error(ds, num_workers: int) -> str:
    """The message of the DatasetError that iterating ``ds`` raises."""
    message = None
    try:
        for _ in DataLoader(ds, batch_size=1, num_workers=num_workers):
            pass
    except DatasetError as err:
        message = str(err)
        # torch's reraise() frame holds the exception, which holds that frame: dropping the traceback
        # frees the loader's iterator now (a gc-run __del__ waits 5 s per worker to stop it)
        err.__traceback__ = None
    assert message is not None, "no DatasetError raised"
    return message


@pytest.mark.parametrize("fault", ["corrupt image", "transposed mask"])
def test_worker_errors_keep_their_message(tmp_path, transforms_, fault):
    root = make_class(tmp_path / "cls")
    if fault == "corrupt image":
        bad = root / "test" / "crack" / "000.png"
        bad.write_bytes(bad.read_bytes()[:200])
        start = f"cannot read image {bad}: "
    else:
        start = f"mask {_transpose_mask(root, '000_mask.png')} is 48×64 (W×H) but its image"
    ds = dataset.MVTecDataset(root, *transforms_, "test")
    message = _first_error(ds, 0)
    assert message.startswith(start) and "\n" not in message
    for workers in (1, 2):
        assert _first_error(ds, workers) == message


def test_datasets_error_text_is_kept_outside_workers():
    text = "cannot read image /x/DatasetError: y.png: broken — replace or remove this file"
    assert str(DatasetError(text)) == text
    wrapped = ("Caught DatasetError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
               '  File "/x/dataset.py", line 1, in f\n    raise DatasetError(msg)\n'
               f"dataset.DatasetError: {text}\n")
    assert str(DatasetError(wrapped)) == text
