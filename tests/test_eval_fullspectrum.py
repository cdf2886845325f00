"""`utils.evaluation_batch_multiview` and `utils.evaluation_batch_rgbinfra` against the Dinomaly2
preview's procedures written plainly here (lists of tensors, scikit-learn, the plain AUPRO
loop, ADEval's histogram metrics from their description), on tiny multi-view (Real-IAD
v2, MANTA-Tiny) and MulSen-AD layouts read by the real datasets."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import histogram_metrics_oracle, reference_f1_max, reference_pro
from sklearn.metrics import average_precision_score, roc_auc_score
from test_evaluation import FakeModel
from test_manta import make_manta
from test_mulsen import make_mulsen
from test_realiad_v2 import make_multiview
from torch.utils.data import DataLoader

import dataset
import utils
from engine.maps import collect_maps
from engine.objects import ObjectScore, ObjectSpec, unpack_modalities
from recipes.anomaly_map import AnomalyPipeline, cal_anomaly_maps, get_gaussian_kernel

SIZE, ISIZE, R = 32, 28, 16


def records(n_objects: int = 7, views: int = 3):
    """Real-IAD test records: objects of `views` views, every third one anomalous with masks
    on some views (and one NG view without a mask: normal)."""
    out = []
    for k in range(n_objects):
        anomalous = k % 3 == 1
        for v in range(views):
            folder = f"NG/AK/S{k:04d}" if anomalous else f"OK/S{k:04d}"
            img = f"{folder}/o_C{v + 1}.png"
            masked = anomalous and v != 1
            out.append((img, f"{folder}/o_C{v + 1}_mask.png" if masked else None, "AK" if anomalous else "OK"))
    return out


@pytest.fixture(scope="module")
def realiad(tmp_path_factory):
    root = tmp_path_factory.mktemp("realiad")
    make_multiview(root, "toy", "jsons", "imgs", False, test=records())
    return dataset.RealIADDatasetv2(root, "toy", *dataset.get_data_transforms(SIZE, ISIZE), "test",
                                    split="jsons", version="imgs")


def sklearn_three(y, s):
    try:
        return [roc_auc_score(y, s), average_precision_score(y, s), reference_f1_max(y, s)]
    except ValueError:  # one class only: the preview stops
        return [math.nan] * 3


def exact_pixel(masks, maps):
    if masks.all() or not masks.any():
        return [math.nan] * 4
    return sklearn_three(masks.ravel(), maps.ravel()) + [reference_pro(masks, maps)]


def top_mean(flat, ratio):
    """The preview's score of a flattened map: the mean of its top int(n·ratio) values."""
    if ratio == 0:
        return flat.max()
    return torch.sort(flat, descending=True)[0][:int(flat.numel() * ratio)].mean()


def plain_map(model, blur, x, gt, resize):
    en, de = model(x)
    amap, _ = cal_anomaly_maps(en, de, x.shape[-1])
    if resize is not None:
        amap = F.interpolate(amap, size=resize, mode="bilinear", align_corners=False)
        gt = F.interpolate(gt, size=resize, mode="nearest")
    return blur(amap), gt.bool().any(dim=1, keepdim=True)


def plain_multiview(model, loader, ratio_image, ratio_object, resize, use_max_view, pixel):
    """The preview's `evaluation_batch_multiview`, one object at a time where it loops."""
    blur = get_gaussian_kernel(kernel_size=5, sigma=4)
    maps, masks, view_y, view_s, obj_y, obj_s = [], [], [], [], [], []
    with torch.no_grad():
        for img, gt, label, _ in loader:
            B, V = img.shape[:2]
            amap, mask = plain_map(model, blur, img.reshape(B * V, *img.shape[2:]),
                                   gt.reshape(B * V, *gt.shape[2:]), resize)
            amap5 = amap.reshape(B, V, 1, *amap.shape[-2:])
            for b in range(B):
                scores = [top_mean(amap5[b, v].flatten(), ratio_image) for v in range(V)]
                view_s += scores
                obj_s.append(max(scores) if use_max_view else top_mean(amap5[b].flatten(), ratio_object))
            view_y += label.reshape(-1).tolist()
            obj_y += label.reshape(B, V).max(dim=1)[0].tolist()
            maps.append(amap[:, 0])
            masks.append(mask[:, 0])
    maps, masks = torch.cat(maps).numpy(), torch.cat(masks).numpy()
    view_y, obj_y = np.array(view_y) != 0, np.array(obj_y) != 0
    view_s, obj_s = torch.stack(view_s).numpy(), torch.stack([torch.as_tensor(s) for s in obj_s]).numpy()
    if pixel == "none":
        px = [0.0] * 4
    elif pixel == "adeval":
        h = histogram_metrics_oracle(maps, masks, float(maps.min()), float(maps.max()))
        px = [h["p_auroc"], h["p_aupr"], h["p_f1max"], h["p_aupro"]]
    else:
        px = exact_pixel(masks, maps)
    return sklearn_three(view_y, view_s) + px + sklearn_three(obj_y, obj_s)


