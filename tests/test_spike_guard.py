"""spike_guard.py on loss sequences (the trainer's reaction is tested in test_resume.py)."""
from __future__ import annotations

import math

import pytest

from engine.spike_guard import NonFiniteLoss, Spike, SpikeGuard


def feed(guard: SpikeGuard, losses: list[float], start: int = 1) -> list[Spike]:
    return [s for i, loss in enumerate(losses, start) if (s := guard.check(i, loss))]


def test_spike_after_warmup_is_reported_with_iteration_and_median():
    guard = SpikeGuard(factor=3.0, window=5, warmup=5)
    losses = [0.20, 0.22, 0.18, 0.21, 0.19, 0.20, 0.70, 0.20, 0.59, 0.61]
    spikes = feed(guard, losses)
    # 0.70 at iteration 7 > 3 x median(0.22, 0.18, 0.21, 0.19, 0.20) = 0.60; 0.59 is not;
    # 0.61 at iteration 10 > 3 x median(0.19, 0.20, 0.70, 0.20, 0.59) = 0.60
    assert [(s.iteration, s.loss) for s in spikes] == [(7, 0.70), (10, 0.61)]
    assert spikes[0].median == pytest.approx(0.20)
    assert spikes[0].message() == ("loss spike at iteration 7: 0.7000 > 3 x the running median "
                                   "0.2000 (3.5x)")


def test_no_spike_during_warmup_or_before_the_window_is_full():
    guard = SpikeGuard(factor=2.0, window=3, warmup=4)
    # iterations 1-4: warm-up (the 5.0 at 4 would be a spike otherwise)
    assert feed(guard, [1.0, 1.0, 1.0, 5.0]) == []
    assert [s.iteration for s in feed(guard, [1.0, 9.0], start=5)] == [6]
    late = SpikeGuard(factor=2.0, window=10, warmup=0)
    assert feed(late, [1.0] * 9 + [5.0]) == []  # window not full at iteration 10
    assert [s.iteration for s in feed(late, [1.0, 50.0], start=11)] == [12]


def test_factor_zero_disables_spikes_but_not_the_nan_check():
    guard = SpikeGuard(factor=0, window=2, warmup=0)
    assert feed(guard, [1.0, 1.0, 1e6]) == []
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(nan\) at iteration 4"):
        guard.check(4, math.nan)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_raises_naming_the_iteration(bad):
    guard = SpikeGuard()
    guard.check(1, 0.5)
    with pytest.raises(NonFiniteLoss) as err:
        guard.check(2, bad)
    assert err.value.iteration == 2 and f"({bad}) at iteration 2" in str(err.value)


def test_reset_continues_from_a_history():
    a, b = SpikeGuard(3.0, 4, 0), SpikeGuard(3.0, 4, 0)
    history = [0.3, 0.1, 0.1, 0.1, 0.1, 0.1]
    feed(a, history)
    b.reset(history)
    assert list(a.recent) == list(b.recent) == [0.1] * 4
    assert a.check(7, 0.35) == b.check(7, 0.35) == Spike(7, 0.35, 0.1, 3.0)


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        SpikeGuard(factor=-1)
    with pytest.raises(ValueError):
        SpikeGuard(window=0)
