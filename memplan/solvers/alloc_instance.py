"""The packing instance every allocator works on: plain integer arrays.

Buffers are numbered ``0..n-1``; buffer ``i`` lives in ``[lowers[i],
uppers[i])`` and needs ``sizes[i]`` bytes. Two buffers *conflict* when their
lifetimes intersect; conflicting buffers may not share bytes. An allocator
returns one offset per buffer; the *height* of a packing is the highest byte
any buffer reaches.

This module owns the analyses the heuristics and the exact search share: the
conflict lists (one sweep), the independent components of the conflict graph
(cuts in time that no buffer crosses), and the interval lower bound.

The conflict graph of ``n`` buffers can have ``n**2 / 2`` edges (every buffer
live at once), so it is only materialised up to :data:`MAX_CONFLICT_EDGES`;
:func:`conflict_count` and :func:`section_spans` say what it would cost in
``O(n log n)`` first, and the analyses that every instance needs (bound,
components, section totals, conflict weights) never build it.
"""
from __future__ import annotations

import heapq
import time
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field

import numpy as np

MAX_CONFLICT_EDGES = 2_000_000       # conflict lists beyond this are never built (memory, time)


def align_up(value: int, alignment: int) -> int:
    """The smallest multiple of ``alignment`` that is ``>= value``."""
    if alignment <= 1:
        return value
    return -(-value // alignment) * alignment


@dataclass
class PackingInstance:
    """Lifetimes, sizes and offset alignment of a set of buffers, by index.

    ``neighbours[i]`` lists the buffers whose lifetimes intersect ``i``'s,
    computed on first use. Zero-size buffers conflict with nothing: they take
    no bytes wherever they are put.
    """

    lowers: list[int]
    uppers: list[int]
    sizes: list[int]
    alignment: int = 1
    _neighbours: list[list[int]] | None = field(default=None, repr=False)
    _edges: int | None = field(default=None, repr=False)
    _csr: tuple | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def neighbours(self) -> list[list[int]]:
        """Conflict lists, built by one sweep over lifetimes (O(n log n + edges)).

        Raises ``ValueError`` above :data:`MAX_CONFLICT_EDGES` edges: callers
        check :meth:`build_conflicts` (or :attr:`edges`) first.
        """
        if self._neighbours is None and not self.build_conflicts():
            raise ValueError(f"{self.edges} conflicting pairs of buffers: above the limit of "
                             f"{MAX_CONFLICT_EDGES} for conflict lists")
        return self._neighbours

    @property
    def edges(self) -> int:
        """Number of conflicting pairs, counted in O(n log n) without listing them."""
        if self._edges is None:
            self._edges = conflict_count(self.lowers, self.uppers, self.sizes)
        return self._edges

    def build_conflicts(self, deadline: float | None = None, max_edges: int = MAX_CONFLICT_EDGES) -> bool:
        """Build :attr:`neighbours` if there are at most ``max_edges`` conflicts and it is done by
        ``deadline`` (a ``time.monotonic()`` value); returns whether the lists are available."""
        if self._neighbours is not None:
            return True
        if self.edges > max_edges:
            return False
        self._neighbours = conflict_lists(self.lowers, self.uppers, self.sizes, deadline)
        return self._neighbours is not None

    def height(self, offsets: list[int]) -> int:
        """The highest byte any buffer reaches under ``offsets``."""
        return max((o + s for o, s in zip(offsets, self.sizes)), default=0)

    def subset(self, indices: list[int]) -> PackingInstance:
        """The instance restricted to ``indices`` (renumbered ``0..len-1``).

        When ``indices`` is every buffer in order, the analyses already made
        (conflict lists, their count) carry over instead of being redone.
        """
        sub = PackingInstance([self.lowers[i] for i in indices], [self.uppers[i] for i in indices],
                              [self.sizes[i] for i in indices], self.alignment)
        if len(indices) == len(self) and all(i == k for k, i in enumerate(indices)):
            sub._neighbours, sub._edges, sub._csr = self._neighbours, self._edges, self._csr
        return sub

    @property
    def neighbour_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """The conflict lists as numpy arrays ``(indptr, indices)``.

        Buffer ``i``'s conflicts are ``indices[indptr[i]:indptr[i + 1]]``.
        """
        if self._csr is None:
            lists = self.neighbours
            lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
            indptr = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
            indices = np.fromiter((j for x in lists for j in x), dtype=np.int64, count=int(indptr[-1]))
            self._csr = (indptr, indices)
        return self._csr

    def lower_bound(self) -> int:
        """Interval lower bound on the height of any packing of this instance.

        The most bytes live at one time. For an interval conflict graph this
        is also the maximum-weight clique, so no clique bound is stronger.
        With an alignment ``A > 1``, every live buffer but the topmost one
        takes its size rounded up to ``A``, which can only raise the bound.
        """
        return live_peak(self.lowers, self.uppers, self.sizes, self.alignment)


def live_peak(lowers: list[int], uppers: list[int], sizes: list[int], alignment: int = 1) -> int:
    """Max over time of the bytes live at once (ends before starts at equal times)."""
    if alignment <= 1 and sizes and sum(sizes) < 2**62 and max(map(abs, lowers)) < 2**62 \
            and max(map(abs, uppers)) < 2**62:
        # the same sweep vectorised: sort the endpoints (ends first at equal times), running sum
        size = np.asarray(sizes, dtype=np.int64)
        times = np.concatenate([np.asarray(lowers, dtype=np.int64), np.asarray(uppers, dtype=np.int64)])
        is_start = np.concatenate([np.ones(len(size), dtype=np.int8), np.zeros(len(size), dtype=np.int8)])
        order = np.lexsort((is_start, times))
        running = np.cumsum(np.concatenate([size, -size])[order])
        return max(int(running.max()), 0)
    events = []
    for lo, hi, size in zip(lowers, uppers, sizes):
        if size > 0:
            rounded = align_up(size, alignment)
            events.append((lo, 1, rounded, rounded - size))
            events.append((hi, 0, rounded, rounded - size))
    events.sort()
    live = 0
    peak = 0
    slacks: list[int] = []   # a max-heap (negated) of rounding slack of live buffers
    removed: dict[int, int] = {}
    for _, is_start, rounded, slack in events:
        if is_start:
            live += rounded
            if alignment > 1:
                heapq.heappush(slacks, -slack)
            # the topmost live buffer needs only its true size
            top_slack = _heap_max(slacks, removed) if alignment > 1 else 0
            peak = max(peak, live - top_slack)
        else:
            live -= rounded
            if alignment > 1:
                removed[slack] = removed.get(slack, 0) + 1
    return peak


def _heap_max(heap: list[int], removed: dict[int, int]) -> int:
    """Largest live value of a negated max-heap with lazy deletions."""
    while heap and removed.get(-heap[0], 0):
        removed[-heap[0]] -= 1
        heapq.heappop(heap)
    return -heap[0] if heap else 0


def conflict_lists(lowers: list[int], uppers: list[int], sizes: list[int],
                   deadline: float | None = None) -> list[list[int]] | None:
    """``result[i]``: the buffers whose lifetimes intersect buffer ``i``'s (None if ``deadline`` passes).

    Buffers are swept by start time while a heap holds the live ones by end
    time; each buffer conflicts with everything still live when it starts.
    Zero-size buffers get no conflicts.
    """
    n = len(sizes)
    result: list[list[int]] = [[] for _ in range(n)]
    live: list[tuple[int, int]] = []   # (upper, index)
    for k, i in enumerate(sorted(range(n), key=lowers.__getitem__)):
        if deadline is not None and k % 256 == 255 and time.monotonic() > deadline:
            return None
        if sizes[i] == 0:
            continue
        lo = lowers[i]
        while live and live[0][0] <= lo:
            heapq.heappop(live)
        for _, j in live:
            result[i].append(j)
            result[j].append(i)
        heapq.heappush(live, (uppers[i], i))
    return result


def components(lowers: list[int], uppers: list[int], sizes: list[int]) -> list[list[int]]:
    """Independent groups of non-empty buffers: cut time wherever no buffer crosses.

    Buffers in different groups never conflict, so each group is packed on
    its own and the height of the whole is the highest group's.
    """
    order = sorted((i for i in range(len(sizes)) if sizes[i] > 0), key=lowers.__getitem__)
    groups: list[list[int]] = []
    reach = None
    for i in order:
        if reach is None or lowers[i] >= reach:
            groups.append([])
            reach = uppers[i]
        groups[-1].append(i)
        reach = max(reach, uppers[i])
    return groups


def conflict_count(lowers: list[int], uppers: list[int], sizes: list[int]) -> int:
    """Number of pairs of non-empty buffers whose lifetimes intersect, in O(n log n).

    Buffer ``i`` conflicts with every buffer that started before it (in start
    order) and has not ended by its start; a buffer that ended by then
    started before it, so that count is its rank minus the ends ``<= lower``.

    >>> conflict_count([0, 1, 2], [2, 3, 4], [1, 1, 1])
    2
    """
    keep = [i for i in range(len(sizes)) if sizes[i] > 0]
    if len(keep) < 2:
        return 0
    try:
        lo = np.sort(np.asarray([lowers[i] for i in keep], dtype=np.int64))
        hi = np.sort(np.asarray([uppers[i] for i in keep], dtype=np.int64))
    except OverflowError:                   # times beyond int64: the same count in Python
        lo_list, hi_list = sorted(lowers[i] for i in keep), sorted(uppers[i] for i in keep)
        return sum(rank - bisect_right(hi_list, start) for rank, start in enumerate(lo_list))
    return int((np.arange(len(lo), dtype=np.int64) - np.searchsorted(hi, lo, side="right")).sum())


def section_spans(lowers: list[int], uppers: list[int]) -> int:
    """Sum over buffers of the elementary time intervals (sections) each one spans."""
    times = sorted(set(lowers) | set(uppers))
    index = {t: k for k, t in enumerate(times)}
    return sum(index[hi] - index[lo] for lo, hi in zip(lowers, uppers))


def range_max(values: list[int], starts: list[int], ends: list[int]) -> list[int]:
    """``max(values[s:e])`` for every ``(s, e)`` (0 for an empty range), by a sparse table: O((n + q) log n).

    >>> range_max([3, 1, 4, 1, 5], [0, 1, 3, 2], [2, 3, 5, 2])
    [3, 4, 5, 0]
    """
    if not starts:
        return []
    if not values:
        return [0] * len(starts)
    total = sum(abs(v) for v in values)
    dtype = np.int64 if total < 2**62 else np.float64     # a sort key: exact where it fits int64
    table = [np.asarray(values, dtype=dtype)]
    while (1 << len(table)) <= len(values):
        prev, step = table[-1], 1 << (len(table) - 1)
        table.append(np.maximum(prev[:-step], prev[step:]))
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    length = np.maximum(e - s, 1)
    level = np.floor(np.log2(length)).astype(np.int64)
    out = np.zeros(len(s), dtype=dtype)
    for k in range(len(table)):
        pick = (level == k) & (e > s)
        if pick.any():
            a, b = s[pick], e[pick] - (1 << k)
            out[pick] = np.maximum(table[k][a], table[k][b])
    return out.tolist()


def conflict_weights(lowers: list[int], uppers: list[int], sizes: list[int]) -> list[int]:
    """For each buffer, the total size of the buffers it conflicts with, in O(n log n).

    A non-empty buffer ``i`` conflicts with every non-empty ``j != i`` except
    those that end by its start or start at or after its end.
    """
    n = len(sizes)
    keep = [i for i in range(n) if sizes[i] > 0]
    by_end = sorted(keep, key=uppers.__getitem__)
    by_start = sorted(keep, key=lowers.__getitem__)
    ends = [uppers[i] for i in by_end]
    starts = [lowers[i] for i in by_start]
    ended = [0]
    for i in by_end:
        ended.append(ended[-1] + sizes[i])
    started = [0]
    for i in by_start:
        started.append(started[-1] + sizes[i])
    total = started[-1]
    out = [0] * n
    for i in keep:
        before = ended[bisect_right(ends, lowers[i])]                 # ended by i's start
        after = total - started[bisect_right(starts, uppers[i] - 1)]  # start at or after i's end
        out[i] = total - before - after - sizes[i]
    return out


class SortedKeys:
    """A sorted list of distinct comparable keys, kept in buckets of about :attr:`LOAD` keys.

    ``add``, ``remove`` and the neighbour queries cost O(log n + LOAD) where a
    plain sorted list would shift up to n items per change (the layout of
    ``sortedcontainers.SortedList``, without the dependency).

    >>> keys = SortedKeys()
    >>> for k in (5, 1, 3):
    ...     keys.add(k)
    >>> keys.first_at_least(2), keys.last_below(3), keys.last_below(1)
    (3, 1, None)
    """

    LOAD = 256

    def __init__(self):
        self.buckets: list[list] = []
        self.maxes: list = []

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)

    def add(self, key) -> None:
        if not self.buckets:
            self.buckets.append([key])
            self.maxes.append(key)
            return
        k = bisect_left(self.maxes, key)
        if k == len(self.buckets):
            k -= 1
            self.buckets[k].append(key)
            self.maxes[k] = key
        else:
            insort(self.buckets[k], key)
        bucket = self.buckets[k]
        if len(bucket) > 2 * self.LOAD:
            self.buckets[k:k + 1] = [bucket[:self.LOAD], bucket[self.LOAD:]]
            self.maxes[k:k + 1] = [bucket[self.LOAD - 1], bucket[-1]]

    def remove(self, key) -> None:
        """Remove ``key``, which must be present."""
        k = bisect_left(self.maxes, key)
        bucket = self.buckets[k]
        del bucket[bisect_left(bucket, key)]
        if bucket:
            self.maxes[k] = bucket[-1]
        else:
            del self.buckets[k], self.maxes[k]

    def first_at_least(self, key):
        """The smallest key ``>= key``, or None."""
        k = bisect_left(self.maxes, key)
        if k == len(self.maxes):
            return None
        bucket = self.buckets[k]
        return bucket[bisect_left(bucket, key)]

    def last_below(self, key):
        """The largest key ``< key``, or None."""
        k = bisect_left(self.maxes, key)
        if k < len(self.buckets):
            bucket = self.buckets[k]
            i = bisect_left(bucket, key)
            if i > 0:
                return bucket[i - 1]
        return self.buckets[k - 1][-1] if k > 0 else None
