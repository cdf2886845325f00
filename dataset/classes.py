"""The class lists of the datasets, in the paper's order: the order fixes the
multi-class training set's order, hence the run."""

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
