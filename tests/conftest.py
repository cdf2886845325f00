"""Test configuration: make the repository's modules (``import dataset``) and the
test helpers (``import synth``) importable however pytest is invoked."""
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
for _path in (_TESTS.parent, _TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


import pytest  # noqa: E402  (after the sys.path set-up above)

# The test-mode knobs of a run: random ViT-S, 112 -> 98 px, batch 2, CPU, no loader processes.
TINY = ["--encoder", "dinov2reg_vit_small_14", "--encoder_weights", "random",
        "--image_size", "112", "--crop_size", "98", "--batch_size", "2", "--num_workers", "0",
        "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    """One tiny finished training run, shared by the tests that only need a trained model
    (evaluations of odd datasets, file permissions): 2 iterations on two synthetic MVTec
    classes. Returns its `data`, `run_dir` and `model` (model.pth, a full state_dict: an
    evaluation needs no encoder weights)."""
    import synth
    from engine.cli import main
    from recipes.dinomaly import Config

    root = tmp_path_factory.mktemp("tiny_run")
    data = synth.make_mvtec(root / "data", classes=("aaa", "bbb"), n_train=3)
    main(Config(), [*TINY, "--data_path", str(data), "--classes", "aaa,bbb",
                                    "--total_iters", "2", "--eval_every", "2",
                                    "--save_dir", str(root / "results"), "--save_name", "run"])
    run_dir = root / "results" / "run"
    return {"data": data, "run_dir": run_dir, "model": run_dir / "model.pth"}


# A tiny Dinomaly2 run: random ViT-S, 64 -> 56 px, maps at 64 px, batch 2, CPU. 8 iterations
# over 6 training images (3 batches an epoch), evaluated at 4 (mid-epoch) and 8.
TINY_V2 = ["--encoder", "dinov2reg_vit_small_14", "--encoder_weights", "random",
           "--image_size", "64", "--crop_size", "56", "--eval_resolution", "64",
           "--batch_size", "2", "--num_workers", "0", "--device", "cpu", "--total_iters", "8",
           "--eval_every", "4", "--log_every", "3"]


@pytest.fixture(scope="session")
def v2_run(tmp_path_factory) -> dict[str, Path]:
    """One tiny finished run of dinomaly2_2d.py on two synthetic classes in the MVTec
    layout, as MVTec AD (`--dataset mvtec`: the paper's row is shown), with heatmaps.
    Returns its `data`, `run_dir` and `model` (model.pth)."""
    import synth
    import dinomaly2_2d
    from engine.cli import main

    root = tmp_path_factory.mktemp("v2_run")
    data = synth.make_mvtec(root / "data", classes=("aaa", "bbb"), n_train=3)
    main(dinomaly2_2d.config, [*TINY_V2, "--dataset", "mvtec", "--data_path", str(data),
                               "--classes", "aaa,bbb", "--save_maps", "--save_dir",
                               str(root / "results"), "--save_name", "run"])
    run_dir = root / "results" / "run"
    return {"data": data, "run_dir": run_dir, "model": run_dir / "model.pth"}


def pytest_collection_modifyitems(config, items):
    """Every test skipped without CUDA counts as a `cuda` test too, wherever it lives, so
    that `pytest tests -m cuda` (benchmarks/gpu_bench.sh) runs all of them on a GPU."""
    for item in items:
        for mark in item.iter_markers("skipif"):
            if "cuda" in str(mark.kwargs.get("reason", "")).lower():
                item.add_marker(pytest.mark.cuda)
                break


@pytest.fixture(autouse=True)
def default_sigchld():
    """Every test starts and ends with the default SIGCHLD disposition. A DataLoader with
    loader processes installs a SIGCHLD handler in this process (torch's worker watchdog) and
    leaves it for the rest of the session. With it left there, the whole session was killed
    by a kernel-raised SIGSEGV (no Python traceback) when a later test's subprocesses exited
    (test_objects_run's torchrun test, every time, only after many other tests); without it,
    never. Our guess at the cause: the signal could not be delivered to a thread whose CPU
    state had grown (AMX tiles used by OpenVINO / oneDNN kernels on this CPU). A run's own
    process is not affected: it ends with its loaders."""
    import signal
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
