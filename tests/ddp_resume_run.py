"""Helper of test_resume.py: `engine.cli.main` under torchrun; with STOP_AT_CHECKPOINT=k every
process stops (SystemExit) when the k-th checkpoint is about to be written, as if the
run were killed there.

    python -m torch.distributed.run --nproc_per_node=2 ... tests/ddp_resume_run.py <trainer arguments>
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine.cli  # noqa: E402
from recipes.dinomaly import Config  # noqa: E402
from engine import training_state  # noqa: E402


def main() -> None:
    stop_at = int(os.environ.get("STOP_AT_CHECKPOINT", "0"))
    gather = training_state.all_rng_states
    calls = {"n": 0}

    def gather_or_stop(*args) -> list:  # collective: every rank reaches it at each checkpoint
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise SystemExit(3)
        return gather(*args)

    training_state.all_rng_states = gather_or_stop  # the trainer calls it through the module
    engine.cli.main(Config(), sys.argv[1:])


if __name__ == "__main__":
    main()
