"""The three everyday extensions of docs/EXTENDING.md, each registered from this file and run
end to end through the unchanged engine: a new loss (a recipe), a new encoder family and a
new dataset layout. Nothing outside this file is edited for them."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset

import dataset
import models
import synth
import utils
from conftest import TINY
from dataset.base import _AnomalyDataset
from engine.cli import main
from engine.config import setting
from engine.model_source import inference_pipeline, resolve_source
from models.dinov2 import DinoVisionTransformer
from recipes import recipe_of, register_recipe
from recipes.dinomaly import Config as DinomalyConfig
from recipes.dinomaly import Dinomaly

RUN = [*TINY, "--total_iters", "2", "--eval_every", "2"]


# ----------------------------------------------------------------------------- a new loss

@dataclasses.dataclass(frozen=True)
class PlainCosineConfig(DinomalyConfig):
    """Dinomaly's settings, the loss's weight added (a flag, --pixel_weight, comes with it)."""
    METHOD = "toy_plain_cosine"
    pixel_weight: float = setting(0.5, "weight of the per-pixel cosine term")


class PlainCosineLoss:
    """Global cosine (no hard mining) plus a per-pixel cosine term; records its calls."""
    calls: list[int] = []

    def __init__(self, pixel_weight: float) -> None:
        self.pixel_weight = pixel_weight

    def __call__(self, outputs, iteration: int) -> torch.Tensor:
        type(self).calls.append(iteration)
        en, de = outputs
        pixel = sum((1 - F.cosine_similarity(e.detach(), d)).mean() for e, d in zip(en, de))
        return utils.global_cosine(en, de) / len(en) + self.pixel_weight * pixel / len(en)


@register_recipe
class PlainCosine(Dinomaly):
    name = "toy_plain_cosine"
    title = "Dinomaly, plain cosine loss"
    Config = PlainCosineConfig

    def loss(self, cfg: PlainCosineConfig, across_ranks: bool = False) -> PlainCosineLoss:
        return PlainCosineLoss(cfg.pixel_weight)


def test_a_new_loss_is_a_recipe(tmp_path):
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa",), n_train=2)
    PlainCosineLoss.calls.clear()
    main(PlainCosineConfig(), [*RUN, "--data_path", str(data), "--classes", "aaa",
                               "--pixel_weight", "0.25", "--save_dir", str(tmp_path), "--save_name", "run"])
    assert PlainCosineLoss.calls == [0, 1]  # the engine called the recipe's loss, each iteration
    run_dir = tmp_path / "run"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["method"], config["pixel_weight"]) == ("toy_plain_cosine", 0.25)
    rows = list(csv.DictReader(open(run_dir / "results.csv")))
    assert [r["class"] for r in rows] == ["aaa", "Mean"] and rows[0]["iteration"] == "2"
    assert "Dinomaly, plain cosine loss" in (run_dir / "results.md").read_text()
    # the tools rebuild the model through the recipe named in config.json
    source = resolve_source(str(run_dir), None, None, None, None)
    assert type(source.config) is PlainCosineConfig
    maps, scores = inference_pipeline(source, "cpu")(torch.zeros(1, 3, 98, 98))
    assert maps.shape == (1, 1, 256, 256) and scores.shape == (1,)


# ----------------------------------------------------------------------------- a new encoder family

TOY_ARCH = models.EncoderArch("tiny", embed_dim=32, depth=8, num_heads=2,
                              target_layers=(0, 1, 2, 3, 4, 5, 6, 7))


def build_toy(arch: models.EncoderArch, fused_attn: bool) -> DinoVisionTransformer:
    """A DINOv2-style ViT with patch 8 and a 16 × 16 position grid (for 128 px)."""
    return DinoVisionTransformer(img_size=128, patch_size=8, embed_dim=arch.embed_dim,
                                 depth=arch.depth, num_heads=arch.num_heads,
                                 num_register_tokens=2, fused_attn=fused_attn)


TOY_FAMILY = models.register_encoder_family(models.EncoderFamily(
    name="toyvit", title="toy ViT", patch_size=8, register_tokens=2, archs={"toyvit_tiny_8": TOY_ARCH},
    patch_tokens_only=False, position="absolute, resized", build=build_toy,
    weights_url=lambda name, arch: "https://example.invalid/toyvit_tiny_8.pth",
    read_weights=lambda path, model: torch.load(path, weights_only=True),
    downloadable=False, missing_weights=lambda name, path: f"no toy weights at {path}",
    settings={"image_size": 72}, settings_note="the toy family's settings"))


def test_a_new_encoder_family_is_one_registered_spec(tmp_path):
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa",), n_train=2)
    weights = tmp_path / "toy.pth"
    torch.save(build_toy(TOY_ARCH, True).state_dict(), weights)  # a weights file of the family
    argv = [*RUN, "--data_path", str(data), "--classes", "aaa", "--encoder", "toyvit_tiny_8",
            "--encoder_weights", str(weights), "--crop_size", "64", "--save_dir", str(tmp_path),
            "--save_name", "run"]
    argv.remove("--image_size"), argv.remove("112")  # the family brings its own
    main(DinomalyConfig(), argv)
    run_dir = tmp_path / "run"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["encoder"], config["image_size"], config["crop_size"]) == ("toyvit_tiny_8", 72, 64)
    assert config["encoder_changed"] == ["image_size 448 -> 72"]
    assert "brings the toy family's settings: image_size 448 -> 72" in (run_dir / "log.txt").read_text()
    state = torch.load(run_dir / "model.pth", weights_only=True)
    assert state["encoder.pos_embed"].shape == (1, 257, 32)  # the family's encoder, in the model
    assert torch.equal(state["encoder.blocks.0.attn.qkv.weight"],
                       torch.load(weights, weights_only=True)["blocks.0.attn.qkv.weight"])
    model = recipe_of(DinomalyConfig()).build_model(
        DinomalyConfig(encoder="toyvit_tiny_8", encoder_weights="random"), "cpu")
    en, de = model(torch.zeros(2, 3, 64, 64))
    assert [e.shape for e in en] == [(2, 32, 8, 8)] * 2 and len(model.decoder) == 8


# ----------------------------------------------------------------------------- a new dataset layout

class ListedImages(_AnomalyDataset):
    """One class of a dataset listed in `<root>/<split>.csv` (rows: class, image, mask; a
    normal image has no mask), paths relative to `root`."""

    def __init__(self, root: str, name: str, transform, gt_transform, phase: str) -> None:
        super().__init__(transform, gt_transform, phase)
        with open(Path(root) / f"{phase}.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["class"] == name]
        if not rows:
            raise dataset.DatasetError(f"{Path(root) / f'{phase}.csv'} lists no image of {name}")
        self.img_paths = [os.path.join(root, r["image"]) for r in rows]
        self.gt_paths = [os.path.join(root, r["mask"]) if r["mask"] else None for r in rows]
        self.labels = [int(bool(r["mask"])) for r in rows]
        self.read_images(False)

    def __getitem__(self, idx: int) -> tuple:
        item = self.test_item(idx)
        return (item[0], item[2]) if self.phase == "train" else item


def listed_classes(root: str) -> list[str]:
    with open(Path(root) / "train.csv", newline="") as f:
        return sorted({r["class"] for r in csv.DictReader(f)})


LISTED = dataset.register_dataset(dataset.DatasetSpec("toy_listed", "Toy listed", ("aaa", "bbb"), dataset.Layout(
    name="toy_listed", folders="train.csv and test.csv listing class, image, mask",
    discover=listed_classes, discover_help="every class in train.csv",
    train_set=lambda root, classes, t, cache: ConcatDataset(
        [ListedImages(root, c, t, None, "train") for c in classes]),
    test_set=lambda root, c, t, g: ListedImages(root, c, t, g, "test"))))


def write_listing(root: Path) -> None:
    """train.csv / test.csv over an MVTec-layout tree: the same images, listed."""
    for split in ("train", "test"):
        rows = []
        for image in sorted(root.glob(f"*/{split}/*/*.png")):
            cls, _, defect, name = image.relative_to(root).parts
            mask = "" if defect == "good" else f"{cls}/ground_truth/{defect}/{Path(name).stem}_mask.png"
            rows.append({"class": cls, "image": str(image.relative_to(root)), "mask": mask})
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["class", "image", "mask"])
            writer.writeheader()
            writer.writerows(rows)


@pytest.mark.parametrize("separate", [False, True])
def test_a_new_dataset_layout_is_one_registered_spec(tmp_path, separate):
    data = synth.make_mvtec(tmp_path / "data", classes=("aaa", "bbb"), n_train=2)
    write_listing(data)
    main(DinomalyConfig(dataset="toy_listed", separate=separate),
         [*RUN, "--data_path", str(data), "--classes", "auto", "--save_dir", str(tmp_path),
          "--save_name", "run"])
    run_dir = tmp_path / "run"
    rows = list(csv.DictReader(open(run_dir / "results.csv")))
    assert [r["class"] for r in rows][-3:] == ["aaa", "bbb", "Mean"]
    assert "Toy listed" in (run_dir / "results.md").read_text()
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert list(thresholds["classes"]) == ["aaa", "bbb"]
    log = (run_dir / "log.txt").read_text()
    assert "train image number:4" in log or "train image number:2" in log
