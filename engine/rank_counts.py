"""Exact counts of float32 scores below query values, without sorting the scores.

`counts_at(scores, queries)` gives, for sorted distinct float32 queries q, the number of
scores `< q` and `<= q`: what `np.searchsorted(np.sort(scores), q, 'left' / 'right')`
gives, in less time than the sort alone (about 0.7x on 65 M scores here) and with 2 bytes
per score of memory instead of a copy of the scores.

How. A float32 maps to a 32-bit key with the same order (`order_keys`). The top 16 bits
of the key name a slab of 65,536 consecutive float32 values. The scores are grouped by
slab a chunk at a time (a counting sort, `scipy.sparse`'s compiled `coo_tocsr`, else a
stable argsort), keeping only the low 16 bits. A slab that holds a query is then
histogrammed on those 16 bits (65,536 bins that stay in cache): the cumulative counts of
the slabs below plus that histogram's cumulative counts at the query are the exact
counts. A slab without a query is only counted. Below `SORT_BELOW` scores, or for other
dtypes, the scores are sorted instead (same values).
"""
from __future__ import annotations

import cv2
import numpy as np

try:  # the counting sort behind scipy's COO -> CSR conversion: a stable scatter by row
    from scipy.sparse._sparsetools import coo_tocsr as _coo_tocsr
except ImportError:  # pragma: no cover - a scipy without it: the argsort fallback
    _coo_tocsr = None

# Fewer scores than this are sorted: the slab machinery has a fixed cost of a few ms.
SORT_BELOW = 1 << 22
# Scores grouped per step: bounds the step's temporaries (12 bytes per score, 12 MiB).
CHUNK = 1 << 20
# cv2.calcHist returns float32 counts: exact while every count is below 2**24.
_HIST_STEP = 1 << 24
_SLABS = 1 << 16


def order_keys(x: np.ndarray, positive: bool = False) -> np.ndarray:
    """uint32 keys in the order of the float32 values `x` (no NaN); equal values give
    equal keys (-0.0 and +0.0 too). `positive=True` when every value is > 0: the bit
    patterns themselves are then in order (one step less)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    if positive:
        return bits
    bits = (x + np.float32(0)).view(np.uint32)  # -0.0 + 0.0 is +0.0
    flip = bits >> 31
    np.negative(flip, out=flip)  # 0 for +, all ones for -
    flip |= np.uint32(0x80000000)
    flip ^= bits
    return flip


class _Grouper:
    """Groups scores by slab a chunk at a time: a stable counting sort on the slab (the
    top 16 bits of the key) that carries the low 16 bits."""

    def __init__(self, size: int):
        """`size`: the largest chunk (buffers reused chunk after chunk)."""
        self.starts = np.empty(_SLABS + 1, dtype=np.int32)
        self.rows = np.empty(size, dtype=np.uint32)
        self.low = np.empty(size, dtype=np.uint16)
        if _coo_tocsr is not None:
            self.columns_out = np.empty(size, dtype=np.int32)  # unused, required by coo_tocsr

    def __call__(self, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Writes the low halves of `keys` into `out`, grouped by slab; returns where each
        slab starts in `out` (65,537 values, the last = keys.size)."""
        n = keys.size
        rows = np.right_shift(keys, 16, out=self.rows[:n]).view(np.int32)
        low = self.low[:n]
        np.copyto(low, keys, casting="unsafe")  # the low 16 bits
        if _coo_tocsr is None:
            order = np.argsort(rows, kind="stable")
            np.take(low, order, out=out)
            self.starts[:] = np.searchsorted(rows[order], np.arange(_SLABS + 1))
        else:
            # the rows again as the (unused) column indices: no array of its own to read
            _coo_tocsr(_SLABS, _SLABS, n, rows, rows, low, self.starts, self.columns_out[:n], out)
        return self.starts


