"""Tiny synthetic datasets in the real on-disk layouts, for tests.

Every builder writes into ``root`` (created if missing), is deterministic given
``seed``, takes well under a second at the default 64 px, and returns the
dataset root as a ``Path`` (the folder to pass as ``--data_path`` / ``root``):

- ``make_mvtec(root, ...)``      MVTec AD layout (also the prepared-VisA layout)::

      <root>/<class>/train/good/000.png
      <root>/<class>/test/good/000.png
      <root>/<class>/test/<defect>/000.png
      <root>/<class>/ground_truth/<defect>/000_mask.png   (mode L, 0/255)

- ``make_visa_raw(root, ...)``   the VisA archive as downloaded::

      <root>/<object>/Data/Images/Normal/0000.JPG
      <root>/<object>/Data/Images/Anomaly/000.JPG
      <root>/<object>/Data/Masks/Anomaly/000.png          (mode L, 0 / small labels)
      <root>/split_csv/{1cls,2cls_highshot,2cls_fewshot}.csv

- ``make_realiad(root, ...)``    Real-IAD layout::

      <root>/realiad_1024/<cat>/OK/S0001/<cat>_0001_OK_C1.jpg
      <root>/realiad_1024/<cat>/NG/AK/S0101/<cat>_0101_NG_AK_C1.{jpg,png}
      <root>/realiad_jsons/realiad_jsons/<cat>.json      ({"meta", "train", "test"})

Images are RGB random textures (smooth noise plus grain, one base colour per
class); anomalous images carry a bright/dark elliptical blob exactly where the
mask is non-zero, so a model can in principle find it.
"""
from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_mvtec", "make_visa_raw", "make_realiad", "texture", "blob_mask", "ellipse_masks"]


def _rng(seed: int, *names: object) -> np.random.Generator:
    """A generator that depends on the seed and the names (class, split, index)."""
    key = zlib.crc32("/".join(str(n) for n in names).encode())
    return np.random.default_rng([seed, key])


def texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray) -> np.ndarray:
    """Random RGB texture, uint8 ``height × width × 3``: smooth noise + fine grain around ``base``."""
    coarse = rng.normal(0.0, 40.0, size=(8, 8, 3)).astype(np.float32)
    smooth = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c], mode="F").resize((width, height), Image.BICUBIC))
         for c in range(3)], axis=-1)
    grain = rng.normal(0.0, 12.0, size=(height, width, 3))
    return np.clip(base + smooth + grain, 0, 255).astype(np.uint8)


def blob_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Boolean ``height × width`` ellipse, 1/8 to 1/4 of the side, fully inside the image."""
    ry = rng.uniform(height / 8, height / 4)
    rx = rng.uniform(width / 8, width / 4)
    cy = rng.uniform(ry, height - ry)
    cx = rng.uniform(rx, width - rx)
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def ellipse_masks(rng: np.random.Generator, n: int, h: int, w: int, divisor: float = 4) -> np.ndarray:
    """``n × h × w`` bool masks: image 0 empty, image ``i`` with ``1 + i % 3`` ellipses of
    radii up to ``1 + side / divisor`` (the draws in this order: centre, then radii)."""
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(1, n):
        for _ in range(1 + i % 3):
            cy, cx = rng.random(2) * [h, w]
            ry, rx = 1 + rng.random(2) * [h / divisor, w / divisor]
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def _defective(rng: np.random.Generator, img: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Paint the region brighter or darker than the texture (the synthetic defect)."""
    out = img.astype(np.int16)
    shift = 90 if rng.random() < 0.5 else -90
    out[region] += shift
    return np.clip(out, 0, 255).astype(np.uint8)


def _base_colour(seed: int, name: str) -> np.ndarray:
    return _rng(seed, "base", name).uniform(70, 185, size=3)


def make_mvtec(root: str | Path, classes: tuple[str, ...] = ("aaa", "bbb"), n_train: int = 4,
               n_good: int = 2, defects: dict[str, int] | None = None, size: int = 64,
               seed: int = 0) -> Path:
    """MVTec-AD-layout dataset with ``classes``; returns ``root``.

    Args:
        n_train: training images per class (``train/good``).
        n_good: normal test images per class (``test/good``).
        defects: defect folder name -> number of anomalous test images (default ``{'crack': 2}``);
            each gets ``ground_truth/<defect>/NNN_mask.png`` (mode L, values 0 and 255).
        size: image side in pixels (square, as MVTec).
    """
    root = Path(root)
    defects = {"crack": 2} if defects is None else defects
    for cls in classes:
        base = _base_colour(seed, cls)
        for split, folder, n in (("train", "good", n_train), ("test", "good", n_good)):
            out = root / cls / split / folder
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = texture(_rng(seed, cls, split, folder, i), size, size, base)
                Image.fromarray(img).save(out / f"{i:03d}.png")
        for defect, n in defects.items():
            img_dir = root / cls / "test" / defect
            gt_dir = root / cls / "ground_truth" / defect
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = _rng(seed, cls, "test", defect, i)
                region = blob_mask(rng, size, size)
                img = _defective(rng, texture(rng, size, size, base), region)
                Image.fromarray(img).save(img_dir / f"{i:03d}.png")
                Image.fromarray(region.astype(np.uint8) * 255, mode="L").save(gt_dir / f"{i:03d}_mask.png")
    return root


# The VisA archive's split CSV header (prepare_visa.py reads these columns).
VISA_CSV_HEADER = ["object", "split", "label", "image", "mask"]


