"""A method evaluated on objects of several views, end to end through the unchanged engine
(objects_recipe.py registers it): training on single views, the evaluation on objects with
heatmaps per view, results.csv / thresholds.json / report.html with the object level,
`--eval_only` and torchrun giving the same numbers, and predict.py deciding per object."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from objects_recipe import SPLIT, VERSION, Config
from test_ddp import free_port
from test_realiad_v2 import make_multiview
from test_report_html import check_page

from engine.cli import main
from engine.eval_spec import MULTIVIEW_METRICS
from engine.predict_command import main as predict_main

HERE = Path(__file__).resolve().parent


def records(n: int, anomalous_every: int = 3):
    out = []
    for k in range(n):
        bad = k % anomalous_every == 1
        for v in (1, 2):
            folder = f"NG/AK/S{k:04d}" if bad else f"OK/S{k:04d}"
            out.append((f"{folder}/p_C{v}.png", f"{folder}/p_C{v}_mask.png" if bad else None, "AK" if bad else "OK"))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("objects") / "data"
    train = [(f"OK/T{k:04d}/p_C{v}.png", None, "OK") for k in range(3) for v in (1, 2)]
    for name in ("aaa", "bbb"):
        make_multiview(root, name, SPLIT, VERSION, False, test=records(5), train=train)
    return root


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


RUN = [*TINY, "--total_iters", "2", "--eval_every", "2", "--classes", "aaa,bbb"]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("runs")
    main(Config(dataset="toy_multiview"), [*RUN, "--data_path", str(data), "--save_maps",
                                           "--save_dir", str(save), "--save_name", "run"])
    return save / "run"


def test_objects_through_a_whole_run(run):
    results = rows(run / "results.csv")
    assert list(results[0])[2:] == list(MULTIVIEW_METRICS)
    assert [r["class"] for r in results] == ["aaa", "bbb", "Mean"]
    log = (run / "log.txt").read_text()
    assert "train image number:12" in log  # single views
    assert [ln for ln in log.splitlines() if ln.startswith("aaa: ")][0].count("O-Auroc:") == 1
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["object_score"] == {"rule": "top_ratio", "ratio": 0.01}
    aaa = thresholds["classes"]["aaa"]
    assert (aaa["n_normal_objects"], aaa["n_anomalous_objects"]) == (3, 2)
    assert (aaa["n_normal"], aaa["n_anomalous"]) == (6, 4)
    assert "object" in thresholds["pooled"]
    # one heatmap per view (distinct files), and the object scores' histogram
    drawn = sorted(p.relative_to(run / "maps" / "aaa").as_posix() for p in (run / "maps" / "aaa").rglob("*.png"))
    assert len([d for d in drawn if "_score" in d]) == 10 and "_objects_histogram.png" in drawn
    check_page(run)
    assert "ADEval" in (run / "results.md").read_text()


def test_eval_only_gives_the_run_s_numbers(run, data, tmp_path):
    main(Config(dataset="toy_multiview"), [*RUN, "--data_path", str(data), "--eval_only",
                                           "--checkpoint", str(run / "model.pth"),
                                           "--save_dir", str(tmp_path), "--save_name", "eval"])
    assert [list(r.values())[1:] for r in rows(tmp_path / "eval" / "results.csv")] == \
           [list(r.values())[1:] for r in rows(run / "results.csv")]


def test_predict_decides_per_object(run, data, tmp_path):
    objects = tmp_path / "objects"
    imgs = data / VERSION / "aaa"
    for k in (0, 1):
        folder = "NG/AK" if k == 1 else "OK"
        shutil.copytree(imgs / folder / f"S{k:04d}", objects / f"obj{k}",
                        ignore=shutil.ignore_patterns("*_mask.png"))
    predict_main(["--checkpoint", str(run), "--class", "aaa", "--objects", str(objects),
                  "--out", str(tmp_path / "out"), "--device", "cpu", "--save_maps"])
    table = rows(tmp_path / "out" / "objects.csv")
    threshold = json.loads((run / "thresholds.json").read_text())["classes"]["aaa"]["object"]
    assert [(r["object"], r["images"], float(r["threshold"])) for r in table] == \
           [("obj0", "2", threshold), ("obj1", "2", threshold)]
    material = json.loads((run / "report" / "aaa" / "class.json").read_text())
    evaluated = dict(zip(material["objects"]["names"], material["objects"]["scores"]))
    for r, k in zip(table, (0, 1)):  # the evaluation's object score, recomputed
        folder = "NG/AK" if k == 1 else "OK"
        assert float(r["score"]) == pytest.approx(evaluated[str(imgs / folder / f"S{k:04d}" / "p_C1.png")], abs=1e-5)
        assert r["anomalous"] == str(int(float(r["score"]) > threshold))
    images = rows(tmp_path / "out" / "predictions.csv")
    assert len(images) == 4 and images[0]["threshold"] != ""
    assert (tmp_path / "out" / "maps" / "obj1.png").is_file()
    listed = tmp_path / "list.csv"
    listed.write_text("# name,views\n" + "\n".join(
        f"o{k}," + ",".join(str(p) for p in sorted((objects / f'obj{k}').glob('*.png'))) for k in (0, 1)) + "\n")
    predict_main(["--checkpoint", str(run), "--class", "aaa", "--objects", str(listed),
                  "--out", str(tmp_path / "out2"), "--device", "cpu"])
    assert [r["score"] for r in rows(tmp_path / "out2" / "objects.csv")] == [r["score"] for r in table]


def test_predict_objects_needs_a_run_evaluated_on_objects(tiny_run, tmp_path, capsys):
    (tmp_path / "objects" / "o1").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        predict_main(["--checkpoint", str(tiny_run["run_dir"]), "--objects", str(tmp_path / "objects"),
                      "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert stop.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--objects" in err[0]
    assert not (tmp_path / "out").exists()


def launch(args: list[str], processes: int, out: Path) -> subprocess.CompletedProcess:
    """objects_recipe.py alone (1) or under torchrun (> 1), one thread per process."""
    env = {**os.environ, "OBJECTS_TEST_OUT": str(out), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(HERE / "objects_recipe.py"), *args]
    if processes > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
                    "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    return subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_keep_objects_together(data, tmp_path):
    """torchrun: each rank evaluates whole objects of its share; rank 0's results equal one
    process's evaluation of the same model."""
    args = [*RUN, "--data_path", str(data), "--batch_size", "4", "--save_dir", str(tmp_path)]
    two = launch([*args, "--save_name", "two"], 2, tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    # 5 objects, batches of 4: rank 0 the first batch, rank 1 the last object, per class
    assert [json.loads((tmp_path / f"objects_rank{r}.json").read_text()) for r in (0, 1)] == [[4, 4], [1, 1]]
    one = launch([*args, "--eval_only", "--checkpoint", str(tmp_path / "two" / "model.pth"),
                  "--save_name", "one"], 1, tmp_path)
    assert one.returncode == 0, one.stdout + one.stderr
    assert [list(r.values())[1:] for r in rows(tmp_path / "one" / "results.csv")] == \
           [list(r.values())[1:] for r in rows(tmp_path / "two" / "results.csv")]
    assert json.loads((tmp_path / "one" / "thresholds.json").read_text())["classes"] == \
           {k: {**v, "checkpoint": str(tmp_path / "two" / "model.pth"), "iteration": None}
            for k, v in json.loads((tmp_path / "two" / "thresholds.json").read_text())["classes"].items()}
