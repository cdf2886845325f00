"""Dinomaly2 with the speed options and the other encoders, on CPU: --amp (the loss in
fp32, close to the fp32 run), --compile (graph capture with the aot_eager backend, equal
to eager), a DINOv3 encoder end to end, and a 2-process torchrun few-shot run (gloo) equal
to one process: every rank's augmentation is the preview loader's, whoever loads it."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dinomaly2_2d
import engine.step
import synth
from conftest import TINY_V2
from engine.cli import main
from test_speed_options import recorded  # noqa: F401,F811  (the fixture: every loss call)

REPO = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "dinomaly2_ddp_run.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 5 test images per class: under torchrun shares of 4 and 1 (a rank with none fails in
    # the engine's gathering of the maps)
    return synth.make_mvtec(tmp_path_factory.mktemp("speed") / "data", classes=("aaa", "bbb"),
                            n_train=3, n_good=3)




def run(data: Path, save_dir: Path, name: str, *argv: str) -> Path:
    main(dinomaly2_2d.config, [*TINY_V2, "--data_path", str(data), "--total_iters", "3",
                               "--eval_every", "3", "--dropout", "0", "--ll_ramp_iters", "1",
                               "--save_dir", str(save_dir), "--save_name", name, *argv])
    return save_dir / name


def trainable(run_dir: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(run_dir / "model.pth", map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if not k.startswith("encoder.")}


@pytest.mark.slow
def test_amp_and_compile(data, tmp_path, recorded, monkeypatch):
    """bf16 autocast changes the forward's rounding only (fp32 features into the loss, fp32
    weights); the compiled blocks (aot_eager) give the eager run's losses and weights."""
    eager = trainable(run(data, tmp_path, "eager"))
    fp32 = [c["loss"] for c in recorded]
    recorded.clear()
    bf16 = trainable(run(data, tmp_path, "bf16", "--amp", "bf16"))
    mixed = [c["loss"] for c in recorded]
    assert len(fp32) == len(mixed) == 3 and all(math.isfinite(v) for v in mixed)
    assert all(c["dtypes"] == {torch.float32} for c in recorded)
    assert mixed[0] != fp32[0] and mixed[0] == pytest.approx(fp32[0], rel=2e-2)
    assert {v.dtype for v in bf16.values()} == {torch.float32}
    recorded.clear()
    torch._dynamo.reset()
    monkeypatch.setattr(engine.step, "COMPILE_BACKEND", "aot_eager")
    compiled = trainable(run(data, tmp_path, "compiled", "--compile"))
    assert [c["loss"] for c in recorded] == pytest.approx(fp32, rel=1e-5)
    assert list(compiled) == list(eager)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6)
    assert ", compiled" in (tmp_path / "compiled" / "log.txt").read_text().splitlines()[0]


@pytest.mark.slow
def test_dinov3_encoder(data, tmp_path):
    """DINOv3 ViT-S/16 (random weights): patch 16, 4 storage tokens, the encoder in eval
    mode; the run trains, evaluates and saves the preview's keys."""
    run_dir = run(data, tmp_path, "v3", "--encoder", "dinov3_vits16", "--image_size", "64",
                  "--crop_size", "48")
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["encoder"], config["crop_size"], config["amsgrad"]) == ("dinov3_vits16", 48, False)
    state = torch.load(run_dir / "model.pth", weights_only=True)
    assert "bottleneck.0.0.weight" in state and "encoder.storage_tokens" in state
    lines = [ln for ln in (run_dir / "log.txt").read_text().splitlines() if ln.startswith("Mean:")]
    assert len(lines) == 1


def launch(args: list[str], processes: int, out: Path,
           script: str = "dinomaly2_fewshot") -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DDP_TEST_OUT": str(out), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "DDP_TEST_SCRIPT": script}
    cmd = [sys.executable, str(HELPER), *args]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd[1:1] = ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
                    "--master_addr=127.0.0.1", f"--master_port={port}"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def losses(out: Path, rank: int) -> np.ndarray:
    return np.array(json.loads((out / f"losses_rank{rank}.json").read_text()))


@pytest.mark.slow
def test_two_process_few_shot_equals_one(data, tmp_path):
    """torchrun, 2 gloo processes, global batch 4, the image cache shared: the per-step
    losses average to the one-process losses, the weights agree (to the rounding of DDP's
    average): the strong augmentation is the same whoever loads the images."""
    args = [*TINY_V2, "--data_path", str(data), "--shot", "3", "--batch_size", "4",
            "--total_iters", "3", "--eval_every", "3", "--dropout", "0", "--ll_ramp_iters", "1",
            "--log_every", "1", "--save_dir", str(tmp_path)]
    one = launch([*args, "--save_name", "one"], 1, tmp_path / "out1")
    assert one.returncode == 0, one.stdout + one.stderr
    two = launch([*args, "--save_name", "two", "--cache_images"], 2, tmp_path / "out2")
    assert two.returncode == 0, two.stdout + two.stderr
    single, rank0, rank1 = losses(tmp_path / "out1", 0), losses(tmp_path / "out2", 0), \
        losses(tmp_path / "out2", 1)
    assert len(single) == len(rank0) == len(rank1) == 3 and not np.allclose(rank0, rank1)
    np.testing.assert_allclose((rank0 + rank1) / 2, single, rtol=0, atol=1e-6)
    a, b = trainable(tmp_path / "one"), trainable(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2
