"""Convert the VisA archive into the MVTec AD layout that ``dataset.MVTecDataset`` reads.

    python prepare_data/prepare_visa.py --split-type 1cls --data-folder ../VisA --save-folder ../VisA_pytorch

Reads the split CSV (header ``object,split,label,image,mask``, paths relative to
``--data-folder``; by default ``<data-folder>/split_csv/<split-type>.csv``, which the
VisA archive ships) and writes, under ``<save-folder>/<split-type>/<object>/``:

- ``<split>/good/`` (label ``normal``) and ``<split>/bad/`` (any other label): the images, copied;
- 1cls: ``ground_truth/bad/<mask name>.png`` for each test/bad row;
  2cls_highshot, 2cls_fewshot: ``ground_truth/<split>/bad/<mask name>.png`` for each bad row;
  masks binarised as the reference does (every non-zero pixel set to 255).

Safe to re-run: every row is checked before anything is written, files are written
atomically (temporary file + rename), outputs identical to what is there are left
alone, and a different existing file is an error unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from engine.fileio import atomic_write_bytes  # noqa: E402
from prepare_data.common import PrepareError, run_preparation  # noqa: E402

SPLIT_TYPES = ("1cls", "2cls_highshot", "2cls_fewshot")
CSV_HEADER = ["object", "split", "label", "image", "mask"]
SPLITS = ("train", "test")



def binarize_mask(src: Path) -> bytes:
    """PNG bytes of the mask with every non-zero value set to 255 (the reference's rule).

    As in the reference, the array keeps the mask's dtype and channels (mode L stays L).
    """
    try:
        with Image.open(src) as mask:
            array = np.array(mask)
    except OSError as e:
        raise PrepareError(f"cannot read mask {src}: {e} — re-extract it from the VisA archive") from e
    array[array != 0] = 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _source_bytes(src: Path, is_mask: bool) -> bytes:
    """What goes to the destination: the binarised mask, or the image's bytes unchanged."""
    if is_mask:
        return binarize_mask(src)
    try:
        return src.read_bytes()
    except OSError as e:
        raise PrepareError(f"cannot read {src}: {e}") from e


def _same_content(dst: Path, data: bytes, is_mask: bool) -> bool:
    """True if ``dst`` already holds ``data`` (for masks: the same pixels, whatever the PNG encoder)."""
    old = dst.read_bytes()
    if old == data:
        return True
    if not is_mask:
        return False
    try:
        with Image.open(dst) as a, Image.open(io.BytesIO(data)) as b:
            return a.mode == b.mode and np.array_equal(np.array(a), np.array(b))
    except OSError:
        return False


def read_split(split_file: Path, data_folder: Path, split_type: str) -> list[tuple[Path, Path, bool]]:
    """Plan the conversion: ``(source, destination, is_mask)`` for every file, all checked to exist.

    Destinations are relative to ``<save-folder>/<split-type>``.
    """
    if not split_file.is_file():
        raise PrepareError(f"split file not found: {split_file} — the VisA archive ships it as "
                           f"split_csv/{split_type}.csv; pass its path with --split-file")
    with open(split_file, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0][:5]] != CSV_HEADER:
        raise PrepareError(f"{split_file}: the first line must be the header {','.join(CSV_HEADER)}")
    plan: list[tuple[Path, Path, bool]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 5:
            raise PrepareError(f"{split_file}, line {line}: expected 5 columns ({','.join(CSV_HEADER)}), got {row}")
        obj, split, label, image, mask = (c.strip() for c in row[:5])
        if split not in SPLITS:
            raise PrepareError(f"{split_file}, line {line}: split must be train or test, got {split!r}")
        label = "good" if label == "normal" else "bad"
        plan.append((data_folder / image, Path(obj, split, label, Path(image).name), False))
        # 1cls keeps test masks only (no ground_truth/<split> level); the 2cls splits keep both.
        needs_mask = label == "bad" and (split == "test" or split_type != "1cls")
        if needs_mask:
            if not mask:
                raise PrepareError(f"{split_file}, line {line}: the {split}/bad image {image} has no mask path")
            mask_dir = Path(obj, "ground_truth", "bad") if split_type == "1cls" else Path(obj, "ground_truth", split, "bad")
            plan.append((data_folder / mask, mask_dir / (Path(mask).stem + ".png"), True))
    missing = [src for src, _, _ in plan if not src.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise PrepareError(f"source file not found: {missing[0]}{more}, listed in {split_file} — "
                           "--data-folder must be the unpacked VisA folder the CSV paths are relative to")
    return plan


def prepare(split_type: str, data_folder: str | os.PathLike, save_folder: str | os.PathLike,
            split_file: str | os.PathLike | None = None, overwrite: bool = False) -> dict[str, int]:
    """Convert VisA; returns counts ``{'images', 'masks', 'unchanged'}`` of files handled."""
    if split_type not in SPLIT_TYPES:
        raise PrepareError(f"unknown split type {split_type!r}; choose one of {', '.join(SPLIT_TYPES)}")
    data_folder = Path(data_folder)
    if not data_folder.is_dir():
        raise PrepareError(f"VisA folder not found: {data_folder} — pass the unpacked archive with --data-folder")
    split_file = Path(split_file) if split_file else data_folder / "split_csv" / f"{split_type}.csv"
    out_root = Path(save_folder) / split_type
    plan = read_split(split_file, data_folder, split_type)

    # Two rows writing different files to one destination would silently lose one of them.
    sources: dict[Path, Path] = {}
    for src, dst, _ in plan:
        if sources.setdefault(dst, src) != src:
            raise PrepareError(f"{split_file}: {sources[dst]} and {src} would both be written to "
                               f"{out_root / dst} — file names must be unique per folder")
    plan = list({dst: (src, dst, is_mask) for src, dst, is_mask in plan}.values())

    # Conflicts with existing files are checked before anything is written, so a refused run writes nothing.
    if not overwrite:
        for src, dst, is_mask in plan:
            target = out_root / dst
            if target.exists() and not _same_content(target, _source_bytes(src, is_mask), is_mask):
                raise PrepareError(f"{target} exists with different content — remove it, choose another "
                                   "--save-folder, or pass --overwrite")

    # The reference's folders, for each object in the CSV (left empty where no row goes).
    sub_dirs = (["train/good", "test/good", "test/bad", "ground_truth/bad"] if split_type == "1cls" else
                ["train/good", "train/bad", "test/good", "test/bad", "ground_truth/train/bad", "ground_truth/test/bad"])
    for obj in sorted({dst.parts[0] for _, dst, _ in plan}):
        for sub in sub_dirs:
            (out_root / obj / sub).mkdir(parents=True, exist_ok=True)
    for _, dst, _ in plan:
        (out_root / dst).parent.mkdir(parents=True, exist_ok=True)

    def handle(item: tuple[Path, Path, bool]) -> bool:
        """Write one file; False if an identical file was already there."""
        src, dst, is_mask = item
        data = _source_bytes(src, is_mask)
        target = out_root / dst
        if target.exists() and _same_content(target, data, is_mask):
            return False
        atomic_write_bytes(target, data)
        return True

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        written = list(pool.map(handle, plan))
    n_masks = sum(is_mask for _, _, is_mask in plan)
    return {"images": len(plan) - n_masks, "masks": n_masks, "unchanged": written.count(False)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Convert VisA into the MVTec AD layout (as Dinomaly's reference does).")
    parser.add_argument("--split-type", default="1cls", choices=SPLIT_TYPES)
    parser.add_argument("--data-folder", default="../VisA", help="the unpacked VisA archive")
    parser.add_argument("--save-folder", default="../VisA_pytorch", help="output root; <split-type>/ is created in it")
    parser.add_argument("--split-file", default=None,
                        help="split CSV (default: <data-folder>/split_csv/<split-type>.csv)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files whose content differs (default: refuse)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    counts = run_preparation("prepare_visa", lambda: prepare(
        args.split_type, args.data_folder, args.save_folder, args.split_file, args.overwrite))
    print(f"prepare_visa: {counts['images']} images and {counts['masks']} masks in "
          f"{Path(args.save_folder) / args.split_type} ({counts['unchanged']} already up to date)")


if __name__ == "__main__":
    main()
