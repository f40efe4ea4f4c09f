"""The packing instance every allocator works on: plain integer arrays.

Buffers are numbered ``0..n-1``; buffer ``i`` lives in ``[lowers[i],
uppers[i])`` and needs ``sizes[i]`` bytes. Two buffers *conflict* when their
lifetimes intersect; conflicting buffers may not share bytes. An allocator
returns one offset per buffer; the *height* of a packing is the highest byte
any buffer reaches.

This module owns the analyses the heuristics and the exact search share: the
conflict lists (one sweep), the independent components of the conflict graph
(cuts in time that no buffer crosses), and the interval lower bound.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field


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

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def neighbours(self) -> list[list[int]]:
        """Conflict lists, built by one sweep over lifetimes (O(n log n + edges))."""
        if self._neighbours is None:
            self._neighbours = conflict_lists(self.lowers, self.uppers, self.sizes)
        return self._neighbours

    def height(self, offsets: list[int]) -> int:
        """The highest byte any buffer reaches under ``offsets``."""
        return max((o + s for o, s in zip(offsets, self.sizes)), default=0)

    def subset(self, indices: list[int]) -> PackingInstance:
        """The instance restricted to ``indices`` (renumbered ``0..len-1``)."""
        return PackingInstance([self.lowers[i] for i in indices], [self.uppers[i] for i in indices],
                               [self.sizes[i] for i in indices], self.alignment)

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


def conflict_lists(lowers: list[int], uppers: list[int], sizes: list[int]) -> list[list[int]]:
    """``result[i]``: the buffers whose lifetimes intersect buffer ``i``'s.

    Buffers are swept by start time while a heap holds the live ones by end
    time; each buffer conflicts with everything still live when it starts.
    Zero-size buffers get no conflicts.
    """
    n = len(sizes)
    result: list[list[int]] = [[] for _ in range(n)]
    live: list[tuple[int, int]] = []   # (upper, index)
    for i in sorted(range(n), key=lowers.__getitem__):
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
