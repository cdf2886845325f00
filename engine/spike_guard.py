"""Loss-spike and NaN guard (``--spike_factor``, ``--spike_restart``).

The reference's README warns that rare loss spikes hurt the final results. The guard
watches the per-iteration loss:

- a non-finite loss (nan, inf) raises `NonFiniteLoss`, naming the iteration: the run stops
  there, before anything is saved, so the last checkpoint on disk stays the last good one;
- after a warm-up, a loss above `factor` × the median of the last `window` losses is a
  spike: `check` returns a `Spike` for the trainer to log (and, with `--spike_restart`,
  to restart from the last checkpoint with a new seed).

The guard only observes: it draws no random numbers and changes no tensor, so a run
with it on is bit-identical to one without.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


class NonFiniteLoss(RuntimeError):
    """The loss became nan or inf."""

    def __init__(self, iteration: int, loss: float) -> None:
        self.iteration = iteration
        self.loss = loss
        super().__init__(f"non-finite loss ({loss}) at iteration {iteration}")


@dataclass(frozen=True)
class Spike:
    """Iteration `iteration` (1-based, as in the log lines) had `loss` > `factor` × `median`."""
    iteration: int
    loss: float
    median: float
    factor: float

    def message(self) -> str:
        return (f"loss spike at iteration {self.iteration}: {self.loss:.4f} > {self.factor:g} x "
                f"the running median {self.median:.4f} ({self.loss / self.median:.1f}x)")


class SpikeGuard:
    """`check(iteration, loss)` once per iteration, in order.

    Args:
        factor: a loss above `factor` × the running median is a spike; 0 turns spike
            detection off (non-finite losses are still caught).
        window: the running median is over the last `window` losses (spikes included:
            the median ignores a few outliers, and a lasting change of level is followed).
        warmup: no spike before this many iterations are done, nor before the window is
            full (the loss falls fast at first; its median would lag behind).
    """

    def __init__(self, factor: float = 3.0, window: int = 100, warmup: int = 100) -> None:
        if factor < 0 or window < 1 or warmup < 0:
            raise ValueError(f"spike guard needs factor >= 0, window >= 1, warmup >= 0; "
                             f"got {factor}, {window}, {warmup}")
        self.factor = factor
        self.window = window
        self.warmup = warmup
        self.recent: deque[float] = deque(maxlen=window)

    def reset(self, losses: Sequence[float]) -> None:
        """Continue after `losses` (the history up to a restored checkpoint)."""
        self.recent.clear()
        self.recent.extend(losses[-self.window:])

    def check(self, iteration: int, loss: float) -> Spike | None:
        """Raise `NonFiniteLoss` for nan/inf; return a `Spike` or None; remember `loss`."""
        if not math.isfinite(loss):
            raise NonFiniteLoss(iteration, loss)
        spike = None
        if self.factor > 0 and iteration > self.warmup and len(self.recent) == self.window:
            median = statistics.median(self.recent)
            if loss > self.factor * median:
                spike = Spike(iteration, loss, median, self.factor)
        self.recent.append(loss)
        return spike
