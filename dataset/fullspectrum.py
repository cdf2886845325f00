"""The datasets of Dinomaly2's full-spectrum settings, registered (`--dataset NAME`):

- objects of views: `realiad_multiview` (Real-IAD, five views per object),
  `realiad_variety` (Real-IAD Variety, 160 classes; `realiad_variety_1024`: its images
  resized by `prepare_data/prepare_realiad_variety.py`), `manta` (MANTA-Tiny, five views side
  by side in one file);
- RGB + depth: `mvtec3d` (MVTec 3D-AD after `prepare_data/prepare_mvtec3d.py`);
- RGB + infrared: `mulsen` (MulSen-AD).

Their training sets hold single images (a view; an RGB + depth pair as one 6-channel image;
an RGB + infrared pair), their test sets objects (`RealIADDatasetv2`, `MANTATinyDataset`,
`MulSenTestDataset` items) or 6-channel images (`MVTec3DDataset`). `multiview_dataset_for_path`
is the preview multi-view script's choice of dataset by its path.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from .classes import MANTA_CLASSES, MULSEN_CLASSES, MVTEC3D_CLASSES, REALIAD_CLASSES
from .errors import DatasetError
from .folders import _require_dir, _subfolders
from .layouts import DatasetSpec, Layout, register_dataset
from .manta import MANTATinyDataset
from .mulsen import MulSenTestDataset, MulSenTrainDataset
from .mvtec3d import MVTec3DDataset
from .realiad_v2 import REALIAD_LAYOUT as REALIAD_V2_FOLDERS
from .realiad_v2 import VARIETY_LAYOUT, RealIADDatasetv2
from .shared_cache import SharedCache


def _uncached(train_set: ConcatDataset, cache_images: object, title: str) -> ConcatDataset:
    """A training set read from disk: with `--cache_images`, a note for the log says so."""
    train_set.notes = ([f"--cache_images: {title} training images are read from disk (the "
                        "cache holds single resized RGB images)"] if cache_images else [])
    return train_set


# ------------------------------------------------------------------ objects of views

def _json_classes(split: str) -> Callable[[str], list[str]]:
    """The classes of a multi-view split folder: one per `<class>.json`, sorted (the preview's
    order)."""
    def discover(root: str) -> list[str]:
        split_dir = Path(root) / split
        _require_dir(split_dir, f"split folder not found: {split_dir} — unpack the dataset's json "
                                "files there (one <class>.json per class)")
        classes = sorted(p.stem for p in split_dir.glob("*.json") if not p.name.startswith("."))
        if not classes:
            raise DatasetError(f"no <class>.json files in {split_dir}")
        return classes
    return discover


def _multiview_layout(name: str, split: str, version: str) -> Layout:
    def train_set(root: str, classes: Sequence[str], transform: Callable,
                  cache_images: bool | SharedCache = False) -> ConcatDataset:
        return ConcatDataset([RealIADDatasetv2(root, c, transform, None, "train", split=split,
                                               version=version, cache_images=cache_images)
                              for c in classes])

    def test_set(root: str, c: str, transform: Callable, gt_transform: Callable) -> Dataset:
        return RealIADDatasetv2(root, c, transform, gt_transform, "test", split=split, version=version)

    return Layout(name=name, folders=f"{version}/<class>/… with {split}/<class>.json",
                  discover=_json_classes(split), discover_help=f"every <class>.json in {split}/",
                  train_set=train_set, test_set=test_set)


REALIAD_MULTIVIEW_LAYOUT = _multiview_layout("realiad_multiview", *REALIAD_V2_FOLDERS)
VARIETY_MULTIVIEW_LAYOUT = _multiview_layout("realiad_variety", *VARIETY_LAYOUT)
# the images resized to 1024 × 1024 by prepare_data/prepare_realiad_variety.py (the preview's
# README asks for them; its script reads the raw ones)
VARIETY_1024_LAYOUT = _multiview_layout("realiad_variety_1024", VARIETY_LAYOUT[0], "realiadvariety_1024")


def manta_classes(root: str) -> list[str]:
    """MANTA-Tiny's `<group>/<class>` folders under `root` (those with a `test/` folder)."""
    _require_dir(Path(root), f"data root not found: {root} — pass the MANTA-Tiny folder")
    return [f"{g}/{c}" for g in _subfolders(Path(root)) for c in _subfolders(Path(root) / g)
            if (Path(root) / g / c / "test").is_dir()]


