"""Prepare MVTec 3D-AD for ``dataset.MVTec3DDataset``: the Dinomaly2 preview code's two scripts
(``preprocess_mvtec3d_1.py`` then ``preprocess_mvtec3d_2.py``) as one, writing a prepared copy.

    python prepare_data/prepare_mvtec3d.py --data-folder ../mvtec_3d_anomaly_detection --save-folder ../mvtec_3d

For every ``<class>/<split>/<defect>/xyz/<name>.tiff`` (split: train, test, validation) with its
``rgb/<name>.png`` and, if there, ``gt/<name>.png``:

1. the table plane is fitted by RANSAC to the points of the 10-pixel border strips and every
   point within 0.005 of it is removed (zeroed, in the cloud and the RGB image);
2. cloud, RGB and mask are zero-padded to a square whose side is the larger side rounded up to
   a multiple of 100;
3. DBSCAN (eps 0.006, 30 points) keeps the most populous cluster, the rest is zeroed;
4. ``xyz/``, ``rgb/``, ``gt/`` are written under ``--save-folder`` with the same relative paths,
   and ``z/<name>.tiff``: the z channel with its gaps filled three times (float32 TIFF).

Differences from the preview: the originals are never overwritten (the preview rewrote them in
place, so a second run removed a plane again); the RANSAC is seeded (``--seed``, one stream per
file: the same output for any order or number of threads; open3d's was not seeded, so results
varied between runs); points with NaN or infinite coordinates are treated as missing (zero);
a cloud with fewer than 50 non-zero border points keeps its plane (open3d stops there); the
clustering is scikit-learn's DBSCAN (border points reachable from two clusters may be assigned
differently); ``z/`` is written for validation too.

Every input is checked (present, readable header, matching sizes) before anything is written:
a bad file is named in one line. Files are written atomically; a sample whose outputs are all
there and valid is skipped, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script
from dataset import DatasetError, check_images, is_hidden  # noqa: E402
from engine.fileio import atomic_write_bytes  # noqa: E402
from prepare_data.common import PrepareError, run_preparation  # noqa: E402
from prepare_data.mvtec3d_ops import (border_points, clean_points, depth_from_cloud,  # noqa: E402
                                      keep_largest_cluster, pad_square, ransac_plane, remove_plane,
                                      square_side)

SPLITS = ("train", "test", "validation")



@dataclass(frozen=True)
class Sample:
    """One organised point cloud and its images; ``rel`` = ``<class>/<split>/<defect>``."""

    rel: Path
    name: str

    def source(self, root: Path, kind: str) -> Path:
        return root / self.rel / kind / (self.name + (".tiff" if kind in ("xyz", "z") else ".png"))


def find_samples(data_folder: Path, classes: Sequence[str] | None) -> list[Sample]:
    """Every ``<class>/<split>/<defect>/xyz/<name>.tiff`` under ``data_folder``, sorted."""
    samples = []
    for cls in sorted(classes or [d.name for d in data_folder.iterdir() if d.is_dir() and not is_hidden(d.name)]):
        if not (data_folder / cls).is_dir():
            raise PrepareError(f"class folder not found: {data_folder / cls} — check --classes")
        for split in SPLITS:
            split_dir = data_folder / cls / split
            for defect in sorted(os.listdir(split_dir)) if split_dir.is_dir() else []:
                xyz_dir = split_dir / defect / "xyz"
                if is_hidden(defect) or not xyz_dir.is_dir():
                    continue
                samples += [Sample(Path(cls, split, defect), name[:-len(".tiff")])
                            for name in sorted(os.listdir(xyz_dir))
                            if name.endswith(".tiff") and not is_hidden(name)]
    return samples


def _cloud_shape(path: Path) -> tuple[int, ...]:
    """The shape of a TIFF's first series, from its header; errors name the file."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.series[0].shape)
    except Exception as e:  # tifffile raises many types for a damaged file
        raise PrepareError(f"cannot read {path}: {type(e).__name__}: {e} — replace it from the archive") from e


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def check_sample(sample: Sample, data_folder: Path) -> None:
    """The inputs of one sample exist, have readable headers, and the same height and width."""
    xyz, rgb, gt = (sample.source(data_folder, kind) for kind in ("xyz", "rgb", "gt"))
    shape = _cloud_shape(xyz)
    if len(shape) != 3 or shape[2] != 3:
        raise PrepareError(f"{xyz} holds an array of shape {shape}, not an organised point cloud H × W × 3")
    if not rgb.is_file():
        raise PrepareError(f"RGB image not found: {rgb} — every xyz/<name>.tiff needs rgb/<name>.png")
    for path in (rgb, gt) if gt.is_file() else (rgb,):
        size = _image_size(path)
        if size != (shape[1], shape[0]):
            raise PrepareError(f"{path} is {size[0]}×{size[1]} (W×H) but its point cloud {xyz} is "
                               f"{shape[1]}×{shape[0]} — replace them from the archive")


