"""Loading Dinomaly checkpoints: this project's and the reference's (`model.state_dict()`)."""
import os
from pathlib import Path

import torch
from torch import nn

from .encoder_family import EncoderError
from .weights_file import KeyMismatch, load_file, load_strict


class CheckpointError(EncoderError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint that was read but does not fit the model (keys or shapes)."""


class MethodMismatch(CheckpointMismatch):
    """A checkpoint of the other method (Dinomaly's given to Dinomaly2's model, or the reverse)."""


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise keys to the reference's: a pure function, one rule per line."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")  # saved from DistributedDataParallel
        key = key.replace("_orig_mod.", "")  # saved from a torch.compile'd module
        out[key] = value
    return out


# a key that only one method's model has (its bottleneck): which method a state_dict is for
METHOD_KEYS = {
    "bottleneck.0.fc1.weight": ("Dinomaly", "models.build_dinomaly, the dinomaly_* scripts"),
    "bottleneck.0.0.weight": ("Dinomaly2", "models.build_dinomaly2, the dinomaly2_* scripts"),
}


def checkpoint_method(keys) -> tuple[str, str] | None:
    """`(method, how to build its model)` for a state_dict's keys, or None if neither."""
    return next((method for key, method in METHOD_KEYS.items() if key in keys), None)


def check_method(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """One line when the file is for the other method (Dinomaly vs Dinomaly2)."""
    theirs, ours = checkpoint_method(state_dict), checkpoint_method(model.state_dict())
    if theirs and ours and theirs != ours:
        raise MethodMismatch(f"checkpoint {path} is a {theirs[0]} model, this model is "
                             f"{ours[0]}: load it into a {theirs[0]} model ({theirs[1]})")


def model_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The model part of a checkpoint file's content: a plain state_dict (the reference's
    form and our `model.pth`) or a training checkpoint `{'model': state_dict, ...}`."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no model state_dict")
    return convert_state_dict(obj)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint into `model` strictly; returns the model.

    A checkpoint with every key (reference `torch.save(model.state_dict())`, our
    `model.pth`) replaces all weights; one with only the trainable part (`bottleneck.*`,
    `decoder.*`) keeps the model's encoder. Any other mismatch → one error listing it.
    """
    path = Path(path)
    try:
        state_dict = model_state_dict(load_file(path, "checkpoint"), path)
        check_method(model, state_dict, path)
        if not any(k.startswith("encoder.") for k in state_dict):
            state_dict = {**{k: v for k, v in model.state_dict().items() if k.startswith("encoder.")},
                          **state_dict}
        load_strict(model, state_dict, f"checkpoint {path}")
    except CheckpointError:
        raise
    except KeyMismatch as err:
        raise CheckpointMismatch(str(err)) from None
    except EncoderError as err:
        raise CheckpointError(str(err)) from None
    return model