def _manta_train_set(root: str, classes: Sequence[str], transform: Callable,
                     cache_images: bool | SharedCache = False) -> ConcatDataset:
    return _uncached(ConcatDataset([MANTATinyDataset(os.path.join(root, c), transform, None, "train")
                                    for c in classes]), cache_images, "MANTA-Tiny")


MANTA_LAYOUT = Layout(
    name="manta", folders="<group>/<class>/{train/good, test/<defect>, ground_truth/<defect>}, "
                          "five views side by side in each PNG",
    discover=manta_classes, discover_help="every <group>/<class> folder with test/",
    train_set=_manta_train_set,
    test_set=lambda root, c, t, g: MANTATinyDataset(os.path.join(root, c), t, g, "test"))


def multiview_dataset_for_path(data_path: str) -> str:
    """The preview multi-view script's choice: `MANTA` in the path (case-sensitive) →
    MANTA-Tiny, `Variety` → Real-IAD Variety, else Real-IAD."""
    if "MANTA" in str(data_path):
        return "manta"
    return "realiad_variety" if "Variety" in str(data_path) else "realiad_multiview"


# ------------------------------------------------------------------ RGB + depth, RGB + infrared

def _class_folders(root: str) -> list[str]:
    _require_dir(Path(root), f"data root not found: {root}")
    return [c for c in _subfolders(Path(root)) if (Path(root) / c / "test").is_dir()
            or (Path(root) / c / "RGB").is_dir()]


def _mvtec3d_train_set(root: str, classes: Sequence[str], transform: Callable,
                       cache_images: bool | SharedCache = False) -> ConcatDataset:
    # training items are normal: their masks are zeros, no gt_transform
    return _uncached(ConcatDataset([MVTec3DDataset(os.path.join(root, c), transform, None, "train")
                                    for c in classes]), cache_images, "MVTec 3D-AD")


MVTEC3D_LAYOUT = Layout(
    name="mvtec3d", folders="<class>/{train,test}/<defect>/{rgb,z,gt}/ (prepare_data/prepare_mvtec3d.py)",
    discover=_class_folders, discover_help="every class folder with test/",
    train_set=_mvtec3d_train_set,
    test_set=lambda root, c, t, g: MVTec3DDataset(os.path.join(root, c), t, g, "test"))


def _mulsen_train_set(root: str, classes: Sequence[str], transform: Callable,
                      cache_images: bool | SharedCache = False) -> ConcatDataset:
    return _uncached(ConcatDataset([MulSenTrainDataset(c, transform, None, dataset_path=root)
                                    for c in classes]), cache_images, "MulSen-AD")


MULSEN_LAYOUT = Layout(
    name="mulsen", folders="<class>/{RGB,Infrared,Pointcloud}/{train,test/<defect>,GT/<defect>}",
    discover=_class_folders, discover_help="every class folder with RGB/",
    train_set=_mulsen_train_set,
    test_set=lambda root, c, t, g: MulSenTestDataset(c, t, g, dataset_path=root))


register_dataset(DatasetSpec("realiad_multiview", "Real-IAD (objects of 5 views)",
                             tuple(sorted(REALIAD_CLASSES)), REALIAD_MULTIVIEW_LAYOUT))
register_dataset(DatasetSpec("realiad_variety", "Real-IAD Variety", (), VARIETY_MULTIVIEW_LAYOUT))
register_dataset(DatasetSpec("realiad_variety_1024", "Real-IAD Variety (1024 px)", (), VARIETY_1024_LAYOUT))
register_dataset(DatasetSpec("manta", "MANTA-Tiny", tuple(MANTA_CLASSES), MANTA_LAYOUT))
register_dataset(DatasetSpec("mvtec3d", "MVTec 3D-AD", tuple(MVTEC3D_CLASSES), MVTEC3D_LAYOUT))
register_dataset(DatasetSpec("mulsen", "MulSen-AD", tuple(MULSEN_CLASSES), MULSEN_LAYOUT))
