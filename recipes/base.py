"""The interface between a method and the engine: a `Recipe` says everything that makes the
method, the engine calls nothing else of it.

    @register_recipe
    class MyMethod(Recipe):
        name = "my_method"            # config.json's "method"; the registry's key
        title = "My method"
        Config = MyConfig             # RunConfig + the method's settings (each one a flag)
        def build_model(self, cfg, device, weights=None): ...
        def loss(self, cfg, across_ranks=False): ...      # (outputs, iteration) -> loss
        def optimization(self, model, cfg): ...           # optimizer, lr schedule, clipping
        def pipeline(self, model, cfg): ...               # images -> (anomaly maps, scores)

The engine runs the loop: lr → forward (`model(images)`) → `loss(outputs, iteration)` →
backward → clip `optimization.clip_params` to `max_grad_norm` → `optimizer.step()` →
`scheduler.step()`; it evaluates with `pipeline` and computes `metrics` (as `eval_spec`
says: images, or objects of several images). See
docs/EXTENDING.md for a worked example.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import nn
from torch.utils.data import ConcatDataset
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

import dataset
from engine.config import RunConfig
from engine.evaluation import IMAGE_AND_PIXEL_METRICS, EvalSpec  # noqa: F401  (what a recipe reports by default)

Loss = Callable[[object, int], torch.Tensor]  # (the model's outputs, iteration) -> scalar


class Optimization(NamedTuple):
    """How a method trains its model: the optimizer (with its parameter groups), the lr
    schedule (stepped once per iteration; it has set iteration 0's lr when built), and the
    gradient clipping (global L2 norm of `clip_params` to `max_grad_norm`, before the step)."""
    optimizer: Optimizer
    scheduler: LRScheduler
    clip_params: list[nn.Parameter]
    max_grad_norm: float


class Reference(NamedTuple):
    """Published means shown beside a run's: the table row's label, the numbers (percent,
    as published; None where a metric was not published), whose they are, and the settings
    in which the run differs from theirs."""
    label: str
    means: tuple[float | None, ...]
    note: str
    differences: list[str]


def setting_differences(config: Mapping[str, object], all_classes: Sequence[str],
                        setting: Mapping[str, object], whose: str = "paper") -> list[str]:
    """Settings of `config` that differ from a published `setting`:
    `name: ours (paper: theirs)`, including a subset of the dataset's classes."""
    out = [f"{name}: {config.get(name)!r} ({whose}: {value!r})"
           for name, value in setting.items() if config.get(name) != value]
    classes = list(config.get("classes", ()))
    if all_classes and sorted(classes) != sorted(all_classes):  # (none: the classes found)
        out.append(f"classes: {len(classes)} ({whose}: all {len(all_classes)})")
    return out


def read_rgb(path: str | os.PathLike, transform: Callable) -> torch.Tensor:
    """An image file as the test set reads it: `dataset.load_rgb`, then `transform`."""
    return transform(dataset.load_rgb(path))


class Recipe:
    """A method. Subclasses set the class attributes and implement the four builders."""

    name: ClassVar[str]  # the registry's key, config.json's "method"
    title: ClassVar[str]  # e.g. 'Dinomaly', in titles and notes
    Config: ClassVar[type[RunConfig]]  # the method's settings
    metrics: ClassVar[tuple[str, ...]] = IMAGE_AND_PIXEL_METRICS  # what an evaluation reports
    input_channels: ClassVar[int] = 3  # of the model's input (`read_image`): RGB

    def build_model(self, cfg: RunConfig, device: torch.device | str,
                    weights: str | None = None) -> nn.Module:
        """A fresh model on `device` with the method's seeded construction; `weights`
        replaces `cfg.encoder_weights` (e.g. 'random' when a checkpoint brings them)."""
        raise NotImplementedError

    def loss(self, cfg: RunConfig, across_ranks: bool = False) -> Loss:
        """The training loss, with its schedule; `across_ranks`: the global batch is split
        over the processes of a torch.distributed run."""
        raise NotImplementedError

    def optimization(self, model: nn.Module, cfg: RunConfig) -> Optimization:
        raise NotImplementedError

    def pipeline(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        """`forward(images B×3×H×W)` → `(anomaly maps B×1×R×R, image scores B)`: what the
        evaluation, predict.py and the exported model compute."""
        raise NotImplementedError

    def train_set(self, cfg: RunConfig, classes: Sequence[str],
                  cache_images: object = False) -> ConcatDataset:
        """The training set of `classes` (one part per class, in order): by default the
        dataset's layout read with the test transform, as Dinomaly trains. `cache_images`:
        see `dataset.mvtec_train_set`."""
        transform, _ = dataset.get_data_transforms(cfg.image_size, cfg.crop_size)
        layout = dataset.dataset_spec(cfg.dataset).layout
        return layout.train_set(cfg.data_path, list(classes), transform, cache_images)

    def train_images(self, batch: Sequence, device: torch.device) -> torch.Tensor:
        """The model's input from a batch of the training loader, on `device`: by default
        the batch's first member (`(img B×3×H×W, label, …)`). A method whose training items
        hold several images (e.g. two modalities) says here how they make one batch."""
        return batch[0].to(device, non_blocking=True)

    def read_image(self, path: str | os.PathLike, transform: Callable) -> torch.Tensor:
        """One image file as the model's input (predict.py): by default the RGB image
        (`dataset.load_rgb`) through `transform`. A method whose input is more than the
        image (e.g. RGB + depth) reads the rest from the dataset's layout here."""
        return read_rgb(path, transform)

    def dataset_for_path(self, data_path: str) -> str:
        """`--dataset auto`: the registered dataset named in `data_path` (by default the
        Dinomaly2 preview's 2D rule, `dataset.dataset_for_path`)."""
        return dataset.dataset_for_path(data_path)

    def eval_spec(self, cfg: RunConfig) -> EvalSpec:
        """What the evaluation computes (`engine.eval_spec.EvalSpec`): by default `metrics`
        over single images with exact pixel metrics; a method whose test items are objects
        of several images (views, modalities), or whose pixel metrics are ADEval's
        histogram ones, says so here."""
        return EvalSpec(metrics=self.metrics)

    def score_settings(self, cfg: RunConfig) -> dict[str, object]:
        """The settings of the image score, recorded in thresholds.json (predict.py reads
        them back)."""
        return {}

    def score_note(self, cfg: RunConfig) -> str:
        """How an image's score comes from its map, for thresholds.json and report.html."""
        return ""

    def reference(self, cfg: RunConfig, all_classes: Sequence[str]) -> Reference | None:
        """The published numbers to show beside this run's, if any."""
        return None
