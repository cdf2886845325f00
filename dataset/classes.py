"""The class lists of the datasets, in the paper's order: the order fixes the
multi-class training set's order, hence the run."""
import os
from pathlib import Path

from .errors import DatasetError
from .folders import _subfolders

MVTEC_CLASSES = ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule",
                 "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"]
VISA_CLASSES = ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
                "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
REALIAD_CLASSES = ["audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood",
                   "mint", "mounts", "pcb", "phone_battery", "plastic_nut", "plastic_plug",
                   "porcelain_doll", "regulator", "rolled_strip_base", "sim_card_set", "switch",
                   "tape", "terminalblock", "toothbrush", "toy", "toy_brick", "transistor1", "usb",
                   "usb_adaptor", "u_block", "vcpill", "wooden_beads", "woodstick", "zipper"]
# MPDD (Jezek et al. 2021, metal parts; the MVTec AD layout): the reference's MPDD script
MPDD_CLASSES = ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate",
                "tubes"]
# BTAD (Mishra et al. 2021; the preview code's "btech" list), MVTec layout with train/ok,
# test/{ok,ko}, ground_truth/ko
BTAD_CLASSES = ["01", "02", "03"]
# MIAD (Bao et al. 2023), MVTec layout
MIAD_CLASSES = ["catenary_dropper", "electrical_insulator", "metal_welding", "nut_and_bolt",
                "photovoltaic_module", "wind_turbine", "witness_mark"]
# Uni-Medical (brain MRI, liver CT, retinal OCT), MVTec layout
UNI_MEDICAL_CLASSES = ["BraTS2021", "LIVER", "RESC"]

# The Dinomaly2 preview code's 2D script: the class list from the data path, first match wins
CLASSES_BY_PATH = [("mvtec", MVTEC_CLASSES), ("visa", VISA_CLASSES), ("btech", BTAD_CLASSES),
                   ("mpdd", MPDD_CLASSES), ("miad", MIAD_CLASSES),
                   ("medical", UNI_MEDICAL_CLASSES)]


def classes_for_path(data_path: str | os.PathLike) -> list[str]:
    """The class list the preview code's 2D script picks for `data_path`: the list of the
    first name of `CLASSES_BY_PATH` contained in the lower-cased path; otherwise every
    folder in `data_path` (sorted and without hidden folders here; the preview takes
    `os.listdir`'s unsorted order, files included)."""
    lowered = str(data_path).lower()
    for name, classes in CLASSES_BY_PATH:
        if name in lowered:
            return list(classes)
    root = Path(data_path)
    if not root.is_dir():
        raise DatasetError(f"data root not found: {root} — pass --data_path pointing to the "
                           "folder that holds the class folders")
    return _subfolders(root)
# MVTec 3D-AD in the Dinomaly2 preview's RGB-D script order
MVTEC3D_CLASSES = ["cable_gland", "bagel", "peach", "carrot", "dowel", "foam", "cookie", "rope",
                   "potato", "tire"]
# MulSen-AD (RGB, infrared, point cloud), the preview's mulsen_classes() order
MULSEN_CLASSES = ["capsule", "cotton", "cube", "spring_pad", "screw", "screen", "piggy", "nut",
                  "flat_pad", "plastic_cylinder", "zipper", "button_cell", "toothbrush",
                  "solar_panel", "light"]
# MANTA-Tiny: <group>/<class> folders, the preview's multi-view script order
MANTA_CLASSES = [f"{group}/{name}" for group, names in (
    ("agriculture", ("maize", "paddy", "soybean", "wheat")),
    ("electronics", ("block_inductor", "copper_standoff", "flat_nut", "led", "led_pad", "long_button",
                     "power_inductor", "short_button", "thin_resistor", "type_c", "wafer_resistor")),
    ("groceries", ("coffee_beans", "goji_berries", "pistachios")),
    ("mechanics", ("button", "gear", "nut", "nut_cap", "red_washer", "round_button_cap", "screw",
                   "square_button_cap", "terminal", "wire_cap", "yellow_green_washer")),
    ("medicine", ("capsule", "coated_tablet", "embossed_tablet", "lettered_tablet", "oblong_tablet",
                  "pink_tablet", "red_tablet", "white_tablet", "yellow_tablet")),
) for name in names]
