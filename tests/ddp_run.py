"""Helper of test_ddp.py: `engine.cli.main` alone or under torchrun, recording the loss this
process computes at every step into `$DDP_TEST_OUT/losses_rank<RANK>.json`.

    python tests/ddp_run.py <trainer arguments>
    python -m torch.distributed.run --nproc_per_node=2 ... tests/ddp_run.py <trainer arguments>
"""
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

    utils.global_cosine_hm_percent = recording  # the trainer calls it through `utils.`
    # hard mining at full strength from the second step on: the threshold matters at once
    engine.cli.main(engine.cli.Config(hm_ramp_iters=1), sys.argv[1:])
    out = Path(os.environ["DDP_TEST_OUT"]) / f"losses_rank{os.environ.get('RANK', '0')}.json"
    out.write_text(json.dumps(losses))


if __name__ == "__main__":
    main()
