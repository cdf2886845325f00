"""prepare_data/prepare_visa.py on a synthetic raw VisA tree."""
import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset
import synth

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "prepare_data" / "prepare_visa.py"
_spec = importlib.util.spec_from_file_location("prepare_visa", SCRIPT)
prepare_visa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_visa)


@pytest.fixture
def visa(tmp_path):
    return synth.make_visa_raw(tmp_path / "VisA", objects=("candle", "pcb1"), n_normal=6, n_anomaly=4, size=32)


def run(visa: Path, out: Path, split_type: str, *extra: str) -> None:
    prepare_visa.main(["--split-type", split_type, "--data-folder", str(visa), "--save-folder", str(out), *extra])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_1cls_layout_and_masks(visa, tmp_path):
    out = tmp_path / "VisA_pytorch"
    run(visa, out, "1cls")  # split file found at <data-folder>/split_csv/1cls.csv
    obj = out / "1cls" / "candle"
    assert names(out / "1cls") == ["candle", "pcb1"]
    assert names(obj) == ["ground_truth", "test", "train"]
    assert names(obj / "train" / "good") == ["0000.JPG", "0001.JPG", "0002.JPG", "0003.JPG"]
    assert names(obj / "test" / "good") == ["0004.JPG", "0005.JPG"]
    assert names(obj / "test" / "bad") == ["000.JPG", "001.JPG", "002.JPG", "003.JPG"]
    assert names(obj / "ground_truth") == ["bad"]
    assert names(obj / "ground_truth" / "bad") == ["000.png", "001.png", "002.png", "003.png"]
    # images are byte-identical copies
    src = visa / "candle" / "Data" / "Images" / "Anomaly" / "002.JPG"
    assert (obj / "test" / "bad" / "002.JPG").read_bytes() == src.read_bytes()
    # masks: every non-zero label -> 255, zeros kept, same size, mode L
    for k in range(4):
        raw = np.array(Image.open(visa / "candle" / "Data" / "Masks" / "Anomaly" / f"{k:03d}.png"))
        mask = Image.open(obj / "ground_truth" / "bad" / f"{k:03d}.png")
        assert mask.mode == "L"
        np.testing.assert_array_equal(np.array(mask), np.where(raw != 0, 255, 0))
        assert raw.max() < 255 and (raw != 0).any()  # the synthetic labels are not 255 already
    # the result is readable by the MVTec dataset, images paired with masks
    ds = dataset.MVTecDataset(obj, *dataset.get_data_transforms(32, 28), phase="test")
    assert ds.labels == [1, 1, 1, 1, 0, 0]
    assert [Path(p).stem for p in ds.gt_paths[:4]] == [Path(p).stem for p in ds.img_paths[:4]]


@pytest.mark.parametrize("split_type,n_train_bad", [("2cls_highshot", 2), ("2cls_fewshot", 1)])
def test_2cls_layout(visa, tmp_path, split_type, n_train_bad):
    out = tmp_path / "VisA_pytorch"
    run(visa, out, split_type)
    obj = out / split_type / "pcb1"
    assert names(obj) == ["ground_truth", "test", "train"]
    assert names(obj / "ground_truth") == ["test", "train"]
    assert names(obj / "train" / "good") == ["0000.JPG", "0001.JPG", "0002.JPG", "0003.JPG"]
    assert names(obj / "test" / "good") == ["0004.JPG", "0005.JPG"]
    train_bad = [f"{k:03d}" for k in range(n_train_bad)]
    test_bad = [f"{k:03d}" for k in range(n_train_bad, 4)]
    assert names(obj / "train" / "bad") == [f"{s}.JPG" for s in train_bad]
    assert names(obj / "test" / "bad") == [f"{s}.JPG" for s in test_bad]
    assert names(obj / "ground_truth" / "train" / "bad") == [f"{s}.png" for s in train_bad]
    assert names(obj / "ground_truth" / "test" / "bad") == [f"{s}.png" for s in test_bad]
    for split, stems in (("train", train_bad), ("test", test_bad)):
        for s in stems:
            raw = np.array(Image.open(visa / "pcb1" / "Data" / "Masks" / "Anomaly" / f"{s}.png"))
            mask = np.array(Image.open(obj / "ground_truth" / split / "bad" / f"{s}.png"))
            np.testing.assert_array_equal(mask, np.where(raw != 0, 255, 0))


def test_rerun_is_idempotent_and_user_files_are_not_overwritten(visa, tmp_path, capsys):
    out = tmp_path / "VisA_pytorch"
    run(visa, out, "1cls")
    run(visa, out, "1cls")  # identical outputs: fine
    assert "already up to date" in capsys.readouterr().out
    target = out / "1cls" / "candle" / "train" / "good" / "0001.JPG"
    target.write_bytes(b"user edit")
    with pytest.raises(SystemExit) as exit_:
        run(visa, out, "1cls")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{target} exists with different content" in err and "--overwrite" in err
    assert target.read_bytes() == b"user edit"
    run(visa, out, "1cls", "--overwrite")
    assert target.read_bytes() == (visa / "candle" / "Data" / "Images" / "Normal" / "0001.JPG").read_bytes()
    assert not list(out.rglob("*.tmp*"))  # no temporary files left


def test_explicit_split_file(visa, tmp_path):
    custom = tmp_path / "my_split.csv"
    rows = list(csv.reader(open(visa / "split_csv" / "1cls.csv")))
    with open(custom, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[0] == "pcb1"])
    out = tmp_path / "out"
    run(visa, out, "1cls", "--split-file", str(custom))
    assert names(out / "1cls") == ["pcb1"]


def test_missing_split_file(visa, tmp_path, capsys):
    (visa / "split_csv" / "2cls_fewshot.csv").unlink()
    with pytest.raises(SystemExit) as exit_:
        run(visa, tmp_path / "out", "2cls_fewshot")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"split file not found: {visa / 'split_csv' / '2cls_fewshot.csv'}" in err and "--split-file" in err
    assert not (tmp_path / "out").exists()


def test_missing_source_image_writes_nothing(visa, tmp_path, capsys):
    gone = visa / "pcb1" / "Data" / "Images" / "Anomaly" / "003.JPG"
    gone.unlink()
    with pytest.raises(SystemExit):
        run(visa, tmp_path / "out", "1cls")
    assert f"source file not found: {gone}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    gone_mask = visa / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    gone_mask.unlink()
    with pytest.raises(prepare_visa.PrepareError, match=f"source file not found: {gone_mask}.*and 1 more"):
        prepare_visa.prepare("1cls", visa, tmp_path / "out")


def test_bad_csv_header(visa, tmp_path):
    (visa / "split_csv" / "1cls.csv").write_text("a,b,c\n")
    with pytest.raises(prepare_visa.PrepareError, match="header object,split,label,image,mask"):
        prepare_visa.prepare("1cls", visa, tmp_path / "out")


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data-folder", str(tmp_path / "absent"),
                           "--save-folder", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"prepare_visa: error: VisA folder not found: {tmp_path / 'absent'} — "
                                   "pass the unpacked archive with --data-folder")


def test_corrupt_mask_is_named(visa, tmp_path, capsys):
    bad = visa / "candle" / "Data" / "Masks" / "Anomaly" / "002.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SystemExit):
        run(visa, tmp_path / "out", "1cls")
    assert f"cannot read mask {bad}" in capsys.readouterr().err
