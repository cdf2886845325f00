"""The engine's test sets of objects (engine.objects, maps, object_metrics, thresholds,
report): object scores, batches of views and of modalities, the maps kept object by object
and gathered across ranks, the class metrics and thresholds of each form against plain
computations, and every output carrying the object level."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from oracles import histogram_metrics_oracle
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from test_evaluation import FakeModel
from test_report_html import check_page
from torch.utils.data import DataLoader

from engine import maps as maps_module
from engine.eval_spec import MULTIVIEW_METRICS, EvalSpec, modality_metric_names
from engine.evaluation import Evaluation, class_metrics
from engine.heatmaps import OBJECTS_HISTOGRAM_NAME, save_class_heatmaps
from engine.maps import EvalMaps, collect_maps
from engine.metrics import binary_metrics
from engine.objects import ObjectScore, ObjectSpec, unpack_modalities, unpack_views
from engine.report import Report, ReportSettings, format_result
from engine.thresholds import PooledThresholds, read_thresholds
from recipes.anomaly_map import AnomalyPipeline

TOP = ObjectSpec(ObjectScore("top_ratio", 0.05))


# ----------------------------------------------------------------------------- scores, batches

def test_object_scores_by_rule():
    torch.manual_seed(0)
    maps = torch.rand(3, 4, 1, 5, 6)
    views = torch.rand(3, 4)
    for b in range(3):
        flat = maps[b].flatten()
        k = int(flat.numel() * 0.1)  # 12 of 120
        top = torch.sort(flat, descending=True)[0][:k].mean()
        assert ObjectScore("top_ratio", 0.1)(maps, views)[b] == top
        assert ObjectScore("top_ratio", 0.0)(maps, views)[b] == flat.max()
        assert ObjectScore("max_view")(maps, views)[b] == views[b].max()
        assert ObjectScore("sum")(maps[:, :2], views[:, :2])[b] == views[b, 0] + views[b, 1]
    score = ObjectScore("top_ratio", 0.01)
    assert ObjectScore.from_json(json.loads(json.dumps(score.as_json()))) == score
    assert "top 1 %" in score.note()
    with pytest.raises(ValueError, match="max_view"):
        ObjectScore("median")


def test_unpacking_views_and_modalities():
    img, gt = torch.zeros(2, 3, 3, 4, 4), torch.zeros(2, 3, 1, 4, 4)
    label = torch.tensor([[0, 1, 0], [0, 0, 0]], dtype=torch.int32)
    paths = [("a/1.png", "b/1.png"), ("a/2.png", "b/2.png"), ("a/3.png", "b/3.png")]  # V of B
    batch = unpack_views((img, gt, label, paths))
    assert batch.paths == [["a/1.png", "a/2.png", "a/3.png"], ["b/1.png", "b/2.png", "b/3.png"]]
    assert batch.object_labels is None
    shared = unpack_views((img, gt, label, ["a.png", "b.png"]))  # one file per object
    assert shared.paths == [["a.png"] * 3, ["b.png"] * 3]
    # modalities: the point cloud's label makes the second object anomalous
    mod = unpack_modalities(((torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)),
                             (torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([0, 1])),
                             (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),
                             (("r1", "r2"), ("i1", "i2"))))
    assert mod.images.shape == (2, 2, 3, 4, 4) and torch.equal(mod.images[:, 1], torch.ones(2, 3, 4, 4))
    assert mod.labels.tolist() == [[1, 0], [0, 0]] and mod.object_labels.tolist() == [1, 1]
    assert mod.paths == [["r1", "i1"], ["r2", "i2"]]


def object_items(n: int = 6, views: int = 3, size: int = 32):
    """Objects of `views` textures; objects 1, 3 with a bright square on view 0 (masked)."""
    gen = torch.Generator().manual_seed(5)
    items = []
    for k in range(n):
        img = torch.rand(views, 3, size, size, generator=gen) * 0.5
        gt = torch.zeros(views, 1, size, size)
        if k % 2:
            img[0, :, 8:16, 10:18] += 0.5
            gt[0, :, 8:16, 10:18] = 1
        items.append((img, gt, gt.flatten(1).amax(dim=1) > 0, [f"/d/o{k}/v{v}.png" for v in range(views)]))
    return items


def test_collect_maps_keeps_objects_together():
    model, items = FakeModel(), object_items()
    pipeline = AnomalyPipeline(model, 16, 0.01)
    got = collect_maps(pipeline, DataLoader(items, batch_size=4), "cpu", 16, objects=TOP)
    assert got.maps.shape == (18, 16, 16) and got.object_scores.shape == (6,)
    assert got.objects.tolist() == [k for k in range(6) for _ in range(3)]
    assert got.views.tolist() == [0, 1, 2] * 6
    assert got.paths[4] == "/d/o1/v1.png"
    assert got.object_labels.tolist() == [False, True] * 3
    assert got.labels.reshape(6, 3)[:, 0].tolist() == [False, True] * 3
    with torch.no_grad():
        flat = [(pipeline(img), gt) for img, gt, _, _ in items]  # each object's views alone
    for k, ((amap, score), gt) in enumerate(flat):
        torch.testing.assert_close(torch.from_numpy(got.maps[3 * k:3 * k + 3]), amap[:, 0], rtol=0, atol=1e-6)
        assert got.object_scores[k] == pytest.approx(float(TOP.score(amap[None], score[None])), abs=1e-6)
    per_view = collect_maps(pipeline, DataLoader(items, batch_size=4), "cpu", 16,
                            objects=ObjectSpec(ObjectScore("max_view"), forward="per_view"))
    np.testing.assert_allclose(per_view.object_scores, got.scores.reshape(6, 3).max(axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="same number of images"):
        collect_maps(pipeline, DataLoader(items[:2] + object_items(2, views=4), batch_size=2), "cpu",
                     16, objects=TOP)


def test_gather_puts_every_rank_s_objects_in_order(monkeypatch):
    """Three ranks (one with an empty share), messages of 4 images: rank 0 gets the whole."""
    pipeline = AnomalyPipeline(FakeModel(), 16, 0.01)
    items = object_items(5)
    whole = collect_maps(pipeline, DataLoader(items, batch_size=2), "cpu", 16, objects=TOP)
    shares = [maps_module.share(5, r, 4, 2) for r in range(4)]  # 3 batches over 4 ranks
    mine = [collect_maps(pipeline, DataLoader([items[i] for i in s], batch_size=2), "cpu", 16,
                         allow_empty=True, objects=TOP) for s in shares]
    assert [len(m.scores) for m in mine] == [6, 6, 3, 0]
    rounds = []
    monkeypatch.setattr(maps_module, "GATHER_IMAGES", 4)
    monkeypatch.setattr(maps_module.distributed, "world_size", lambda: 4)
    monkeypatch.setattr(maps_module.distributed, "rank", lambda: 0)
    monkeypatch.setattr(maps_module.dist, "all_gather_object",
                        lambda out, obj: out.__setitem__(slice(None), [(len(m.scores), len(m.object_scores)) for m in mine]))

    def gather(piece, received, dst):
        i = len(rounds)
        rounds.append(piece)
        part = slice(4 * i, 4 * i + 4)
        received[:] = [maps_module._piece(m, part, i == 0) for m in mine]
    monkeypatch.setattr(maps_module.dist, "gather_object", gather)
    got = maps_module.gather_maps(mine[0], 5, 2)
    assert len(rounds) == 2
    for name in ("maps", "masks", "scores", "labels", "objects", "views", "object_scores", "object_labels"):
        np.testing.assert_array_equal(getattr(got, name), getattr(whole, name), err_msg=name)
    assert got.paths == whole.paths


# ----------------------------------------------------------------------------- class metrics

def synthetic_objects(seed: int, n_objects: int = 8, views: int = 3, side: int = 12) -> EvalMaps:
    rng = np.random.default_rng(seed)
    n = n_objects * views
    masks = np.zeros((n, side, side), bool)
    for k in range(1, n_objects, 2):  # every other object, a defect on one view
        i = k * views + (k // 2) % views
        r, c = rng.integers(0, side - 4, 2)
        masks[i, r:r + 3, c:c + 4] = True
    amaps = (rng.random((n, side, side)) * 0.5 + masks * rng.random() * 0.6).astype(np.float32)
    labels = masks.any(axis=(1, 2))
    scores = amaps.reshape(n, -1).max(axis=1)
    objects = np.repeat(np.arange(n_objects), views)
    object_labels = labels.reshape(n_objects, views).any(axis=1)
    object_scores = scores.reshape(n_objects, views).sum(axis=1).astype(np.float32)
    return EvalMaps(amaps, masks, scores, labels, [f"/d/o{i // views}/v{i % views}.png" for i in range(n)],
                    objects, np.tile(np.arange(views), n_objects), object_scores, object_labels)


def three(y, s):
    auroc, ap, f1 = binary_metrics(y, s)
    assert (auroc, ap) == pytest.approx((roc_auc_score(y, s), average_precision_score(y, s)), abs=1e-12)
    return [auroc, ap, f1]


@pytest.mark.parametrize("pixel", ["exact", "histogram"])
def test_multiview_form_and_its_thresholds(pixel):
    m = synthetic_objects(0)
    spec = EvalSpec(MULTIVIEW_METRICS, TOP, pixel)
    values, t = class_metrics(m, spec)
    assert values[:3] == pytest.approx(three(m.labels, m.scores), abs=1e-12)
    assert values[7:] == pytest.approx(three(m.object_labels, m.object_scores), abs=1e-12)
    if pixel == "histogram":
        h = histogram_metrics_oracle(m.maps, m.masks, float(m.maps.min()), float(m.maps.max()))
        assert values[3:7] == pytest.approx([h["p_auroc"], h["p_aupr"], h["p_f1max"], h["p_aupro"]], abs=1e-12)
        assert t.pixel_f1 == values[5]
        # the strip edge's partition: its exact F1 is the histogram's up to the strips' width
        pred = m.maps > t.pixel
        tp = (pred & m.masks).sum()
        assert 2 * tp / (pred.sum() + m.masks.sum()) == pytest.approx(values[5], abs=0.02)
    else:
        assert values[3:7] == class_metrics(EvalMaps(m.maps, m.masks, m.scores, m.labels, m.paths))[0][3:]
    o = t.objects
    assert (o.n_normal, o.n_anomalous) == (int((~m.object_labels).sum()), int(m.object_labels.sum()))
    pred = m.object_scores > o.threshold
    tp = (pred & m.object_labels).sum()
    assert 2 * tp / (pred.sum() + m.object_labels.sum()) == pytest.approx(values[9], abs=1e-6)
    assert list(t.as_json())[-4:] == ["object", "object_f1", "n_normal_objects", "n_anomalous_objects"]


def test_modality_form_and_pixel_metrics_per_modality():
    m = synthetic_objects(1, views=2)
    names = modality_metric_names(("RGB", "Infra"))
    spec = EvalSpec(names, ObjectSpec(ObjectScore("sum")), modalities=("RGB", "Infra"))
    values, t = class_metrics(m, spec)
    assert len(values) == 11 and values[:3] == pytest.approx(three(m.object_labels, m.object_scores), abs=1e-12)
    for k in (0, 1):
        part = EvalMaps(m.maps[k::2], m.masks[k::2], m.scores[k::2], m.labels[k::2], m.paths[k::2])
        assert values[3 + 4 * k:7 + 4 * k] == pytest.approx(class_metrics(part)[0][3:], abs=1e-12)
    assert t.image is None and t.pixel is None and dict(t.extra)["pixel_RGB"] is not None
    assert set(t.as_json()) >= {"object", "pixel_RGB", "pixel_RGB_f1", "pixel_Infra", "pixel_Infra_f1"}


def test_eval_spec_checks_its_names():
    with pytest.raises(ValueError, match="7 metric names for 10 values"):
        EvalSpec(objects=TOP)
    with pytest.raises(ValueError, match="modalities"):
        EvalSpec(modality_metric_names(("A",)), modalities=("A",))
    with pytest.raises(ValueError, match="pixel metrics"):
        EvalSpec(pixel_metrics="adeval")


def test_pooled_thresholds_add_the_objects():
    a, b = synthetic_objects(2), synthetic_objects(3)
    pooled = PooledThresholds()
    pooled.add(a)
    pooled.add(b)
    labels, scores = np.concatenate([a.object_labels, b.object_labels]), np.concatenate([a.object_scores, b.object_scores])
    o = pooled.result().objects
    pred = scores > o.threshold
    assert o.f1 == pytest.approx(2 * (pred & labels).sum() / (pred.sum() + labels.sum()), abs=1e-6)
    assert o.f1 == pytest.approx(binary_metrics(labels, scores)[2], abs=1e-12)
    images_off = PooledThresholds()
    images_off.add(a, images=False, pixels=False)
    r = images_off.result()
    assert r.image is None and r.pixel is None and r.objects is not None


# ----------------------------------------------------------------------------- outputs

def shared_file_objects(root, views: int = 5, side: int = 16) -> EvalMaps:
    """Objects whose five views lie side by side in one PNG (MANTA-Tiny's layout)."""
    n_objects = 4
    m = synthetic_objects(4, n_objects, views, side)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n_objects):
        path = root / "cls" / "test" / ("crack" if m.object_labels[k] else "good") / f"{k:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 1290, 3), dtype=np.uint8)).save(path)
        paths += [str(path)] * views
    m.paths = paths
    m.object_scores = np.array([0.9, 0.2, 0.1, 0.8], np.float32)  # normal object 0 scored high
    return m


