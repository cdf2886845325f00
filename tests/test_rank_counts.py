"""rank_counts: exact counts below / at query values against np.sort + np.searchsorted,
on the slab path (forced on small arrays) and the sorting path."""
import numpy as np
import pytest

from engine import rank_counts
from engine.rank_counts import counts_at, order_keys


@pytest.fixture
def slab_path(monkeypatch):
    """The slab machinery on arrays of any size, in many small chunks."""
    monkeypatch.setattr(rank_counts, "SORT_BELOW", 0)
    monkeypatch.setattr(rank_counts, "CHUNK", 1000)


def expected_counts(scores: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(scores)
    return np.searchsorted(ordered, queries, "left"), np.searchsorted(ordered, queries, "right")


def awkward_values() -> np.ndarray:
    """float32 values around every place where bit patterns and order part ways."""
    tiny = np.float32(1e-45)  # the smallest denormal
    special = [-np.inf, -3e38, -2.0, -1.0, -tiny, -0.0, 0.0, tiny, 1e-38, 0.5, 1.0, 2.0, 3e38, np.inf]
    values = np.array(special, dtype=np.float32)
    return np.concatenate([values, np.nextafter(values, np.float32(0)), np.nextafter(values, np.float32(1))])


def test_order_keys_follow_the_float_order():
    values = awkward_values()
    keys = order_keys(values)
    for i in range(values.size):
        for j in range(values.size):
            assert (values[i] < values[j]) == (keys[i] < keys[j])
            assert (values[i] == values[j]) == (keys[i] == keys[j])  # -0.0 == +0.0 too


def test_order_keys_of_positive_values_are_their_bits():
    values = np.abs(awkward_values())
    values = values[values > 0]
    assert np.array_equal(np.argsort(order_keys(values, positive=True), kind="stable"),
                          np.argsort(values, kind="stable"))


def score_cases():
    rng = np.random.default_rng(1)
    smooth = rng.random(20000, dtype=np.float32) * 0.5 + 0.25  # many slabs, few ties
    yield smooth, np.unique(smooth[::7])
    few = np.round(rng.random(20000) * 30).astype(np.float32) / 30  # heavy ties
    yield few, np.unique(np.concatenate([few[::5], [-1, 0.5 + 1e-7, 2]]).astype(np.float32))
    mixed = (rng.standard_normal(20000) * 10).astype(np.float32)  # both signs, zeros
    mixed[::97] = 0.0
    mixed[1::97] = -0.0
    yield mixed, np.unique(np.concatenate([mixed[::11], [0.0]]).astype(np.float32))
    wide = np.concatenate([awkward_values()[1:-1], (rng.random(5000) * 1e3).astype(np.float32)])
    yield wide, np.unique(wide[::3])  # queries in far-apart slabs, empty slabs between them


@pytest.mark.parametrize("case", range(4))
def test_counts_at_equal_searchsorted_on_the_slab_path(case, slab_path):
    scores, queries = list(score_cases())[case]
    below, at_most = counts_at(scores, queries)
    expected_below, expected_at_most = expected_counts(scores, queries)
    assert np.array_equal(below, expected_below) and np.array_equal(at_most, expected_at_most)


@pytest.mark.parametrize("case", [0, 1])
def test_positive_keys_give_the_same_counts(case, slab_path):
    scores, queries = list(score_cases())[case]
    scores, queries = scores + np.float32(2), queries + np.float32(2)
    assert scores.min() > 0 and queries.min() > 0
    for a, b in zip(counts_at(scores, queries, positive=True), counts_at(scores, queries, positive=False)):
        assert np.array_equal(a, b)


def test_sorting_path_and_other_dtypes():
    scores, queries = list(score_cases())[1]
    for s, q in [(scores, queries), (scores.astype(np.float64), queries.astype(np.float64))]:
        below, at_most = counts_at(s, q)  # small: sorted
        assert np.array_equal(below, expected_counts(s, q)[0])
        assert np.array_equal(at_most, expected_counts(s, q)[1])


def test_grouping_without_scipy_counting_sort(slab_path, monkeypatch):
    """The stable argsort that stands in for scipy's coo_tocsr gives the same counts."""
    scores, queries = list(score_cases())[2]
    with_scipy = counts_at(scores, queries)
    monkeypatch.setattr(rank_counts, "_coo_tocsr", None)
    without = counts_at(scores, queries)
    assert all(np.array_equal(a, b) for a, b in zip(with_scipy, without))
    assert np.array_equal(without[1], expected_counts(scores, queries)[1])


def test_slab_histogram_counts_are_exact_in_several_steps(monkeypatch):
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.integers(0, 65536, 30000), np.full(5000, 65535), np.zeros(3000)]).astype(np.uint16)
    lows = np.unique(np.concatenate([rng.integers(0, 65536, 50), [0, 65535]]))
    histogram = np.bincount(values, minlength=65536)
    hist = np.zeros(65537, np.float32)
    for step in (1 << 24, 4096):  # fewer than 2**24 values per step keeps float32 counts exact
        monkeypatch.setattr(rank_counts, "_HIST_STEP", step)
        at_most, equal = rank_counts._slab_at_most(values, lows, hist)
        assert np.array_equal(at_most, np.cumsum(histogram)[lows])
        assert np.array_equal(equal, histogram[lows])