def is_done(sample: Sample, data_folder: Path, save_folder: Path) -> bool:
    """True if every output of ``sample`` is there with the padded size (atomic writes: a file
    that is there is whole)."""
    try:
        height, width = _cloud_shape(sample.source(data_folder, "xyz"))[:2]
        side = square_side(height, width)
        images = ["rgb"] + (["gt"] if sample.source(data_folder, "gt").is_file() else [])
        return (_cloud_shape(sample.source(save_folder, "xyz")) == (side, side, 3)
                and _cloud_shape(sample.source(save_folder, "z")) == (side, side)
                and all(_image_size(sample.source(save_folder, k)) == (side, side) for k in images))
    except (PrepareError, OSError):
        return False


def _tiff_bytes(array: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="rgb" if array.ndim == 3 else "minisblack")
    return buf.getvalue()


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def prepare_sample(sample: Sample, data_folder: Path, save_folder: Path, seed: int) -> dict[str, bool]:
    """Prepare and write one sample; returns what happened (``no_plane``, ``clusters``)."""
    import tifffile

    pc = clean_points(tifffile.imread(sample.source(data_folder, "xyz")))
    rgb = np.array(Image.open(sample.source(data_folder, "rgb")))
    gt_path = sample.source(data_folder, "gt")
    gt = np.array(Image.open(gt_path)) if gt_path.is_file() else None
    rng = np.random.default_rng([seed, zlib.crc32(str(sample.source(Path(), "xyz").as_posix()).encode())])
    plane = ransac_plane(border_points(pc), rng)
    if plane is not None:
        pc, rgb = remove_plane(pc, rgb, plane)
    pc, rgb, clusters = keep_largest_cluster(pad_square(pc), pad_square(rgb))
    atomic_write_bytes(sample.source(save_folder, "rgb"), _png_bytes(rgb))
    if gt is not None:
        atomic_write_bytes(sample.source(save_folder, "gt"), _png_bytes(pad_square(gt)))
    atomic_write_bytes(sample.source(save_folder, "xyz"), _tiff_bytes(pc))
    atomic_write_bytes(sample.source(save_folder, "z"), _tiff_bytes(depth_from_cloud(pc)))  # last: marks done
    return {"no_plane": plane is None, "clusters": clusters > 1}


def _check_all(todo: list[Sample], data_folder: Path) -> None:
    """Every input of ``todo`` checked before anything is written; the first problem named."""
    problems = []
    for sample in todo:
        try:
            check_sample(sample, data_folder)
        except (PrepareError, OSError) as e:
            problems.append(str(e))
    if problems:
        more = f" (and {len(problems) - 1} more bad samples)" if len(problems) > 1 else ""
        raise PrepareError(problems[0] + more)
    images = [p for s in todo for p in (s.source(data_folder, "rgb"), s.source(data_folder, "gt")) if p.is_file()]
    try:
        check_images(images)
    except DatasetError as e:
        raise PrepareError(str(e)) from None


def prepare(data_folder: str | os.PathLike, save_folder: str | os.PathLike, seed: int = 0,
            workers: int = 4, classes: Sequence[str] | None = None) -> dict[str, int]:
    """Prepare every sample; returns counts ``{'samples', 'done', 'no_plane', 'clusters'}``."""
    data_folder, save_folder = Path(data_folder), Path(save_folder)
    if not data_folder.is_dir():
        raise PrepareError(f"MVTec 3D-AD folder not found: {data_folder} — pass the unpacked dataset with --data-folder")
    if save_folder.resolve() == data_folder.resolve():
        raise PrepareError(f"--save-folder {save_folder} is --data-folder: the originals stay untouched — "
                           "choose another folder for the prepared copy")
    samples = find_samples(data_folder, classes)
    if not samples:
        raise PrepareError(f"no <class>/<split>/<defect>/xyz/*.tiff under {data_folder} — pass the MVTec 3D-AD root")
    todo = [s for s in samples if not is_done(s, data_folder, save_folder)]
    _check_all(todo, data_folder)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(lambda s: prepare_sample(s, data_folder, save_folder, seed), todo))
    return {"samples": len(samples), "done": len(samples) - len(todo),
            "no_plane": sum(r["no_plane"] for r in results), "clusters": sum(r["clusters"] for r in results)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Prepare MVTec 3D-AD for the RGB + depth setting "
                                                 "(the Dinomaly2 preview's two preprocessing scripts).")
    parser.add_argument("--data-folder", default="../mvtec_3d_anomaly_detection",
                        help="the unpacked MVTec 3D-AD (read only)")
    parser.add_argument("--save-folder", default="../mvtec_3d", help="where the prepared copy goes")
    parser.add_argument("--seed", type=int, default=0, help="RANSAC seed (one stream per file)")
    parser.add_argument("--workers", type=int, default=4,
                        help="threads (DBSCAN of one 800 × 800 cloud can take a few GB of memory)")
    parser.add_argument("--classes", default=None, help="comma-separated classes (default: every class folder)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    classes = args.classes.split(",") if args.classes else None
    counts = run_preparation("prepare_mvtec3d", lambda: prepare(
        args.data_folder, args.save_folder, args.seed, args.workers, classes))
    notes = "".join([f", {counts['no_plane']} kept their plane (fewer than 50 border points)" * bool(counts["no_plane"]),
                     f", {counts['clusters']} had more than one cluster (the largest kept)" * bool(counts["clusters"])])
    print(f"prepare_mvtec3d: {counts['samples']} samples in {args.save_folder} "
          f"({counts['done']} already done{notes})")


if __name__ == "__main__":
    main()