def _slab_groups(scores: np.ndarray, active: np.ndarray, positive: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Groups the low halves of the keys of `scores` by slab, a chunk at a time.

    Returns (the low halves, grouped within each chunk: uint16, one per score; where each
    queried slab starts and stops in each chunk, n_chunks x n_active, indices into that
    array; the number of scores below each queried slab)."""
    low_halves = np.empty(scores.size, dtype=np.uint16)
    n_chunks = -(-scores.size // CHUNK)
    begin = np.empty((n_chunks, active.size), dtype=np.int64)
    end = np.empty((n_chunks, active.size), dtype=np.int64)
    group = _Grouper(min(CHUNK, scores.size))
    below = np.zeros(active.size, dtype=np.int64)
    for i, start in enumerate(range(0, scores.size, CHUNK)):
        keys = order_keys(scores[start:start + CHUNK], positive)
        starts = group(keys, low_halves[start:start + keys.size])
        below += starts[active]
        begin[i] = starts[active] + start
        end[i] = starts[active + 1] + start
    return low_halves, begin, end, below


def _histogram16(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Exact histogram of uint16 values over 65,536 bins into `out` (float32 counts, exact
    below 2**24: cv2.calcHist on the two bytes as two 8-bit channels, its fastest path)."""
    view = out.reshape(256, 256)
    # channel 1 = the high byte (little-endian): bin [high, low] = the value
    cv2.calcHist([values.view(np.uint8).reshape(1, -1, 2)], [1, 0], None, [256, 256],
                 [0, 256, 0, 256], hist=view)
    return out


def _slab_at_most(values: np.ndarray, lows: np.ndarray, hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values <= each low, values == each low) for ascending distinct `lows`: the
    histogram in steps of fewer than 2**24 values (float32 counts stay exact), the sums
    between consecutive lows in float64, then their running sum."""
    at_most = np.zeros(lows.size)
    equal = np.zeros(lows.size)
    starts = np.append(0, lows + 1)  # hist has a zero appended: lows[-1] + 1 is valid
    for start in range(0, values.size, _HIST_STEP):
        _histogram16(values[start:start + _HIST_STEP], hist[:-1])
        at_most += np.add.reduceat(hist, starts, dtype=np.float64)[:lows.size]
        equal += hist[lows]
    return np.cumsum(at_most).astype(np.int64), equal.astype(np.int64)


def _counts_by_slabs(scores: np.ndarray, queries: np.ndarray, positive: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    query_keys = order_keys(queries, positive)
    query_slabs = (query_keys >> 16).astype(np.int64)  # ascending: the queries are
    first = np.flatnonzero(np.diff(query_slabs, prepend=-1))
    active = query_slabs[first]
    last = np.append(first[1:], query_slabs.size)
    low_halves, begin, end, slabs_below = _slab_groups(scores, active, positive)
    below = np.empty(queries.size, dtype=np.int64)
    not_above = np.empty(queries.size, dtype=np.int64)
    slab = np.empty(int((end - begin).sum(axis=0).max()), dtype=np.uint16)  # reused
    hist = np.zeros(_SLABS + 1, dtype=np.float32)
    for j in range(active.size):
        pieces = [low_halves[a:b] for a, b in zip(begin[:, j].tolist(), end[:, j].tolist())]
        size = int(end[:, j].sum() - begin[:, j].sum())
        lows = (query_keys[first[j]:last[j]] & 0xFFFF).astype(np.intp)
        at_most, equal = _slab_at_most(np.concatenate(pieces, out=slab[:size]), lows, hist)
        not_above[first[j]:last[j]] = at_most + slabs_below[j]
        below[first[j]:last[j]] = at_most + slabs_below[j] - equal
    return below, not_above


def counts_at(scores: np.ndarray, queries: np.ndarray, positive: bool | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(`#scores < q`, `#scores <= q`) for each query q, exactly, as int64 arrays.

    Args:
        scores: 1-D, float32 for the slab path (other dtypes are sorted), no NaN.
        queries: 1-D, ascending and distinct, of the scores' dtype.
        positive: whether every score is > 0 (computed when None).
    """
    scores = np.ascontiguousarray(scores).ravel()
    queries = np.asarray(queries, dtype=scores.dtype)
    if scores.dtype != np.float32 or scores.size < SORT_BELOW or queries.size == 0:
        ordered = np.sort(scores)
        return (np.searchsorted(ordered, queries, side="left").astype(np.int64),
                np.searchsorted(ordered, queries, side="right").astype(np.int64))
    if positive is None:
        positive = bool(scores.min() > 0)
    return _counts_by_slabs(scores, queries, positive and bool(queries[0] > 0))
