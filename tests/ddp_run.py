"""Helper of test_ddp.py: `engine.cli.main` alone or under torchrun, recording the loss this
process computes at every step into `$DDP_TEST_OUT/losses_rank<RANK>.json`, and into
`stats_rank<RANK>.json` the test images this process ran through the model, the image
files it checked and its shared image caches (--cache_images). `$DDP_GATHER_IMAGES`: images per message of the split evaluation.

    python tests/ddp_run.py <trainer arguments>
    python -m torch.distributed.run --nproc_per_node=2 ... tests/ddp_run.py <trainer arguments>
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402

import dataset  # noqa: E402
import engine.cli  # noqa: E402
from recipes.dinomaly import Config  # noqa: E402
from engine import maps  # noqa: E402
import utils  # noqa: E402


def main() -> None:
    losses: list[float] = []
    stats = {"eval_images": 0, "image_checks": 0}
    loss_fn, collect, check = utils.global_cosine_hm_percent, maps.collect_maps, \
        dataset.check_images
    share = dataset.SharedCache.array
    files: list[str] = []  # the shared caches' files

    def recording(*args, **kwargs):
        loss = loss_fn(*args, **kwargs)
        losses.append(loss.item())
        return loss

    def collecting(pipeline, loader, *args, **kwargs):
        stats["eval_images"] += len(loader.dataset)
        return collect(pipeline, loader, *args, **kwargs)

    def checking(files, *args, **kwargs):
        stats["image_checks"] += len(files)
        return check(files, *args, **kwargs)

    def sharing(cache, shape, fill):  # --cache_images: who decodes, what the others get
        array = share(cache, shape, fill)
        stats.setdefault("cache", []).append(
            {"fills": cache.fills, "images": shape[0], "writeable": array.flags.writeable,
             "mapped": isinstance(array, np.memmap)})
        files.append(array.filename)
        return array

    utils.global_cosine_hm_percent = recording  # the trainer calls it through `utils.`
    maps.collect_maps = collecting  # through `maps.`
    dataset.check_images = checking  # through `dataset.`
    dataset.SharedCache.array = sharing
    if "DDP_GATHER_IMAGES" in os.environ:
        maps.GATHER_IMAGES = int(os.environ["DDP_GATHER_IMAGES"])
    # hard mining at full strength from the second step on: the threshold matters at once
    engine.cli.main(Config(hm_ramp_iters=1), sys.argv[1:])
    out, rank = Path(os.environ["DDP_TEST_OUT"]), os.environ.get("RANK", "0")
    (out / f"losses_rank{rank}.json").write_text(json.dumps(losses))
    stats["cache_files_left"] = [f for f in files if os.path.exists(f)]
    (out / f"stats_rank{rank}.json").write_text(json.dumps(stats))


if __name__ == "__main__":
    main()