@pytest.mark.parametrize("ratio_image,ratio_object,use_max_view,adeval,pixel_level", [
    (0.01, 0.01, False, True, True),  # the multi-view script's call
    (0.01, 0.01, False, False, True),  # exact pixel metrics
    (0.0, 0.05, True, False, False),  # max view, pixel metrics off (all 0)
    (0.1, 0.0, False, True, True),  # object maximum
])
def test_multiview_equals_the_plain_procedure(realiad, ratio_image, ratio_object, use_max_view,
                                              adeval, pixel_level):
    model = FakeModel()
    loader = DataLoader(realiad, batch_size=2)
    pixel = "none" if not pixel_level else "adeval" if adeval else "exact"
    expected = plain_multiview(model, loader, ratio_image, ratio_object, R, use_max_view, pixel)
    model.train()
    got = utils.evaluation_batch_multiview(model, loader, "cpu", max_ratio_image=ratio_image,
                                           max_ratio_object=ratio_object, resize_mask=R,
                                           use_max_view=use_max_view, pixel_level_metrics=pixel_level,
                                           adeval=adeval)
    assert not model.training
    assert len(got) == 10 and all(type(v) is float for v in got)
    assert got == pytest.approx(expected, abs=1e-9)
    assert (got[3:7] == [0.0] * 4) == (not pixel_level)
    assert all(0 <= v <= 1 for v in got)


def test_multiview_of_manta_objects_one_file_each(tmp_path):
    """MANTA-Tiny: the five views of an object come from one file, labels int32."""
    ds = dataset.MANTATinyDataset(make_manta(tmp_path), *dataset.get_data_transforms(SIZE, ISIZE), "test")
    model, loader = FakeModel(), DataLoader(ds, batch_size=2)
    expected = plain_multiview(model, loader, 0.01, 0.01, R, False, "adeval")
    got = utils.evaluation_batch_multiview(model, loader, "cpu", max_ratio_image=0.01,
                                           max_ratio_object=0.01, resize_mask=R, adeval=True)
    assert got == pytest.approx(expected, abs=1e-9, nan_ok=True)


class ObjectModel(torch.nn.Module):
    """A multi-view model: `B×V×3×H×W` in, 5-D features out (the FakeModel's per view)."""

    def __init__(self):
        super().__init__()
        self.inner = FakeModel()

    def forward(self, x):
        B, V = x.shape[:2]
        en, de = self.inner(x.flatten(0, 1))
        return ([e.reshape(B, V, *e.shape[1:]) for e in en], [d.reshape(B, V, *d.shape[1:]) for d in de])


def test_multi_view_model_sees_the_whole_object(realiad):
    loader = DataLoader(realiad, batch_size=3)
    whole = utils.evaluation_batch_multiview(ObjectModel(), loader, "cpu", max_ratio_image=0.01,
                                             max_ratio_object=0.01, resize_mask=R, multi_view_model=True)
    plain = FakeModel()
    plain.load_state_dict(ObjectModel().inner.state_dict())
    expected = plain_multiview(plain, loader, 0.01, 0.01, R, False, "exact")
    assert whole == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- RGB + infrared

