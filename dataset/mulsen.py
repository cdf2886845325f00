"""MulSen-AD (RGB + infrared + point cloud): the Dinomaly2 preview code's ``dataset_mulsen``
(``TrainDataset``/``TestDataset`` here ``MulSenTrainDataset``/``MulSenTestDataset``)."""
from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from scipy.spatial import KDTree
from torch.utils.data import Dataset

from .classes import MULSEN_CLASSES
from .errors import DatasetError
from .folders import _require_dir, _subfolders
from .images import load_mask, load_rgb
from .stl import stl_vertices

MODALITIES = ("RGB", "Infrared", "Pointcloud")
_NUMBERED = re.compile(r"(\d+)\.(png|stl)$")  # the preview keeps only files named <...digits>.png/.stl


def mulsen_classes() -> list[str]:
    """The 15 MulSen-AD classes in the preview's order."""
    return list(MULSEN_CLASSES)


def _project(vertices: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel columns ``u`` and rows ``v`` of vertices projected orthographically on x–y over the
    mesh's own x and y range (ranges floored at 1e-8), truncated to int32 and clipped."""
    height, width = image_size
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    x_range, y_range = max(high[0] - low[0], 1e-8), max(high[1] - low[1], 1e-8)
    u = ((vertices[:, 0] - low[0]) / x_range * (width - 1)).astype(np.int32)
    v = ((vertices[:, 1] - low[1]) / y_range * (height - 1)).astype(np.int32)
    return np.clip(u, 0, width - 1), np.clip(v, 0, height - 1)


def stl_to_depth_map(stl_path: str | os.PathLike, image_size: tuple[int, int] = (224, 224),
                     normalize: bool = True) -> np.ndarray:
    """A mesh's depth map ``H × W`` float32, as the preview makes it: the distinct vertices
    projected on x–y (``_project``), per pixel the largest z, empty pixels filled with the smallest
    filled value, then min–max normalised to [0, 1] (all zeros if flat). No vertices: zeros."""
    vertices = stl_vertices(stl_path)
    if len(vertices) == 0:
        return np.zeros(image_size)
    u, v = _project(vertices, image_size)
    depth = np.full(image_size, -np.inf, dtype=np.float32)
    np.maximum.at(depth, (v, u), vertices[:, 2])
    empty = depth == -np.inf
    depth[empty] = depth[~empty].min() if (~empty).any() else 0
    if normalize and depth.max() > depth.min():
        depth = (depth - depth.min()) / (depth.max() - depth.min())
    elif normalize:
        depth = np.zeros_like(depth)
    return depth


def create_depth_mask_from_3d_mask(stl_path: str | os.PathLike, anomaly_points: np.ndarray,
                                   image_size: tuple[int, int] = (224, 224),
                                   tolerance: float = 0.01) -> np.ndarray:
    """The depth map's anomaly mask ``H × W`` float32 in {0, 1}, as the preview makes it: for each
    anomaly point (``N × 3``) its 10 nearest mesh vertices, those nearer than ``tolerance``
    projected as ``stl_to_depth_map`` projects them, and a 3 × 3 square around each set to 1."""
    vertices = stl_vertices(stl_path)
    anomaly_points = np.asarray(anomaly_points, dtype=np.float64).reshape(-1, 3)
    if len(vertices) == 0 or len(anomaly_points) == 0:
        return np.zeros(image_size)
    height, width = image_size
    mask = np.zeros(image_size, dtype=np.float32)
    distances, indices = KDTree(vertices).query(anomaly_points, k=10)  # missing neighbours: inf
    near = np.unique(indices[distances < tolerance])
    if len(near) == 0:
        return mask
    u_all, v_all = _project(vertices, image_size)
    u, v = u_all[near], v_all[near]
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            rows, cols = v + dv, u + du
            inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
            mask[rows[inside], cols[inside]] = 1
    return mask


def read_anomaly_points(path: str) -> np.ndarray:
    """The anomaly points of a ``Pointcloud/GT/<defect>/<name>.txt`` file: the first three
    comma-separated columns, ``N × 3``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is no points, not a warning
            points = np.genfromtxt(path, delimiter=",")
        points = np.atleast_2d(points) if points.size else np.zeros((0, 3))
        if points.shape[1] < 3 or not np.isfinite(points[:, :3]).all():
            raise ValueError(f"{points.shape[1]} columns, or a field that is not a number")
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read anomaly points {path}: {e} — expected lines 'x,y,z[,…]'") from e
    return points[:, :3]


def _numbered(folder: Path, suffix: str) -> tuple[dict[int, str], list[str]]:
    """``{number: path}`` of the files ``<…digits>.<suffix>`` in ``folder``, and the files dropped."""
    found: dict[int, str] = {}
    dropped = []
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        path = os.path.join(folder, name)
        if name.startswith(".") or not name.endswith(suffix) or not os.path.isfile(path):
            continue
        match = _NUMBERED.search(name)
        if match is None:
            dropped.append(path)
            continue
        number = int(match.group(1))
        if number in found:
            raise DatasetError(f"{found[number]} and {path} have the same number {number} — MulSen-AD pairs "
                               "the modalities by file number: rename or remove one")
        found[number] = path
    return found, dropped


class _MulSenDataset(Dataset):
    """What the two MulSen-AD datasets share: listing one folder of the three modalities,
    paired by file number; reading the images and the depth map."""

    def __init__(self, class_name: str, transform: Callable, gt_transform: Callable,
                 depth: bool, dataset_path: str | os.PathLike) -> None:
        self.cls = class_name
        self.img_path = os.path.join(dataset_path, class_name)
        self.rgb_transform = self.depth_transform = transform
        self.gt_transform = gt_transform
        self.depth = depth
        self.img_paths: list[tuple[str, str, str | None]] = []  # (rgb, infrared, point cloud)
        self.labels: list = []
        self.notes: list[str] = []
        root = Path(self.img_path)
        _require_dir(root.parent, f"data root not found: {root.parent} — pass the MulSen-AD folder")
        _require_dir(root, f"class folder not found: {root} — check the class name against {root.parent}")

    def _samples(self, *rel: str) -> list[tuple[str, str, str | None]]:
        """``(rgb, infrared, stl)`` of the folder ``<modality>/<rel>``, in file-number order. Every
        RGB image needs the infrared image of its number (and the mesh, with ``depth``)."""
        root = Path(self.img_path)
        rgb_dir = root.joinpath("RGB", *rel)
        _require_dir(rgb_dir, f"folder not found: {rgb_dir} — MulSen-AD keeps RGB/, Infrared/ and Pointcloud/ "
                              "with train/ and test/<defect>/ in each class folder")
        rgb, dropped = _numbered(rgb_dir, ".png")
        ir, dropped_ir = _numbered(root.joinpath("Infrared", *rel), ".png")
        pc, dropped_pc = _numbered(root.joinpath("Pointcloud", *rel), ".stl")
        ignored = dropped + dropped_ir + dropped_pc
        if ignored:
            self.notes.append(f"{'/'.join(rel)} of {root}: {len(ignored)} files without a number before "
                              f"the extension ignored, as the preview does ({ignored[0]}, …)")
        needed = [("infrared image", "Infrared", ir)] + ([("mesh", "Pointcloud", pc)] if self.depth else [])
        for what, modality, found in needed:
            for number in sorted(rgb):
                if number not in found:
                    raise DatasetError(f"no {what} numbered {number} in {root.joinpath(modality, *rel)} for "
                                       f"{rgb[number]} — every sample needs all its modalities")
        extra = sorted(set(ir) - set(rgb))
        if extra:
            raise DatasetError(f"infrared image {ir[extra[0]]} has no RGB image numbered {extra[0]} in {rgb_dir} "
                               "— every sample needs all its modalities")
        return [(rgb[n], ir[n], pc.get(n)) for n in sorted(rgb)]

    def __len__(self) -> int:
        return len(self.img_paths)

    def files(self) -> list[str]:
        """Every file the items read: RGB and infrared images, then meshes (with ``depth``)."""
        files = [p for rgb, ir, _ in self.img_paths for p in (rgb, ir)]
        return files + ([pc for _, _, pc in self.img_paths] if self.depth else [])

    def image_files(self) -> list[str]:
        """The images and masks among ``files()`` (what ``check_images`` decodes)."""
        return [p for p in self.files() if p.endswith(".png")]

    def mask_pairs(self) -> list[tuple[str, str]]:
        return []

    def _images(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb_path, ir_path, _ = self.img_paths[idx]
        # both read as RGB (the infrared grey replicated to 3 channels), through the same transform
        return self.rgb_transform(load_rgb(rgb_path)), self.rgb_transform(load_rgb(ir_path))

    def _depth_map(self, idx: int, size: tuple[int, int]) -> torch.Tensor:
        """The mesh's depth map at ``size`` as a 3-channel 8-bit image through the image transform
        (the preview passed the float array itself, which torchvision rejects)."""
        depth = stl_to_depth_map(self.img_paths[idx][2], image_size=size)
        grey = np.rint(np.clip(depth, 0, 1) * 255).astype(np.uint8)
        return self.depth_transform(Image.fromarray(grey).convert("RGB"))


class MulSenTrainDataset(_MulSenDataset):
    """``<dataset_path>/<class_name>/{RGB,Infrared}/train/*.png`` (and ``Pointcloud/train/*.stl``)
    paired by file number. Item ``((rgb, ir), 0)``, each ``3 × H × W``; with ``depth``
    ``((rgb, ir, depth_map), 0)``, the depth map of the mesh made at ``H × W`` then transformed."""

    def __init__(self, class_name: str, transform: Callable, gt_transform: Callable,
                 depth: bool = False, dataset_path: str | os.PathLike = "") -> None:
        super().__init__(class_name, transform, gt_transform, depth, dataset_path)
        self.img_paths = self._samples("train")
        self.labels = [0] * len(self.img_paths)
        if not self.img_paths:
            raise DatasetError(f"no numbered images in {Path(self.img_path, 'RGB', 'train')}")

    def __getitem__(self, idx: int) -> tuple:
        img, infra = self._images(idx)
        if self.depth:
            return (img, infra, self._depth_map(idx, (img.shape[1], img.shape[2]))), self.labels[idx]
        return (img, infra), self.labels[idx]


def _csv_labels(path: Path, n_samples: int) -> list[tuple[int, int, int]]:
    """``(label_rgb, label_infra, label_pc)`` per row of a ``data.csv`` (header skipped; columns
    ``object, label_rgb, label_infra, label_pc``); one row per sample, in file-number order."""
    if not path.is_file():
        raise DatasetError(f"label file not found: {path} — MulSen-AD keeps the labels of each defect "
                           "folder in RGB/GT/<defect>/data.csv")
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row][1:]
    labels = []
    for line, row in enumerate(rows, start=2):
        try:
            if len(row) != 4:
                raise ValueError(f"{len(row)} columns")
            labels.append((int(row[1]), int(row[2]), int(row[3])))
        except ValueError as e:
            raise DatasetError(f"{path}, row {line}: expected 'object,label_rgb,label_infra,label_pc' with "
                               f"integer labels ({e}) — fix the file") from e
    if len(labels) != n_samples:
        raise DatasetError(f"{path} has {len(labels)} label rows but its folder has {n_samples} samples — "
                           "one row per sample, in file-number order")
    return labels


class MulSenTestDataset(_MulSenDataset):
    """``<dataset_path>/<class_name>/{RGB,Infrared}/test/<defect>/*.png`` paired by file number;
    ``good`` is normal, other folders take their labels from ``RGB/GT/<defect>/data.csv`` (row
    ``i`` for the ``i``-th sample in number order).

    Item ``((rgb, ir), (l_rgb, l_ir, l_pc), (rgb_mask, ir_mask), (rgb_path, ir_path))``: masks
    ``1 × H × W`` in {0., 1.}: zeros where the modality's label is 0, else
    ``<modality>/GT/<defect>/<name>.png`` through ``gt_transform``, thresholded ``> 0.5``.
    With ``depth`` every part gets a third member: the depth map, the point-cloud mask
    (``create_depth_mask_from_3d_mask`` of ``Pointcloud/GT/<defect>/<name>.txt`` at ``H × H``,
    zeros for label 0), the mesh path.
    """

    def __init__(self, class_name: str, transform: Callable, gt_transform: Callable,
                 depth: bool = False, dataset_path: str | os.PathLike = "") -> None:
        super().__init__(class_name, transform, gt_transform, depth, dataset_path)
        self.defects: list[str] = []
        test_dir = Path(self.img_path, "RGB", "test")
        _require_dir(test_dir, f"folder not found: {test_dir} — MulSen-AD keeps RGB/test/<defect>/ per class")
        for defect in _subfolders(test_dir):
            samples = self._samples("test", defect)
            if defect == "good":
                labels = [(0, 0, 0)] * len(samples)
            else:
                labels = _csv_labels(Path(self.img_path, "RGB", "GT", defect, "data.csv"), len(samples))
            self.img_paths += samples
            self.labels += labels
            self.defects += [defect] * len(samples)
        if not self.img_paths:
            raise DatasetError(f"no numbered images in {test_dir}/<defect>/")
        missing = [p for p in self.files() if not os.path.isfile(p)]
        if missing:
            raise DatasetError(f"mask file not found: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                               if len(missing) > 1 else "") + " — a sample labelled anomalous in its "
                               "data.csv needs its mask in <modality>/GT/<defect>/")

    def mask_path(self, idx: int, modality: int) -> str | None:
        """The mask of sample ``idx`` for modality 0 (RGB), 1 (infrared) or 2 (point cloud, .txt),
        None where its label is 0: ``<modality>/GT/<defect>/<name>`` (the preview replaced every
        ``test`` in the path by ``GT``)."""
        if self.labels[idx][modality] == 0:
            return None
        path = self.img_paths[idx][modality]
        name = Path(path).name if modality < 2 else Path(path).stem + ".txt"
        return os.path.join(self.img_path, MODALITIES[modality], "GT", self.defects[idx], name)

    def files(self) -> list[str]:
        """Every file the items read: images (meshes with ``depth``), then masks."""
        kinds = (0, 1, 2) if self.depth else (0, 1)
        masks = [self.mask_path(i, k) for i in range(len(self)) for k in kinds]
        return super().files() + [m for m in masks if m is not None]

    def mask_pairs(self) -> list[tuple[str, str]]:
        """``(image, mask)`` of every anomalous RGB and infrared image."""
        pairs = [(self.img_paths[i][k], self.mask_path(i, k)) for i in range(len(self)) for k in (0, 1)]
        return [(img, mask) for img, mask in pairs if mask is not None]

    def _mask(self, idx: int, modality: int, img: torch.Tensor) -> torch.Tensor:
        path = self.mask_path(idx, modality)
        if path is None:
            return torch.zeros([1, img.shape[1], img.shape[2]])
        mask = self.gt_transform(load_mask(path))
        return torch.where(mask > 0.5, 1., .0)

    def _depth_mask(self, idx: int, size: int) -> torch.Tensor:
        path = self.mask_path(idx, 2)
        if path is None:
            return torch.zeros([1, size, size])
        points = read_anomaly_points(path)
        mask = create_depth_mask_from_3d_mask(self.img_paths[idx][2], points, image_size=(size, size))
        return torch.from_numpy(mask).unsqueeze(0).float()

    def __getitem__(self, idx: int) -> tuple:
        img, infra = self._images(idx)
        rgb_path, ir_path, pc_path = self.img_paths[idx]
        masks = (self._mask(idx, 0, img), self._mask(idx, 1, infra))
        if not self.depth:
            return (img, infra), self.labels[idx], masks, (rgb_path, ir_path)
        size = img.shape[1]  # the preview makes the depth map and its mask square at the image height
        depth_map = self._depth_map(idx, (size, size))
        return ((img, infra, depth_map), self.labels[idx], (*masks, self._depth_mask(idx, size)),
                (rgb_path, ir_path, pc_path))
