"""Folders in the MVTec AD layout: image files, classes, and the mask of each test image."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DatasetError

# Image files, wherever a folder is listed: the training set's rule (torchvision's
# ImageFolder: these extensions, any case). The reference globbed only *.png, *.JPG and
# *.bmp for test images; every dataset it reads gives the same list here. Hidden files
# and folders (names starting with '.': ``._000.png``, ``.DS_Store``, ``.ipynb_checkpoints``)
# are never read.
IMAGE_EXTENSIONS = IMG_EXTENSIONS  # .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp
MASK_SUFFIX = ".png"  # the preferred mask extension when several files share a stem
# Folders of normal images, in train/ and test/: MVTec AD's `good`, and BTAD's `ok` (its
# anomalous folder is `ko`), as the Dinomaly2 preview code reads them.
NORMAL_FOLDERS = ("good", "ok")


def _require_dir(path: Path, message: str) -> None:
    if not path.is_dir():
        raise DatasetError(message)


def _require_class_folder(root: Path) -> None:
    """``root`` is one class folder ``<data>/<class>``; say which level is missing."""
    if not root.parent.is_dir():
        raise DatasetError(f"data root not found: {root.parent} — pass --data_path pointing to the "
                           "folder that holds the class folders")
    _require_dir(root, f"class folder not found: {root} — check the class names (--classes) "
                       f"against the folders in {root.parent}")


def is_hidden(name: str) -> bool:
    """``.DS_Store``, macOS ``._000.png``, ``.ipynb_checkpoints``: never read."""
    return name.startswith(".")


def is_image_name(name: str) -> bool:
    """ImageFolder's rule: one of ``IMAGE_EXTENSIONS``, any case; and not hidden."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _files(folder: Path) -> list[str]:
    """Sorted joined path strings of the image files in ``folder`` (``is_image_name``)."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if is_image_name(name) and os.path.isfile(os.path.join(folder, name)))


def _subfolders(folder: Path) -> list[str]:
    """Sorted names of the folders in ``folder``, hidden ones skipped."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not is_hidden(d.name))


def normal_train_folders(class_dir: Path) -> list[Path]:
    """The class's folders of training images that exist: ``train/good``, ``train/ok``."""
    return [class_dir / "train" / name for name in NORMAL_FOLDERS
            if (class_dir / "train" / name).is_dir()]


def discover_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the class folders under ``root`` that have ``train/good`` (or BTAD's
    ``train/ok``) (``--classes auto``)."""
    root = Path(root)
    _require_dir(root, f"data root not found: {root} — pass --data_path pointing to the folder "
                       "that holds the class folders")
    classes = [name for name in _subfolders(root) if normal_train_folders(root / name)]
    if not classes:
        raise DatasetError(f"no class folders with train/good found in {root} — expected "
                           "<data_path>/<class>/train/good/*.png (the MVTec AD layout)")
    return classes


# ---------------------------------------------------------------- masks of a defect folder

def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _name_match(img: str, masks_by_stem: dict[str, list[str]]) -> str | None:
    """The mask of image ``X.<ext>`` by name: ``X_mask.png``, ``X.png``, then ``X_mask.*``, ``X.*``."""
    candidates = masks_by_stem.get(_stem(img) + "_mask", []) + masks_by_stem.get(_stem(img), [])
    png = [m for m in candidates if m.lower().endswith(MASK_SUFFIX)]
    return (png + [m for m in candidates if m not in png] + [None])[0]


def _few(paths: Sequence[str], k: int = 3) -> str:
    """``'a.png, b.png, c.png, … (7 in all)'``: the first ``k`` file names."""
    names = ", ".join(os.path.basename(p) for p in paths[:k])
    return names if len(paths) <= k else f"{names}, … ({len(paths)} in all)"


def _pair_masks(imgs: list[str], img_dir: Path, mask_dir: Path, where: str) -> tuple[list[str], list[str]]:
    """The mask of each anomalous image of ``img_dir``, and notes for the user.

    By name (``_name_match``) when every image has one; masks without an image are then
    ignored, with a note. Otherwise by sorted order (the reference's rule), with a note,
    which needs as many masks as images and must agree with every name match there is.
    """
    masks = _files(mask_dir) if mask_dir.is_dir() else []
    masks_by_stem: dict[str, list[str]] = {}
    for m in masks:
        masks_by_stem.setdefault(_stem(m), []).append(m)
    by_name = {img: _name_match(img, masks_by_stem) for img in imgs}
    unmatched = [img for img in imgs if by_name[img] is None]
    if not unmatched:
        owner: dict[str, str] = {}
        for img, mask in by_name.items():
            if mask in owner:
                raise DatasetError(f"images {owner[mask]} and {img} both pair by name with mask {mask} — "
                                   "rename one of them: each anomalous test image needs its own mask")
            owner[mask] = img
        extra = [m for m in masks if m not in owner]
        notes = [f"{where}: {len(extra)} masks without a test image ignored ({_few(extra)})"] if extra else []
        return [by_name[img] for img in imgs], notes
    if len(imgs) != len(masks):
        folder = "" if mask_dir.is_dir() else " (folder missing)"
        named = "" if len(unmatched) == len(imgs) else f"; no X_mask.png or X.png for {_few(unmatched)}"
        raise DatasetError(
            f"image/mask count mismatch for defect folder {img_dir}: {len(imgs)} images but {len(masks)} "
            f"masks in {mask_dir}{folder}{named} — each anomalous test image needs one mask, named "
            "X_mask.png or X.png for image X.<ext> (else paired by sorted file name)")
    for img, mask in zip(imgs, masks):
        if by_name[img] is not None and by_name[img] != mask:
            raise DatasetError(f"test image {img} has the mask {by_name[img]} by name but {mask} by sorted "
                               f"order (some images of {img_dir} have no mask by name) — name every mask "
                               "X_mask.png or X.png after its image X.<ext>")
    return masks, [f"{where}: masks paired with images by sorted order (no X_mask.png or X.png "
                   f"for {_few(unmatched)})"]
