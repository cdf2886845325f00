"""MVTec 3D-AD as RGB + depth: the Dinomaly2 preview code's ``MVTec3DDataset``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .base import _AnomalyDataset
from .depth import depth_foreground, depth_to_image, read_depth
from .errors import DatasetError
from .folders import _pair_masks, _require_class_folder, _require_dir, _subfolders, is_image_name
from .images import _header_size, _size_mismatch, load_mask, load_rgb

NORMAL_FOLDERS = ("good", "ok")


def depth_path(rgb_path: str) -> str:
    """``<sub>/rgb/<name>.png`` -> ``<sub>/z/<name>.tiff``.

    Only the folder ``rgb`` next to the file and the file's extension change (the preview
    replaced every ``rgb`` and ``png`` in the whole path, so a data root such as
    ``/data/rgbd/`` or a file ``png_01.png`` broke its mapping)."""
    path = Path(rgb_path)
    if path.parent.name != "rgb":
        raise DatasetError(f"{rgb_path} is not in an rgb/ folder — MVTec 3D-AD keeps images in "
                           "<class>/<split>/<defect>/rgb/")
    return str(path.parent.parent / "z" / (path.stem + ".tiff"))


def rgb_and_depth(rgb_path: str, z_path: str) -> tuple[Image.Image, Image.Image]:
    """An image's RGB (zero where there is no depth) and depth heat map (``depth_to_image``),
    PIL RGB ``H × W``, as the preview's ``MVTec3DDataset`` makes them."""
    rgb = np.array(load_rgb(rgb_path))
    depth = read_depth(z_path)
    if depth.shape != rgb.shape[:2]:
        raise DatasetError(f"depth file {z_path} is {depth.shape[1]}×{depth.shape[0]} (W×H) but its image "
                           f"{rgb_path} is {rgb.shape[1]}×{rgb.shape[0]} — prepare both with "
                           "prepare_data/prepare_mvtec3d.py")
    rgb[~depth_foreground(depth)] = 0
    return Image.fromarray(rgb), Image.fromarray(depth_to_image(depth))


def read_rgbd(rgb_path: str | os.PathLike, transform: Callable) -> torch.Tensor:
    """The model input ``6 × H × W`` of one image of the layout (``<sub>/rgb/<name>.png``, its
    depth in ``<sub>/z/<name>.tiff``): RGB then depth, each through ``transform``."""
    rgb, depth = rgb_and_depth(str(rgb_path), depth_path(str(rgb_path)))
    return torch.cat([transform(rgb), transform(depth)], dim=0)


def _pngs(folder: Path) -> list[str]:
    """Sorted ``*.png`` files of ``folder`` (any case, hidden files skipped)."""
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if is_image_name(name) and name.lower().endswith(".png"))