def make_visa_raw(root: str | Path, objects: tuple[str, ...] = ("candle", "pcb1"), n_normal: int = 6,
                  n_anomaly: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Raw VisA tree (as downloaded) with the three split CSVs; returns ``root``.

    Images are ``size`` high and ``3*size//2`` wide JPEGs (VisA's are not square).
    Masks hold small non-zero labels, as VisA's do: mask ``k`` uses the value ``k + 1``
    for its blob, and odd ``k`` add a second blob labelled 200 — prepare_visa must turn
    every non-zero value into 255.

    Splits (per object; normal image ``j`` is ``Normal/{j:04d}.JPG``, anomaly ``k`` is
    ``Anomaly/{k:03d}.JPG``):
        normal:          the last ``max(1, n_normal // 3)`` go to test, the rest to train (all CSVs);
        1cls:            every anomaly in test;
        2cls_highshot:   the first half (``n_anomaly // 2``) of the anomalies in train, the rest in test;
        2cls_fewshot:    the first anomaly in train, the rest in test.
    """
    root = Path(root)
    height, width = size, 3 * size // 2
    n_test_normal = max(1, n_normal // 3)
    rows: dict[str, list[list[str]]] = {"1cls": [], "2cls_highshot": [], "2cls_fewshot": []}
    for obj in objects:
        base = _base_colour(seed, obj)
        normal_dir = root / obj / "Data" / "Images" / "Normal"
        anomaly_dir = root / obj / "Data" / "Images" / "Anomaly"
        mask_dir = root / obj / "Data" / "Masks" / "Anomaly"
        for d in (normal_dir, anomaly_dir, mask_dir):
            d.mkdir(parents=True, exist_ok=True)
        for j in range(n_normal):
            img = texture(_rng(seed, obj, "normal", j), height, width, base)
            Image.fromarray(img).save(normal_dir / f"{j:04d}.JPG", format="JPEG", quality=95)
            split = "test" if j >= n_normal - n_test_normal else "train"
            rel = f"{obj}/Data/Images/Normal/{j:04d}.JPG"
            for table in rows.values():
                table.append([obj, split, "normal", rel, ""])
        for k in range(n_anomaly):
            rng = _rng(seed, obj, "anomaly", k)
            region = blob_mask(rng, height, width)
            labels = region.astype(np.uint8) * (k + 1)
            if k % 2 == 1:
                second = blob_mask(rng, height, width) & ~region
                labels[second] = 200
            img = _defective(rng, texture(rng, height, width, base), labels > 0)
            Image.fromarray(img).save(anomaly_dir / f"{k:03d}.JPG", format="JPEG", quality=95)
            Image.fromarray(labels, mode="L").save(mask_dir / f"{k:03d}.png")
            rel_img = f"{obj}/Data/Images/Anomaly/{k:03d}.JPG"
            rel_mask = f"{obj}/Data/Masks/Anomaly/{k:03d}.png"
            train_cut = {"1cls": 0, "2cls_highshot": n_anomaly // 2, "2cls_fewshot": 1}
            for split_type, table in rows.items():
                split = "train" if k < train_cut[split_type] else "test"
                table.append([obj, split, "anomaly", rel_img, rel_mask])
    csv_dir = root / "split_csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    for split_type, table in rows.items():
        with open(csv_dir / f"{split_type}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(VISA_CSV_HEADER)
            writer.writerows(table)
    return root


def make_realiad(root: str | Path, categories: tuple[str, ...] = ("audiojack", "usb"), n_train: int = 4,
                 n_test_ok: int = 2, n_test_ng: int = 2, size: int = 64, seed: int = 0) -> Path:
    """Real-IAD-layout dataset; returns ``root``.

    Per category: ``n_train`` OK images in the json's ``train`` list, then ``n_test_ok`` OK
    and ``n_test_ng`` NG images (anomaly class ``'AK'``, mask mode L 0/255) in ``test``,
    OK records first. Records are ``{category, anomaly_class, image_path, mask_path}``
    with paths relative to ``realiad_1024/<cat>/`` and ``mask_path`` None for OK.
    Images are ``size`` high, ``5*size//4`` wide JPEGs.
    """
    root = Path(root)
    height, width = size, 5 * size // 4
    json_dir = root / "realiad_jsons" / "realiad_jsons"
    json_dir.mkdir(parents=True, exist_ok=True)
    for cat in categories:
        base = _base_colour(seed, cat)
        cat_dir = root / "realiad_1024" / cat
        records: dict[str, list[dict]] = {"train": [], "test": []}
        sample = 1
        for split, n in (("train", n_train), ("test", n_test_ok)):
            for _ in range(n):
                rel = f"OK/S{sample:04d}/{cat}_{sample:04d}_OK_C1.jpg"
                (cat_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                img = texture(_rng(seed, cat, "OK", sample), height, width, base)
                Image.fromarray(img).save(cat_dir / rel, format="JPEG", quality=95)
                records[split].append({"category": "OK", "anomaly_class": "OK",
                                       "image_path": rel, "mask_path": None})
                sample += 1
        for _ in range(n_test_ng):
            stem = f"NG/AK/S{sample:04d}/{cat}_{sample:04d}_NG_AK_C1"
            (cat_dir / stem).parent.mkdir(parents=True, exist_ok=True)
            rng = _rng(seed, cat, "NG", sample)
            region = blob_mask(rng, height, width)
            img = _defective(rng, texture(rng, height, width, base), region)
            Image.fromarray(img).save(cat_dir / f"{stem}.jpg", format="JPEG", quality=95)
            Image.fromarray(region.astype(np.uint8) * 255, mode="L").save(cat_dir / f"{stem}.png")
            records["test"].append({"category": "AK", "anomaly_class": "AK",
                                    "image_path": f"{stem}.jpg", "mask_path": f"{stem}.png"})
            sample += 1
        meta = {"prefix": "", "normal_class": "OK"}
        with open(json_dir / f"{cat}.json", "w") as f:
            json.dump({"meta": meta, **records}, f, indent=1)
    return root
