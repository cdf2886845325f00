"""Datasets and transforms of Dinomaly, with the reference's public names
(`from dataset import MVTecDataset` as in the reference; one building block per file).

Layouts:
- MVTec AD and prepared VisA: ``<data>/<class>/{train/good, test/<defect>, ground_truth/<defect>}``.
- BTAD: the MVTec AD layout with ``train/ok``, ``test/{ok,ko}``, ``ground_truth/ko``.
- Real-IAD: ``<data>/realiad_1024/<category>/...`` with the split in
  ``<data>/realiad_jsons/realiad_jsons/<category>.json``.
- Dinomaly2's multi-view (``RealIADDatasetv2``, ``MANTATinyDataset``), RGB + depth
  (``MVTec3DDataset``) and RGB + infrared (``MulSenTrainDataset``/``MulSenTestDataset``) sets:
  see their docstrings; their items differ from the ones below.

Items: training ``(img, label)``; test ``(img, gt, label, img_path)`` with
``img`` ``3 × isize × isize`` (normalised), ``gt`` ``1 × isize × isize`` in [0, 1]
(all zeros for normal images), ``label`` 0 normal / 1 anomalous, ``img_path`` the
joined path string.

Every bad input raises ``DatasetError`` with one message that names the path and
says what to do.
"""
from .checks import check_mask_sizes, image_paths
from .classes import (BTAD_CLASSES, MANTA_CLASSES, MIAD_CLASSES, MPDD_CLASSES, MULSEN_CLASSES,
                      MVTEC3D_CLASSES, MVTEC_CLASSES, REALIAD_CLASSES, UNI_MEDICAL_CLASSES,
                      VISA_CLASSES, classes_for_path)
from .depth import depth_to_image, read_depth
from .errors import DatasetError
from .fewshot import fewshot_samples
from .folders import IMAGE_EXTENSIONS, NORMAL_FOLDERS, discover_classes, is_hidden, is_image_name
from .images import READABLE_MODES, check_images, load_mask, load_rgb
from .layouts import (DATASETS, MVTEC_LAYOUT, REALIAD_LAYOUT, DatasetSpec, Layout, dataset_for_path,
                      dataset_spec, realiad_categories, register_dataset)
from .manta import MANTATinyDataset
from .mulsen import (MulSenTestDataset, MulSenTrainDataset, create_depth_mask_from_3d_mask,
                     mulsen_classes, stl_to_depth_map)
from .mvtec import MVTecDataset, mvtec_train_set
from .mvtec3d import MVTec3DDataset
from .realiad import RealIADDataset
from .realiad_v2 import RealIADDatasetv2, multiview_classes, multiview_layout, object_key
from .shared_cache import SharedCache
from .stl import read_stl, stl_vertices
from .strong_transforms import RandomRotate90, get_strong_transforms
from .transforms import IMAGENET_MEAN, IMAGENET_STD, get_data_transforms, split_resize
from .worker_streams import PREVIEW_WORKERS, WorkerStreams

__all__ = [
    "DatasetError", "MVTEC_CLASSES", "VISA_CLASSES", "REALIAD_CLASSES", "MPDD_CLASSES",
    "BTAD_CLASSES", "MIAD_CLASSES", "UNI_MEDICAL_CLASSES", "classes_for_path", "fewshot_samples",
    "get_strong_transforms", "RandomRotate90", "NORMAL_FOLDERS", "get_data_transforms",
    "split_resize", "SharedCache", "MVTecDataset", "RealIADDataset",
    "mvtec_train_set", "discover_classes", "check_images", "check_mask_sizes", "image_paths",
    "load_rgb", "load_mask", "IMAGE_EXTENSIONS", "is_image_name", "is_hidden", "READABLE_MODES",
    "IMAGENET_MEAN", "IMAGENET_STD", "DATASETS", "DatasetSpec", "Layout", "MVTEC_LAYOUT",
    "REALIAD_LAYOUT", "dataset_for_path", "dataset_spec", "realiad_categories", "register_dataset",
    # Dinomaly2: multi-view, RGB + depth, RGB + infrared
    "RealIADDatasetv2", "multiview_classes", "multiview_layout", "object_key", "MANTATinyDataset",
    "MANTA_CLASSES", "MVTec3DDataset", "MVTEC3D_CLASSES", "depth_to_image", "read_depth",
    "MulSenTrainDataset", "MulSenTestDataset", "mulsen_classes", "MULSEN_CLASSES", "stl_to_depth_map",
    "create_depth_mask_from_3d_mask", "read_stl", "stl_vertices",
    # Dinomaly2's few-shot augmentation, drawn as the preview's loader processes draw it
    "WorkerStreams", "PREVIEW_WORKERS",
]


def _register_all() -> None:
    """Import every module of the package: a module that registers a dataset
    (`layouts.register_dataset`) is registered by being here (a new layout is a new file)."""
    import importlib
    import pkgutil
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_all()
