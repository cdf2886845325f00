"""A multi-view method and dataset registered from the tests (no edit of the engine): Dinomaly
trained on single views of Real-IAD-v2-style objects, evaluated on the objects (the seven
metrics over every view, ADEval's histogram pixel metrics, O-AUROC/AP/F1 from the top 1 % of
all an object's pixels). Imported by test_objects_run.py; run as a script (alone or under
torchrun) it trains with it, recording the test images each process ran:

    python tests/objects_recipe.py <trainer arguments>
"""
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch.utils.data import ConcatDataset  # noqa: E402

import dataset  # noqa: E402
from engine.eval_spec import MULTIVIEW_METRICS, EvalSpec  # noqa: E402
from engine.objects import ObjectScore, ObjectSpec  # noqa: E402
from recipes import register_recipe  # noqa: E402
from recipes.dinomaly import Config as DinomalyConfig  # noqa: E402
from recipes.dinomaly import Dinomaly  # noqa: E402

SPLIT, VERSION = "jsons", "imgs"


def _classes(root: str) -> list[str]:
    return sorted(p.stem for p in (Path(root) / SPLIT).glob("*.json"))


LAYOUT = dataset.register_dataset(dataset.DatasetSpec("toy_multiview", "Toy multi-view", (), dataset.Layout(
    name="toy_multiview", folders=f"{VERSION}/<class>/… with {SPLIT}/<class>.json",
    discover=_classes, discover_help=f"every json in {SPLIT}/",
    train_set=lambda root, classes, t, cache: ConcatDataset(
        [dataset.RealIADDatasetv2(root, c, t, None, "train", split=SPLIT, version=VERSION) for c in classes]),
    test_set=lambda root, c, t, g: dataset.RealIADDatasetv2(root, c, t, g, "test", split=SPLIT, version=VERSION))))


@dataclasses.dataclass(frozen=True)
class Config(DinomalyConfig):
    METHOD = "toy_multiview"


@register_recipe
class ToyMultiView(Dinomaly):
    name = "toy_multiview"
    title = "Dinomaly on objects"
    Config = Config
    metrics = MULTIVIEW_METRICS

    def eval_spec(self, cfg):
        return EvalSpec(MULTIVIEW_METRICS, ObjectSpec(ObjectScore("top_ratio", 0.01)), "histogram")


def main() -> None:
    from engine import maps
    from engine.cli import main as cli_main
    collect, seen = maps.collect_maps, []

    def collecting(pipeline, loader, *args, **kwargs):
        seen.append(len(loader.dataset))
        return collect(pipeline, loader, *args, **kwargs)
    maps.collect_maps = collecting
    cli_main(Config(dataset="toy_multiview"), sys.argv[1:])
    out = Path(os.environ["OBJECTS_TEST_OUT"])
    (out / f"objects_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
