"""Dinomaly2's few-shot training set against the preview code's loader: the drawn images, the
strong augmentation of every sample and the generator states, over several epochs, equal
those of `DataLoader(shuffle=True, num_workers=4, drop_last=True)` with a fresh iterator per
epoch, whoever loads here (no loader process, persistent ones, a run resumed mid-epoch, the
shares of two ranks), with and without --cache_images."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import dataset
import synth
from engine import distributed
from engine.data import make_train_loader
from recipes.dinomaly2_fewshot import Config, fewshot_train_set

CLASSES = ("aaa", "bbb")
BATCH = 2
EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 6 training images per class, 5 drawn: 10 images = 5 batches per epoch, so batch 4 is
    # the second batch of the first worker's stream
    return synth.make_mvtec(tmp_path_factory.mktemp("streams") / "mvtec", classes=CLASSES,
                            n_train=6, size=48)


def config(data: Path, **changes) -> Config:
    settings = dict(dataset="folders", data_path=str(data), classes=CLASSES, shot=5,
                    image_size=64, crop_size=56, batch_size=BATCH, num_workers=0, device="cpu")
    return Config(**{**settings, **changes})


def preview_batches(data: Path, seed: int = 3) -> tuple[list[torch.Tensor], torch.Tensor, tuple]:
    """The preview's few-shot loading, written out: `setup_seed`, per class `ImageFolder`
    samples replaced by `random.sample(samples, shot)`, the strong transforms, then a fresh
    `DataLoader(shuffle=True, num_workers=4, drop_last=True)` iterator each epoch. Returns
    the batches, the CPU generator state and Python's `random` state afterwards."""
    random.seed(1)
    drawn = {}
    for name in CLASSES:
        samples = sorted(str(p) for p in (data / name / "train" / "good").iterdir())
        drawn[name] = random.sample(samples, 5)
    transform = dataset.get_strong_transforms(64, 56)
    train_set = dataset.mvtec_train_set(str(data), CLASSES, transform, samples=drawn)
    torch.manual_seed(seed)
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=4, drop_last=True)
    batches = [img for _ in range(EPOCHS) for img, _ in loader]
    return batches, torch.get_rng_state(), random.getstate()


@pytest.fixture(scope="module")
def preview(data):
    return preview_batches(data)


def our_batches(cfg: Config, seed: int = 3, train_set=None) -> tuple[list[torch.Tensor], torch.Tensor, tuple]:
    train_set = fewshot_train_set(cfg, CLASSES, cfg.cache_images) if train_set is None else train_set
    torch.manual_seed(seed)
    loader = make_train_loader(cfg, train_set)
    batches = [img for _ in range(EPOCHS) for img, _ in loader]
    return batches, torch.get_rng_state(), random.getstate()


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_fresh_states_are_a_workers_seeding():
    """What a DataLoader worker does (`torch.manual_seed`, `random.seed`), without touching
    the process's generators."""
    before = torch.get_rng_state(), random.getstate()
    cpu, py = dataset.worker_streams.fresh_states(2**62 + 3)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    torch.manual_seed(2**62 + 3)
    random.seed(2**62 + 3)
    assert torch.equal(torch.get_rng_state(), cpu) and random.getstate() == py
    torch.set_rng_state(before[0])
    random.setstate(before[1])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers,cache", [(0, False), (2, False), (1, True)])
def test_loading_equals_the_preview_loader(data, preview, workers, cache):
    """No loader process, two kept across epochs, or one with the image cache: the preview's
    batches (its 4 fresh workers' augmentation), generator and `random` states."""
    cfg = config(data, num_workers=workers, cache_images=cache)
    batches, cpu, py = our_batches(cfg)
    assert len(batches) == 15 and same(batches, preview[0])
    assert torch.equal(cpu, preview[1]) and py == preview[2]
    # the augmentation is real: no two epochs give the same tensors for the same image
    assert not same(batches[:5], batches[5:10])


def test_the_draws_follow_the_seed(data, preview):
    assert not same(our_batches(config(data), seed=4)[0], preview[0])


def test_resumed_epoch_and_rank_shares_equal_the_preview(data, preview):
    """A new loader (fresh streams) resumed after 2 batches of the second epoch continues
    with the preview's batches; two ranks' shares of each batch put together are its
    batches (each rank's streams skip the other's samples)."""
    cfg = config(data)
    train_set = fewshot_train_set(cfg, CLASSES)
    torch.manual_seed(3)
    loader = make_train_loader(cfg, train_set)
    first = [img for img, _ in loader]
    it = iter(loader)
    first += [next(it)[0], next(it)[0]]
    sampler = loader.batch_sampler
    order, seed, state = sampler.order, sampler.worker_seed, torch.get_rng_state()
    fresh = make_train_loader(cfg, fewshot_train_set(cfg, CLASSES))
    fresh.batch_sampler.resume(order, 2 * BATCH, seed)
    torch.set_rng_state(state)
    rest = [img for img, _ in fresh] + [img for img, _ in fresh]
    assert same(first + rest, preview[0])
    with pytest.raises(ValueError, match="worker seed"):
        fresh.batch_sampler.resume(order, 0)

    shares = []
    for rank in (0, 1):
        torch.manual_seed(3)
        sampler = distributed.GlobalBatchSampler(10, BATCH, rank, 2, tag=True)
        loader = DataLoader(fewshot_train_set(cfg, CLASSES), batch_sampler=sampler,
                            generator=torch.Generator())
        shares.append([img for _ in range(EPOCHS) for img, _ in loader])
    assert same([torch.cat(pair) for pair in zip(*shares)], preview[0])


def test_blank_image_draws_as_any_image(data):
    """The streams advance with a blank image: the transform's draws do not depend on the
    image (its size included: the first step resizes)."""
    transform = dataset.get_strong_transforms(64, 56)
    states = []
    for img in (Image.new("RGB", (64, 64)), Image.open(next((data / "aaa" / "train" / "good").iterdir())),
                Image.new("RGB", (300, 97))):
        torch.manual_seed(5)
        random.seed(5)
        for _ in range(20):
            transform(img)
        states.append((torch.get_rng_state(), random.getstate()))
    assert all(torch.equal(s[0], states[0][0]) and s[1] == states[0][1] for s in states)