class MVTec3DDataset(_AnomalyDataset):
    """One MVTec 3D-AD class ``root = <data>/<class>`` after ``prepare_data/prepare_mvtec3d.py``.

    ``<root>/<phase>/<sub>/rgb/*.png`` with the depth ``z/<name>.tiff`` beside ``rgb/`` and, for
    defects, the mask ``gt/<name>.png``; ``good`` (and ``ok``) are normal. Sub-folders and files
    in sorted order (the preview: ``os.listdir`` and ``glob`` order).

    Item ``(img, gt, label, img_path)`` in both phases: ``img`` ``6 × H × W`` (RGB, then the depth
    heat map of ``depth_to_image``, each through ``transform``: ImageNet-normalised) with
    ``cat_3D``, else the RGB ``3 × H × W`` alone; RGB pixels without depth are set to 0 first.
    ``gt`` ``1 × H × W``: zeros for normal images, else the mask through ``gt_transform``.
    ``paired_transform(rgb, depth)``, if given, replaces ``transform`` (both PIL RGB in, two
    tensors out).

    Few-shot (``phase='train'`` and ``shot``): the preview's draw,
    ``np.random.seed(seed); np.random.choice(n, shot, replace=False)``, sorted, made with a
    private ``RandomState(seed)`` (the same indices, numpy's global state left alone);
    ``shot >= n`` keeps all, with a line in ``notes``.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable, gt_transform: Callable,
                 phase: str, paired_transform: Callable | None = None, cat_3D: bool = True,
                 shot: int | None = None, seed: int = 42) -> None:
        super().__init__(transform, gt_transform, phase)  # the lists, filled below
        self.paired_transform, self.cat_3D, self.shot, self.seed = paired_transform, cat_3D, shot, seed
        self.z_paths: list[str] = []
        root = Path(root)
        _require_class_folder(root)
        self._load(root / phase)
        if phase == "train" and shot is not None:
            self._few_shot(shot, seed)

    def _load(self, phase_dir: Path) -> None:
        _require_dir(phase_dir, f"no {phase_dir.name} folder in {phase_dir.parent} — MVTec 3D-AD keeps "
                                f"{phase_dir.name}/<defect>/{{rgb,z,gt}}/ per class")
        for sub in _subfolders(phase_dir):
            rgb_dir = phase_dir / sub / "rgb"
            if not rgb_dir.is_dir():
                continue
            imgs = _pngs(rgb_dir)
            normal = sub in NORMAL_FOLDERS
            masks: list[str | None] = [None] * len(imgs)
            if not normal:
                paired, notes = _pair_masks(imgs, rgb_dir, phase_dir / sub / "gt", f"{sub}/gt of {phase_dir}")
                masks, self.notes = list(paired), self.notes + notes
            self.add_defect_folder(imgs, masks, sub, normal)
        if not self.img_paths:
            raise DatasetError(f"no images in {phase_dir}/<defect>/rgb/*.png — expected the MVTec 3D-AD layout")
        self.z_paths = [depth_path(p) for p in self.img_paths]
        missing = [z for z in self.z_paths if not os.path.isfile(z)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"depth file not found: {missing[0]}{more} — every rgb/<name>.png needs "
                               "z/<name>.tiff: run prepare_data/prepare_mvtec3d.py on the dataset")

    def _few_shot(self, shot: int, seed: int) -> None:
        n = len(self.img_paths)
        if shot >= n:
            self.notes.append(f"shot ({shot}) >= total samples ({n}), using all samples")
            return
        keep = np.sort(np.random.RandomState(seed).choice(n, size=shot, replace=False))
        for name in ("img_paths", "z_paths", "gt_paths", "labels", "types"):
            values = getattr(self, name)
            setattr(self, name, [values[k] for k in keep])

    def files(self) -> list[str]:
        """Every file the items read: RGB images, depth TIFFs, masks."""
        return self.img_paths + self.z_paths + [m for m in self.gt_paths if m is not None]

    def image_files(self) -> list[str]:
        """The images and masks among ``files()`` (what ``check_images`` decodes; the depth
        TIFFs are read, and their errors named, by ``read_depth``)."""
        return self.img_paths + [m for m in self.gt_paths if m is not None]

    def mask_pairs(self) -> list[tuple[str, str]]:
        """``(image, mask)`` of every anomalous item."""
        return [(i, m) for i, m in zip(self.img_paths, self.gt_paths) if m is not None]

    def rgb_and_depth(self, idx: int) -> tuple[Image.Image, Image.Image]:
        """The item's RGB (zero where there is no depth) and depth heat map, PIL RGB ``H × W``."""
        return rgb_and_depth(self.img_paths[idx], self.z_paths[idx])

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        rgb, depth = self.rgb_and_depth(idx)
        if self.paired_transform is not None:
            img, depth = self.paired_transform(rgb, depth)
        else:
            img, depth = self.transform(rgb), self.transform(depth)
        label, img_path = self.labels[idx], self.img_paths[idx]
        if label == 0:
            gt = torch.zeros([1, img.shape[-2], img.shape[-1]])
        else:
            mask = load_mask(self.gt_paths[idx])
            if mask.size != rgb.size:
                raise _size_mismatch(self.gt_paths[idx], mask.size, img_path, _header_size(img_path))
            gt = self.gt_transform(mask)
        if self.cat_3D:
            img = torch.cat([img, depth], dim=0)
        return img, gt, label, img_path