def plain_rgbinfra(model, loader, ratio, resize):
    """The preview's `evaluation_batch_rgbinfra`: the model on RGB, then on IR; object label
    the highest of the three labels; object score RGB score + IR score."""
    blur = get_gaussian_kernel(kernel_size=5, sigma=4)
    px = {0: ([], []), 1: ([], [])}
    obj_y, obj_s = [], []
    with torch.no_grad():
        for images, labels, masks, _ in loader:
            scores = []
            for k in (0, 1):
                amap, mask = plain_map(model, blur, images[k], masks[k], resize)
                px[k][0].append(amap[:, 0])
                px[k][1].append(mask[:, 0])
                scores.append(torch.stack([top_mean(a.flatten(), ratio) for a in amap]))
            obj_s.append(scores[0] + scores[1])
            obj_y.append(torch.stack([torch.as_tensor(lab) for lab in labels]).max(dim=0)[0])
    obj_y, obj_s = torch.cat(obj_y).numpy() != 0, torch.cat(obj_s).numpy()
    out = {"object_level": sklearn_three(obj_y, obj_s)}
    for k, key in ((0, "pixel_rgb"), (1, "pixel_infra")):
        out[key] = exact_pixel(torch.cat(px[k][1]).numpy(), torch.cat(px[k][0]).numpy())
    return out


def mulsen_set(root: Path):
    make_mulsen(root)
    return dataset.MulSenTestDataset("capsule", *dataset.get_data_transforms(SIZE, ISIZE), dataset_path=root)


@pytest.mark.parametrize("ratio", [0.01, 0.0])
def test_rgbinfra_equals_the_plain_procedure(tmp_path, ratio):
    model, loader = FakeModel(), DataLoader(mulsen_set(tmp_path), batch_size=2)
    expected = plain_rgbinfra(model, loader, ratio, R)
    got = utils.evaluation_batch_rgbinfra(model, loader, "cpu", max_ratio=ratio, resize_mask=R)
    assert list(got) == ["object_level", "pixel_rgb", "pixel_infra"]
    assert [len(v) for v in got.values()] == [3, 4, 4]
    for key in got:
        assert all(type(v) is float for v in got[key])
        assert got[key] == pytest.approx(expected[key], abs=1e-9)
    assert not any(math.isnan(v) for vals in got.values() for v in vals)


def test_rgbinfra_object_label_counts_the_point_cloud(tmp_path):
    """A sample anomalous by its point cloud alone is an anomalous object."""
    mulsen_set(tmp_path)
    csv = tmp_path / "capsule" / "RGB" / "GT" / "crack" / "data.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join(rows[:2] + [rows[2].split(",")[0] + ",0,0,1"] + rows[3:]) + "\n")
    ds = dataset.MulSenTestDataset("capsule", *dataset.get_data_transforms(SIZE, ISIZE), dataset_path=tmp_path)
    assert (0, 0, 1) in ds.labels
    model, loader = FakeModel(), DataLoader(ds, batch_size=2)
    got = utils.evaluation_batch_rgbinfra(model, loader, "cpu", max_ratio=0.01, resize_mask=R)
    assert got["object_level"] == pytest.approx(plain_rgbinfra(model, loader, 0.01, R)["object_level"], abs=1e-9)
    objects = ObjectSpec(ObjectScore("sum"), unpack_modalities, forward="per_view")
    maps = collect_maps(AnomalyPipeline(model, R, 0.01), loader, "cpu", R, objects=objects)
    assert maps.object_labels.tolist() == [any(labels) for labels in ds.labels]
    assert maps.labels.reshape(-1, 2).tolist() == [[bool(a), bool(b)] for a, b, _ in ds.labels]


def test_rgbinfra_class_without_infrared_defects_is_nan_there(tmp_path):
    """The preview's AUPRO asserts on all-empty masks (the run stops): nan, the rest computed."""
    ds = mulsen_set(tmp_path)
    csv = tmp_path / "capsule" / "RGB" / "GT" / "crack" / "data.csv"
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([rows[0]] + [",".join(r.split(",")[:2] + ["0"] + r.split(",")[3:]) for r in rows[1:]]) + "\n")
    ds = dataset.MulSenTestDataset("capsule", *dataset.get_data_transforms(SIZE, ISIZE), dataset_path=tmp_path)
    got = utils.evaluation_batch_rgbinfra(FakeModel(), DataLoader(ds, batch_size=3), "cpu",
                                          max_ratio=0.01, resize_mask=R)
    assert all(math.isnan(v) for v in got["pixel_infra"])
    assert not any(math.isnan(v) for v in got["pixel_rgb"] + got["object_level"])
