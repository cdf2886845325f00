"""Datasets by registration: a `Layout` says how a dataset lies on disk (finding its classes,
building its training set and a class's test set), a `DatasetSpec` names one dataset in a
layout (its title and class list). The run's `--dataset` is a registered name; adding a
dataset is one `register_dataset(...)` (and, for a new layout, one `Layout`): see
docs/EXTENDING.md.

Registered here: MVTec AD, VisA (prepared), MPDD, BTAD, MIAD, Uni-Medical and any folders
(`folders`) in the MVTec layout, Real-IAD in its json layout.

What the engine relies on: the training set is a `ConcatDataset` with one part per class, in
class order, of items `(img, label)` (or longer tuples starting so); a test set yields
`(img, gt, label, img_path)` and has `notes` (lines for the log); every dataset lists the
files it reads for the pre-flight checks (`checks.image_paths`: `img_paths`/`gt_paths`, or
`samples`, or a `files()` method).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from .classes import (BTAD_CLASSES, CLASSES_BY_PATH, MIAD_CLASSES, MPDD_CLASSES, MVTEC_CLASSES,
                      REALIAD_CLASSES, UNI_MEDICAL_CLASSES, VISA_CLASSES)
from .errors import DatasetError
from .folders import discover_classes
from .mvtec import MVTecDataset, mvtec_train_set
from .realiad import RealIADDataset
from .shared_cache import SharedCache

TrainSet = Callable[[str, Sequence[str], Callable, "bool | SharedCache"], ConcatDataset]
TestSet = Callable[[str, str, Callable, Callable], Dataset]


@dataclass(frozen=True)
class Layout:
    """How datasets of one kind lie on disk."""

    name: str
    folders: str  # the layout in words, for messages and --help
    discover: Callable[[str], list[str]]  # the classes under a root (`--classes auto`)
    discover_help: str  # what `auto` finds, in words
    train_set: TrainSet  # (root, classes, transform, cache_images) -> one part per class
    test_set: TestSet  # (root, class, transform, gt_transform) -> (img, gt, label, path) items


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its `--dataset` name, its title, its classes (in the order that fixes the
    multi-class training set's order) and its layout."""

    name: str
    title: str
    classes: tuple[str, ...]
    layout: Layout


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in DATASETS:
        raise ValueError(f"a dataset named {spec.name!r} is registered already")
    DATASETS[spec.name] = spec
    return spec


def dataset_for_path(data_path: str) -> str:
    """`--dataset auto`: the dataset the Dinomaly2 preview code's 2D script recognises in the
    path (the first of its names contained in the lower-cased path: mvtec, visa, btech (BTAD),
    mpdd, miad, medical (Uni-Medical)), else `folders` (every class folder found there)."""
    lowered = str(data_path).lower()
    for word, _ in CLASSES_BY_PATH:
        if word in lowered:
            return PATH_WORDS[word]
    return "folders"


def dataset_spec(name: str) -> DatasetSpec:
    """The dataset registered as `name`; DatasetError listing the registered ones."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; registered: {', '.join(DATASETS)}")
    return DATASETS[name]


# ----------------------------------------------------------------------------- MVTec layout

def _mvtec_test_set(root: str, name: str, transform: Callable, gt_transform: Callable) -> Dataset:
    return MVTecDataset(os.path.join(root, name), transform, gt_transform, phase="test")


MVTEC_LAYOUT = Layout(
    name="mvtec", folders="<class>/train/good, <class>/test/<defect>, <class>/ground_truth/<defect>",
    discover=discover_classes, discover_help="every folder under --data_path with train/good (or train/ok)",
    train_set=mvtec_train_set, test_set=_mvtec_test_set)


# ----------------------------------------------------------------------------- Real-IAD layout

def realiad_categories(root: str) -> list[str]:
    """One category per split file in `realiad_jsons/realiad_jsons/`, sorted."""
    json_dir = Path(root) / "realiad_jsons" / "realiad_jsons"
    if not json_dir.is_dir():
        raise DatasetError(f"no Real-IAD split folder {json_dir}")
    return sorted(p.stem for p in json_dir.glob("*.json"))


def _realiad_train_set(root: str, classes: Sequence[str], transform: Callable,
                       cache_images: bool | SharedCache = False) -> ConcatDataset:
    return ConcatDataset([RealIADDataset(root, c, transform, None, phase="train",
                                         cache_images=cache_images) for c in classes])


def _realiad_test_set(root: str, name: str, transform: Callable, gt_transform: Callable) -> Dataset:
    return RealIADDataset(root, name, transform, gt_transform, phase="test")


REALIAD_LAYOUT = Layout(
    name="realiad", folders="realiad_1024/<category>/…, realiad_jsons/realiad_jsons/<category>.json",
    discover=realiad_categories,
    discover_help="every category with a split file in realiad_jsons/realiad_jsons",
    train_set=_realiad_train_set, test_set=_realiad_test_set)


register_dataset(DatasetSpec("mvtec", "MVTec AD", tuple(MVTEC_CLASSES), MVTEC_LAYOUT))
register_dataset(DatasetSpec("visa", "VisA", tuple(VISA_CLASSES), MVTEC_LAYOUT))
register_dataset(DatasetSpec("realiad", "Real-IAD", tuple(REALIAD_CLASSES), REALIAD_LAYOUT))
register_dataset(DatasetSpec("mpdd", "MPDD", tuple(MPDD_CLASSES), MVTEC_LAYOUT))
# The MVTec layout with train/ok, test/{ok,ko}, ground_truth/ko (BTAD), and two more sets of
# the Dinomaly2 paper; `folders`: any such tree, its classes found there (an empty list)
register_dataset(DatasetSpec("btad", "BTAD", tuple(BTAD_CLASSES), MVTEC_LAYOUT))
register_dataset(DatasetSpec("miad", "MIAD", tuple(MIAD_CLASSES), MVTEC_LAYOUT))
register_dataset(DatasetSpec("unimedical", "Uni-Medical", tuple(UNI_MEDICAL_CLASSES), MVTEC_LAYOUT))
register_dataset(DatasetSpec("folders", "MVTec-layout folders", (), MVTEC_LAYOUT))
PATH_WORDS = {"mvtec": "mvtec", "visa": "visa", "btech": "btad", "mpdd": "mpdd", "miad": "miad",
              "medical": "unimedical"}  # the preview's words in a path -> our datasets
