"""Helper of test_dinomaly2_speed.py and test_fullspectrum_runs.py: dinomaly2_fewshot.py's
trainer (or the script named by `$DDP_TEST_SCRIPT`, e.g. dinomaly2_mulsen) alone or under torchrun,
recording the loss this process computes at every step into `$DDP_TEST_OUT/losses_rank<RANK>.json`
(hard mining at full strength from the second step: `--ll_ramp_iters 1` in the arguments).

    python tests/dinomaly2_ddp_run.py <trainer arguments>
    python -m torch.distributed.run --nproc_per_node=2 ... tests/dinomaly2_ddp_run.py <trainer arguments>
"""
import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine.cli  # noqa: E402
import utils  # noqa: E402


def main() -> None:
    losses: list[float] = []
    loss_fn = utils.global_cosine_hm_percent

    def recording(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        losses.append(loss.item())
        return loss

    utils.global_cosine_hm_percent = recording  # the recipe's loss calls it through `utils.`
    script = importlib.import_module(os.environ.get("DDP_TEST_SCRIPT", "dinomaly2_fewshot"))
    engine.cli.main(script.config, sys.argv[1:])
    out, rank = Path(os.environ["DDP_TEST_OUT"]), os.environ.get("RANK", "0")
    (out / f"losses_rank{rank}.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main()
