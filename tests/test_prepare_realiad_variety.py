"""prepare_data/prepare_realiad_variety.py end to end on a tiny raw Real-IAD Variety tree."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "prepare_data" / "prepare_realiad_variety.py"
_spec = importlib.util.spec_from_file_location("prepare_realiad_variety", SCRIPT)
prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prep)

SIDE = 48  # stands in for 1024 (the default), to keep the test fast


def make_raw(root: Path) -> Path:
    """<root>/realiadvariety_raw/<cls>/<cls>/... (nested) with non-square images, masks of three modes,
    and the json the dataset reads."""
    rng = np.random.default_rng(0)
    cat = root / "realiadvariety_raw" / "bolt" / "bolt"
    records = []
    for k, (kind, mode) in enumerate((("OK", None), ("NG", "L"), ("NG", "P"), ("NG", "RGB"))):
        rel = f"{kind}/S{k:04d}/bolt_{k:04d}_C1.png"
        (cat / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(cat / rel)
        mask_rel = None
        if mode:
            mask_rel = rel.replace(".png", "_mask.png")
            m = np.zeros((30, 40), np.uint8)
            m[5:20, 8 + k:30] = 255
            img = Image.fromarray(m, mode="L")
            (img.convert(mode) if mode != "P" else img.convert("P")).save(cat / mask_rel)
        records.append({"image_path": rel, "mask_path": mask_rel, "anomaly_class": kind})
    (root / "realiad_jsons").mkdir()
    (root / "realiad_jsons" / "bolt.json").write_text(json.dumps({"train": records[:1], "test": records}))
    (cat / ".hidden.png").write_bytes(b"junk")  # hidden: never read
    return root / "realiadvariety_raw"


def run(raw: Path, out: Path, capsys) -> str:
    prep.main(["--data-folder", str(raw), "--save-folder", str(out), "--size", str(SIDE), "--workers", "2"])
    return capsys.readouterr().out


def test_resizes_like_the_preview_and_the_dataset_reads_it(tmp_path, capsys):
    raw = make_raw(tmp_path)
    out = tmp_path / "realiadvariety_1024"
    said = run(raw, out, capsys)
    assert "4 images and 3 masks" in said and "(0 already done)" in said
    for src in sorted(raw.rglob("*.png")):
        if src.name.startswith("."):
            assert not (out / src.relative_to(raw)).exists()
            continue
        got = Image.open(out / src.relative_to(raw))
        if "_mask" in src.name:
            grey = Image.open(src).convert("L").resize((SIDE, SIDE), Image.BICUBIC)
            want = np.where(np.asarray(grey) > 127, 255, 0)
            assert got.mode == "L" and set(np.unique(np.asarray(got))) <= {0, 255}
        else:
            want = np.asarray(Image.open(src).resize((SIDE, SIDE), Image.BICUBIC))
        np.testing.assert_array_equal(np.asarray(got), want)
    tf = dataset.get_data_transforms(32, 28)
    ds = dataset.RealIADDatasetv2(tmp_path, "bolt", *tf, "test", split="realiad_jsons", version="realiadvariety_1024")
    dataset.check_mask_sizes(ds)
    assert ds.img_root == str(out / "bolt" / "bolt") and len(ds) == 4


def test_second_run_writes_nothing(tmp_path, capsys):
    raw = make_raw(tmp_path)
    out = tmp_path / "out"
    run(raw, out, capsys)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert "(7 already done)" in run(raw, out, capsys)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    victim = next(p for p in out.rglob("*_mask.png"))
    victim.write_bytes(victim.read_bytes()[:40])  # a damaged output is redone
    assert "(6 already done)" in run(raw, out, capsys)
    assert Image.open(victim).size == (SIDE, SIDE)
    assert not list(out.rglob("*.tmp"))


def test_corrupt_source_is_named_and_nothing_written(tmp_path, capsys):
    raw = make_raw(tmp_path)
    bad = next(p for p in sorted(raw.rglob("*_C1.png")) if "NG" in str(p))
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        run(raw, out, capsys)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"prepare_realiad_variety: error: cannot read image {bad}") and "\n" not in err
    assert not out.exists()


def test_refuses_to_write_into_the_originals(tmp_path):
    raw = make_raw(tmp_path)
    with pytest.raises(prep.PrepareError, match="inside --data-folder"):
        prep.prepare(raw, raw / "resized", size=SIDE)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data-folder", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"prepare_realiad_variety: error: raw folder not found: {tmp_path / 'absent'} — "
                                   "pass the unpacked realiadvariety_raw folder with --data-folder")