def test_reports_carry_the_object_level(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    m = shared_file_objects(tmp_path)
    spec = EvalSpec(MULTIVIEW_METRICS, TOP, "histogram")
    lines = []
    settings = ReportSettings("mv", None, {"object_score": TOP.score.as_json(), "score": "x"}, 32, 28,
                              lambda name: "model.pth", spec.metrics, spec.note())
    report = Report(run_dir, lines.append, settings)
    evaluation = Evaluation(pooled=PooledThresholds(), spec=spec)
    for name in ("c1", "c2"):
        result = evaluation.add(name, m, run_dir)
        save_class_heatmaps(run_dir, name, m.paths, m.maps, m.masks, m.scores, m.labels, 32, 28,
                            views=m.views, objects=result.objects)
        report.draw(result)
        assert all(c.amap is None for c in result.cases + [v for o in result.objects.cases for v in o.views])
    report.evaluation(evaluation, 10, with_mean=True)
    values = evaluation.classes["c1"].metrics
    assert lines[0] == format_result("c1", values, MULTIVIEW_METRICS)
    assert lines[0].endswith(f", O-Auroc:{values[7]:.4f}, O-AP:{values[8]:.4f}, O-F1:{values[9]:.4f}")
    with open(run_dir / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "class", *MULTIVIEW_METRICS] and len(rows) == 4
    data = read_thresholds(run_dir / "thresholds.json")
    assert data["object_score"] == {"rule": "top_ratio", "ratio": 0.05}
    for entry, n in ((data["classes"]["c1"], 4), (data["pooled"], 8)):
        assert entry["object"] is not None and entry["n_normal_objects"] + entry["n_anomalous_objects"] == n
    assert "ADEval's histogram metrics" in (run_dir / "results.md").read_text()
    page = check_page(run_dir)
    assert "O-AUROC" in (run_dir / "report.html").read_text() and "Worst objects" in (run_dir / "report.html").read_text()
    material = json.loads((run_dir / "report" / "c1" / "class.json").read_text())
    assert material["objects"]["names"] == [m.paths[5 * k] for k in range(4)]
    for case in material["objects"]["cases"]:
        assert (run_dir / case["heatmap"]).is_file() and len(case["views"]) == 5
    assert [(c["kind"], c["image"]) for c in material["objects"]["cases"]] == [("fp", m.paths[0])]
    assert any(tag == "img" and "object_fp_1" in attrs.get("src", "") for tag, attrs in page.tags)
    # one heatmap per view, named by its part of the shared file
    drawn = sorted(p.name for p in (run_dir / "maps" / "c1").rglob("000_view*_score*.png"))
    assert [n.split("_score")[0] for n in drawn] == [f"000_view{v}" for v in range(5)]
    assert (run_dir / "maps" / "c1" / OBJECTS_HISTOGRAM_NAME).is_file()


def test_v1_thresholds_json_has_no_object_keys():
    m = synthetic_objects(5)
    single = EvalMaps(m.maps, m.masks, m.scores, m.labels, m.paths)
    t = class_metrics(single)[1]
    assert list(t.as_json()) == ["image", "image_f1", "pixel", "pixel_f1", "scale", "n_normal", "n_anomalous"]
    assert math.isfinite(t.as_json()["image"])


def test_modalities_in_parallel_folders_get_a_heatmap_each(tmp_path):
    """RGB/test/crack/2.png and Infrared/test/crack/2.png: two heatmaps, named by their view."""
    m = synthetic_objects(6, n_objects=2, views=2, side=16)
    paths = []
    for k in range(2):
        for modality in ("RGB", "Infrared"):
            path = tmp_path / "capsule" / modality / "test" / "crack" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 26), 40 * k, np.uint8)).save(path)
            paths.append(str(path))
    drawn = save_class_heatmaps(tmp_path / "run", "capsule", paths, m.maps, m.masks, m.scores, m.labels,
                                32, 28, views=m.views)
    assert [p.name.split("_score")[0] for p in drawn] == ["0_view0", "0_view1", "1_view0", "1_view1"]
    assert all(p.is_file() for p in drawn)
    m.paths = paths
    m.object_scores = np.array([0.9, 0.1], np.float32)  # the normal object scored higher
    objects = Evaluation(spec=EvalSpec(modality_metric_names(("RGB", "Infra")), ObjectSpec(ObjectScore("sum")),
                                       modalities=("RGB", "Infra"))).add("capsule", m).objects
    assert [(c.kind, [(v.view, v.part) for v in c.views]) for c in objects.cases] == \
           [("fp", [(0, None), (1, None)])]  # named by view, each a file of its own
