"""The results.md page (engine.report_pages) and the paper's numbers beside it (the recipe)."""
from __future__ import annotations

import dataset
from engine.report_pages import results_markdown
from recipes.dinomaly import PAPER_SETTING, paper_differences, paper_means

VALUES = {"aaa": [0.99, 1.0, 0.9876, 0.5, 0.25, 0.125, 0.0625],
          "bbb": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}


def test_table_in_percent_with_bold_mean_and_no_paper_row():
    text = results_markdown({**VALUES, "Mean": [0.745] * 7}, "dinomaly_mvtec_sep",
                                   iteration=4)
    lines = text.splitlines()
    assert lines[0] == "# dinomaly_mvtec_sep"
    assert "Latest evaluation (iteration 4), percent." in lines
    header = lines.index("| class | I-AUROC | I-AP | I-F1 | P-AUROC | P-AP | P-F1 | P-AUPRO |")
    assert lines[header + 2] == "| aaa | 99.00 | 100.00 | 98.76 | 50.00 | 25.00 | 12.50 | 6.25 |"
    assert lines[header + 3] == "| bbb | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 |"
    assert lines[header + 4] == "| **Mean** |" + " **74.50** |" * 7
    assert "paper" not in text and text.endswith("|\n")


def test_paper_row_and_differences_for_multi_class():
    assert paper_means("mvtec", separate=True) is None
    paper = paper_means("visa", separate=False)
    assert paper == (98.7, 98.9, 96.2, 98.7, 53.2, 55.7, 94.5)
    assert paper_means("realiad", False)[0] == 89.3
    assert paper_means("mvtec", False)[4] == 69.3
    cfg = {"encoder": "dinov2reg_vit_small_14", "encoder_weights": "random", "total_iters": 300,
           "batch_size": 16, "image_size": 448, "crop_size": 392, "classes": ["candle"]}
    diffs = paper_differences(cfg, dataset.VISA_CLASSES)
    assert diffs == ["encoder: 'dinov2reg_vit_small_14' (paper: 'dinov2reg_vit_base_14')",
                     "encoder_weights: 'random' (paper: 'official')",
                     "total_iters: 300 (paper: 10000)", "classes: 1 (paper: all 12)"]
    full = {**cfg, **PAPER_SETTING, "classes": list(reversed(dataset.VISA_CLASSES))}
    assert paper_differences(full, dataset.VISA_CLASSES) == []

    text = results_markdown({"candle": VALUES["aaa"], "Mean": VALUES["aaa"]}, "visa",
                                   None, paper, diffs)
    assert "| paper (mean) | 98.7 | 98.9 | 96.2 | 98.7 | 53.2 | 55.7 | 94.5 |" in text
    assert "- total_iters: 300 (paper: 10000)" in text and "(iteration" not in text
    assert "not comparable" in results_markdown({"Mean": VALUES["aaa"]}, "t", 1, paper,
                                                       diffs)
    assert "not comparable" not in results_markdown({"Mean": VALUES["aaa"]}, "t", 1,
                                                           paper, [])
