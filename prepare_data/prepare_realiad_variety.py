"""Resize Real-IAD Variety's raw images to 1024 × 1024, as the Dinomaly2 preview code's
``preprocess_realiadvar_mp.py`` does, for ``RealIADDatasetv2(..., version='realiadvariety_1024')``.

    python prepare_data/prepare_realiad_variety.py --data-folder ../Real-IAD_Variety/realiadvariety_raw \\
        --save-folder ../Real-IAD_Variety/realiadvariety_1024

Every ``*.png`` under ``--data-folder`` (hidden files and folders skipped) is written to the same
relative path under ``--save-folder``: resized to 1024 × 1024 whatever its aspect ratio, bicubic,
mode kept; a file with ``_mask`` in its name is first converted to grey (L), resized bicubic,
then binarised (``> 127`` -> 255, else 0).

Every source is checked (it opens and decodes) before anything is written: a bad file is named
in one line and nothing is written. Files are written atomically (temporary file + rename);
outputs already there and valid (a readable PNG of the target size) are left alone, so an
interrupted run resumes where it stopped. (The multi-view script of the preview reads the raw
images; pass ``version='realiadvariety_1024'`` to read these.)
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from dataset import DatasetError, check_images, is_hidden  # noqa: E402
from engine.fileio import atomic_write_bytes  # noqa: E402
from prepare_data.common import PrepareError, run_preparation  # noqa: E402

TARGET = 1024
MASK_TAG = "_mask"



def is_mask(path: Path) -> bool:
    """The preview's rule: a mask has ``_mask`` in its file name."""
    return MASK_TAG in path.name


def list_sources(data_folder: Path) -> list[Path]:
    """Every ``*.png`` under ``data_folder``, relative to it, sorted; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(data_folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        found += [Path(dirpath, name).relative_to(data_folder) for name in filenames
                  if name.endswith(".png") and not is_hidden(name)]
    return sorted(found)


def resize(src: Path, size: int) -> Image.Image:
    """The preview's resize of one file: images bicubic to ``size × size`` in their own mode;
    masks to L, bicubic, then ``> 127`` -> 255."""
    with Image.open(src) as img:
        if not is_mask(src):
            return img.resize((size, size), Image.BICUBIC)
        grey = img if img.mode == "L" else img.convert("L")
        resized = np.array(grey.resize((size, size), Image.BICUBIC))
    return Image.fromarray((resized > 127).astype(np.uint8) * 255)


def is_done(dst: Path, size: int, mask: bool) -> bool:
    """True if ``dst`` is a readable PNG of ``size × size`` (grey for a mask): nothing to redo."""
    try:
        with Image.open(dst) as img:
            if img.format != "PNG" or img.size != (size, size) or (mask and img.mode != "L"):
                return False
            img.verify()
    except Exception:  # missing, truncated or foreign: write it again
        return False
    return True


def _check_folders(data_folder: Path, save_folder: Path) -> None:
    if not data_folder.is_dir():
        raise PrepareError(f"raw folder not found: {data_folder} — pass the unpacked realiadvariety_raw "
                           "folder with --data-folder")
    data, save = data_folder.resolve(), save_folder.resolve()
    if save == data or data in save.parents:
        raise PrepareError(f"--save-folder {save_folder} is inside --data-folder {data_folder}: the originals "
                           "stay untouched — choose a folder beside it (e.g. realiadvariety_1024)")


def prepare(data_folder: str | os.PathLike, save_folder: str | os.PathLike, size: int = TARGET,
            workers: int = 8) -> dict[str, int]:
    """Resize every raw PNG; returns ``{'images', 'masks', 'done'}`` (``done``: already there and valid)."""
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    _check_folders(data_folder, save_folder)
    sources = list_sources(data_folder)
    if not sources:
        raise PrepareError(f"no *.png files under {data_folder} — pass the realiadvariety_raw folder")
    todo = [rel for rel in sources if not is_done(save_folder / rel, size, is_mask(rel))]
    try:
        check_images([data_folder / rel for rel in todo])
    except DatasetError as e:
        raise PrepareError(str(e)) from None

    def handle(rel: Path) -> None:
        buf = io.BytesIO()
        resize(data_folder / rel, size).save(buf, format="PNG")
        atomic_write_bytes(save_folder / rel, buf.getvalue())

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding and resizing
        list(pool.map(handle, todo))
    n_masks = sum(is_mask(rel) for rel in sources)
    return {"images": len(sources) - n_masks, "masks": n_masks, "done": len(sources) - len(todo)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Resize Real-IAD Variety's raw images to 1024 × 1024 "
                                                 "(the Dinomaly2 preview's preparation).")
    parser.add_argument("--data-folder", default="../Real-IAD_Variety/realiadvariety_raw",
                        help="the unpacked realiadvariety_raw folder (read only)")
    parser.add_argument("--save-folder", default=None,
                        help="output folder (default: realiadvariety_1024 beside --data-folder)")
    parser.add_argument("--size", type=int, default=TARGET, help="output side in pixels (the preview: 1024)")
    parser.add_argument("--workers", type=int, default=8, help="threads (the preview: 8)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    save = Path(args.save_folder) if args.save_folder else Path(args.data_folder).parent / "realiadvariety_1024"
    counts = run_preparation("prepare_realiad_variety",
                             lambda: prepare(args.data_folder, save, args.size, args.workers))
    print(f"prepare_realiad_variety: {counts['images']} images and {counts['masks']} masks in {save} "
          f"({counts['done']} already done)")


if __name__ == "__main__":
    main()
