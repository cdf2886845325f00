"""training_state.py: RNG capture, atomic checkpoint writes, save/restore round trip and
the config comparison (the end-to-end resume of the trainer is in test_resume.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from engine import generators
from engine import training_state as ts
import utils


def draws() -> tuple:
    """One value from each generator the loop uses."""
    return (torch.rand(3).tolist(), torch.randn(2).tolist(), np.random.rand(2).tolist(),
            np.random.randn(), random.random(), random.gauss(0, 1))


def test_rng_state_round_trip():
    utils.setup_seed(5)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in random's
    state = ts.rng_state()
    first = draws()
    assert draws() != first  # the generators moved on
    ts.set_rng_state(state)
    assert draws() == first


def test_rng_state_survives_weights_only_file(tmp_path):
    utils.setup_seed(3)
    ts.atomic_save({"rng": ts.rng_state()}, tmp_path / "r.pth")
    first = draws()
    utils.setup_seed(99)
    ts.set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    assert draws() == first


def small_run() -> tuple[nn.Module, torch.optim.Optimizer, utils.WarmCosineScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    opt = utils.StableAdamW([{"params": list(model.parameters())}], lr=1e-2, weight_decay=1e-4,
                            amsgrad=True, eps=1e-10)
    sched = utils.WarmCosineScheduler(opt, 1e-2, 1e-3, total_iters=20, warmup_iters=3)
    return model, opt, sched


def step(model, opt, sched) -> float:
    loss = model(torch.randn(5, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def test_save_restore_continues_identically(tmp_path):
    model, opt, sched = small_run()
    losses = [step(model, opt, sched) for _ in range(4)]
    progress = ts.Progress(iteration=4, epoch=1, epoch_order=[2, 0, 1], epoch_position=1,
                           losses=losses, restarts=2)
    cfg = {"seed": 1, "classes": ("a", "b"), "lr": 1e-2}
    ts.save_training_state(tmp_path / "c.pth", model, opt, sched, progress, cfg,
                           {"a": [0.5] * 7})
    lr_at_save = opt.param_groups[0]["lr"]
    later = [step(model, opt, sched) for _ in range(3)]
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = small_run()  # fresh objects, other RNG state
    torch.manual_seed(123)
    state = ts.load_training_state(tmp_path / "c.pth")
    assert state["config"] == {"seed": 1, "classes": ["a", "b"], "lr": 1e-2}
    assert not state["finished"] and len(state["rng"]) == 1
    got = ts.restore_training_state(state, model2, opt2, sched2)
    assert got == progress
    assert sched2.last_epoch == 4 and opt2.param_groups[0]["lr"] == lr_at_save != 0
    assert [step(model2, opt2, sched2) for _ in range(3)] == later
    assert all(torch.equal(weights[k], v) for k, v in model2.state_dict().items())
    assert sched2.last_epoch == sched.last_epoch
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_fp16_loss_scaler_state_round_trip(tmp_path):
    model, opt, sched = small_run()
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    ts.save_training_state(tmp_path / "c.pth", model, opt, sched, ts.Progress(), {}, {},
                           scaler=scaler)
    fresh = torch.amp.GradScaler("cpu")
    ts.restore_training_state(ts.load_training_state(tmp_path / "c.pth"), model, opt, sched,
                              scaler=fresh)
    assert fresh.get_scale() == 512.0 and fresh.get_growth_interval() == 7
    ts.save_training_state(tmp_path / "d.pth", model, opt, sched, ts.Progress(), {}, {})
    assert ts.load_training_state(tmp_path / "d.pth")["scaler"] == {}  # none: nothing restored
    ts.restore_training_state(ts.load_training_state(tmp_path / "d.pth"), model, opt, sched,
                              scaler=fresh)
    assert fresh.get_scale() == 512.0


def test_finished_checkpoint_is_small_and_keeps_progress_and_results(tmp_path):
    model, opt, sched = small_run()
    step(model, opt, sched)
    progress = ts.Progress(iteration=20, epoch=3, losses=[0.5, 0.25])
    ts.save_training_state(tmp_path / "c.pth", model, opt, sched, progress, {"seed": 1},
                           {"aaa": [1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}, finished=True)
    state = ts.load_training_state(tmp_path / "c.pth")
    assert state["finished"] and state["model"] is None and state["optimizer"] is None
    assert state["rng"] is None and ts.progress_of(state) == progress
    assert state["results"] == {"aaa": [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}
    with pytest.raises(ts.TrainingStateError, match="finished"):
        ts.restore_training_state(state, model, opt, sched)


def test_restore_refuses_another_model(tmp_path):
    model, opt, sched = small_run()
    ts.save_training_state(tmp_path / "c.pth", model, opt, sched, ts.Progress(), {}, {})
    other = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 1))
    opt2 = utils.StableAdamW(list(other.parameters()))
    sched2 = utils.WarmCosineScheduler(opt2, 1e-2, 1e-3, total_iters=20)
    with pytest.raises(ts.TrainingStateError, match="shape mismatch"):
        ts.restore_training_state(ts.load_training_state(tmp_path / "c.pth"), other, opt2, sched2)


def test_a_write_that_dies_midway_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A kill during the write: the temporary file is half written when the process dies.
    The checkpoint at the final path is the previous, complete one."""
    model, opt, sched = small_run()
    path = tmp_path / "run" / ts.CHECKPOINT_NAME
    ts.save_training_state(path, model, opt, sched, ts.Progress(iteration=4, losses=[1.0] * 4),
                           {}, {})
    good = path.read_bytes()
    step(model, opt, sched)

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half of the bytes reached the disk ...
        raise KeyboardInterrupt("killed")  # ... when the process was stopped

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ts.save_training_state(path, model, opt, sched, ts.Progress(iteration=5), {}, {})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert ts.load_training_state(path)["iteration"] == 4
    assert [p.name for p in path.parent.iterdir()] == [ts.CHECKPOINT_NAME]  # no temporary left

    # a temporary file left by a SIGKILL (no chance to clean up) is removed by the next save
    (path.parent / f".{ts.CHECKPOINT_NAME}.abc123.tmp").write_bytes(b"partial")
    ts.save_training_state(path, model, opt, sched, ts.Progress(iteration=5), {}, {})
    assert [p.name for p in path.parent.iterdir()] == [ts.CHECKPOINT_NAME]
    assert ts.load_training_state(path)["iteration"] == 5


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ts.TrainingStateError, match="no resume checkpoint at .*c.pth"):
        ts.load_training_state(tmp_path / "c.pth")
    model, opt, sched = small_run()
    ts.save_training_state(tmp_path / "c.pth", model, opt, sched, ts.Progress(), {}, {})
    data = (tmp_path / "c.pth").read_bytes()
    (tmp_path / "c.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ts.TrainingStateError, match="cannot read resume checkpoint .*c.pth"):
        ts.load_training_state(tmp_path / "c.pth")
    torch.save(model.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ts.TrainingStateError, match="not a resume checkpoint"):
        ts.load_training_state(tmp_path / "model.pth")


def test_config_differences():
    saved = {"seed": 1, "classes": ["a", "b"], "lr": 2e-3, "num_workers": 4, "device": "cuda",
             "data_path": "/x"}
    same = {"seed": 1, "classes": ("a", "b"), "lr": 2e-3, "num_workers": 0, "device": "cpu",
            "data_path": "/y"}
    assert ts.config_differences(saved, same) == []
    other = {**same, "seed": 2, "classes": ("a",), "new_field": True}
    assert ts.config_differences(saved, other) == [
        "classes: ['a', 'b'] -> ['a']", "new_field: '<absent>' -> True", "seed: 1 -> 2"]


# ----------------------------------------------------------------------------- CUDA generators

@pytest.fixture
def fake_gpus(monkeypatch):
    """Two GPUs as far as the generator code can tell: their states, names, what was set."""
    gpus = {"states": {0: torch.arange(4, dtype=torch.uint8), 1: torch.arange(4, 8, dtype=torch.uint8)},
            "names": {0: "GPU-A", 1: "GPU-A", 2: "GPU-B"}, "set": []}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda i: gpus["states"][i].clone())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: gpus["names"][i])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: gpus["set"].append((s, i)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    return gpus


def test_rng_state_keeps_the_generator_of_the_runs_device(fake_gpus, tmp_path):
    state = ts.rng_state("cuda:1")
    assert torch.equal(state["cuda"], fake_gpus["states"][1])  # that GPU's only
    assert state["cuda_device"] == {"index": 1, "name": "GPU-A"}
    cpu = ts.rng_state("cpu")
    assert cpu["cuda"] is None and cpu["cuda_device"] is None
    ts.atomic_save({"rng": [state, cpu]}, tmp_path / "r.pth")
    loaded = torch.load(tmp_path / "r.pth", weights_only=True)["rng"]
    assert torch.equal(loaded[0]["cuda"], state["cuda"]) and loaded[1]["cuda"] is None


def test_cuda_generator_restored_into_the_device_the_run_uses(fake_gpus):
    saved = ts.rng_state("cuda:1")
    # another index of the same GPU model: exact, into the GPU now used
    ts.set_rng_state(saved, "cuda:0")
    assert len(fake_gpus["set"]) == 1
    state, index = fake_gpus["set"][0]
    assert torch.equal(state, fake_gpus["states"][1]) and index == 0
    assert generators.cuda_generator_plan(saved, "cuda:0")[1] is None
    # another GPU model: restored, and the log says the masks may differ
    cuda, note = generators.cuda_generator_plan(saved, "cuda:2")
    assert torch.equal(cuda, fake_gpus["states"][1]) and "GPU-A" in note and "GPU-B" in note
    # GPU -> CPU and CPU -> GPU: nothing to restore there, said
    cuda, note = generators.cuda_generator_plan(saved, "cpu")
    assert cuda is None and "saved on a GPU" in note
    cuda, note = generators.cuda_generator_plan(ts.rng_state("cpu"), "cuda:1")
    assert cuda is None and "saved on the CPU" in note
    assert generators.cuda_generator_plan(ts.rng_state("cpu"), "cpu") == (None, None)
    fake_gpus["set"].clear()
    ts.set_rng_state(ts.rng_state("cpu"), "cuda:1")
    assert fake_gpus["set"] == []


def test_cuda_generators_of_older_checkpoints(fake_gpus):
    """Checkpoints written before: every device's state in a list; the run's index is used."""
    older = {**ts.rng_state("cpu"), "cuda": [fake_gpus["states"][0], fake_gpus["states"][1]]}
    older.pop("cuda_device")
    cuda, note = generators.cuda_generator_plan(older, "cuda:1")
    assert torch.equal(cuda, fake_gpus["states"][1]) and note is None
    cuda, note = generators.cuda_generator_plan(older, "cuda:2")
    assert cuda is None and "none for cuda:2" in note
    assert generators.cuda_generator_plan({**older, "cuda": []}, "cuda:0")[0] is None
    assert generators.cuda_generator_plan(older, "cpu")[0] is None
