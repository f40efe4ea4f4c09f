"""Greedy allocators: place buffers one by one into the lowest gap that fits.

The core is TFLite's "greedy by size" (also TelaMalloc's baseline): take the
buffers in some order; for each, look at the conflicting buffers already
placed, walk the gaps between them from the bottom up, and take the
tightest gap that fits (best fit) or the first one (first fit); if none fits,
go on top. The order matters a lot and no order wins on every instance, so
:func:`greedy_portfolio` runs several and keeps the lowest packing.

Those variants read the conflict lists, which an instance where thousands of
buffers live at once cannot afford (``n**2 / 2`` pairs). :func:`sweep_packing`
needs none: it replays the lifetimes in time order through a best-fit free
list, as a runtime allocator would, in ``O(n log n)``; it is the portfolio's
fallback and its only variant on such instances.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from memplan.solvers.alloc_instance import (PackingInstance, SortedKeys, align_up, conflict_weights, live_peak,
                                             range_max)


def place_in_order(instance: PackingInstance, order: list[int], best_fit: bool = True,
                   deadline: float | None = None) -> list[int] | None:
    """Offsets from placing buffers in ``order``, each in the best (or first) gap that fits.

    Returns None if ``deadline`` (a ``time.monotonic()`` value) passes first.

    >>> inst = PackingInstance(lowers=[0, 1, 2], uppers=[2, 3, 4], sizes=[4, 2, 4])
    >>> place_in_order(inst, [0, 2, 1])
    [0, 4, 0]
    """
    sizes = instance.sizes
    alignment = instance.alignment
    neighbours = instance.neighbours
    offsets = [-1] * len(sizes)
    for k, i in enumerate(order):
        if deadline is not None and k % 128 == 127 and time.monotonic() > deadline:
            return None
        size = sizes[i]
        if size == 0:
            offsets[i] = 0
            continue
        taken = sorted((offsets[j], offsets[j] + sizes[j]) for j in neighbours[i] if offsets[j] >= 0)
        chosen, chosen_gap = -1, None
        top = 0                                   # highest byte below the gap being looked at
        for start, end in taken:
            gap_start = align_up(top, alignment)
            gap = start - gap_start
            if gap >= size and (chosen_gap is None or gap < chosen_gap):
                chosen, chosen_gap = gap_start, gap
                if not best_fit:
                    break
            top = max(top, end)
        offsets[i] = chosen if chosen >= 0 else align_up(top, alignment)
    return offsets


def sweep_packing(instance: PackingInstance) -> list[int]:
    """Offsets from replaying the lifetimes in time order through a best-fit free list.

    At each start (ends first at equal times, larger buffers first among
    starts) the buffer takes the smallest free gap below the top that holds
    it, else goes on top; at each end its bytes return to the free list and
    merge with free neighbours. Sizes are rounded up to the alignment inside
    the free list, so every gap starts aligned. O(n log n).

    >>> sweep_packing(PackingInstance(lowers=[0, 1, 2], uppers=[2, 3, 4], sizes=[4, 2, 4]))
    [0, 4, 0]
    """
    sizes, alignment = instance.sizes, instance.alignment
    events = sorted_events(instance)
    offsets = [0] * len(sizes)
    by_size = SortedKeys()                   # free gaps below the top: (size, start)
    gap_end: dict[int, int] = {}             # start -> end of each gap
    gap_start: dict[int, int] = {}           # end -> start of each gap
    top = 0
    starts_left = len(events) // 2

    def remove_gap(start: int, end: int) -> None:
        by_size.remove((end - start, start))
        del gap_end[start], gap_start[end]

    def add_gap(start: int, end: int) -> None:
        by_size.add((end - start, start))
        gap_end[start], gap_start[end] = end, start

    for is_start, i in events:
        if starts_left == 0:
            break                                # every buffer has its offset: the frees left change nothing
        need = align_up(sizes[i], alignment)
        if is_start:
            starts_left -= 1
            gap = by_size.first_at_least((need, -1))
            if gap is not None:
                size, start = gap
                remove_gap(start, start + size)
                if size > need:
                    add_gap(start + need, start + size)
                offsets[i] = start
            else:
                offsets[i], top = top, top + need
            continue
        start, end = offsets[i], offsets[i] + need
        if end in gap_end:                       # merge with the free gap above
            above = gap_end[end]
            remove_gap(end, above)
            end = above
        if start in gap_start:                   # ... and the one below
            below = gap_start[start]
            remove_gap(below, start)
            start = below
        if end >= top:
            top = start
        else:
            add_gap(start, end)
    return offsets


def sorted_events(instance: PackingInstance) -> list[tuple[int, int]]:
    """``(is_start, buffer)`` for the non-empty buffers by time, ends first, then larger starts first."""
    n = len(instance)
    keep = [i for i in range(n) if instance.sizes[i] > 0]
    try:
        times = np.asarray([instance.lowers[i] for i in keep] + [instance.uppers[i] for i in keep], dtype=np.int64)
        size = np.asarray([instance.sizes[i] for i in keep], dtype=np.int64)
    except OverflowError:                        # beyond int64: the same order, sorted in Python
        events = sorted([(instance.lowers[i], 1, -instance.sizes[i], i) for i in keep]
                        + [(instance.uppers[i], 0, 0, i) for i in keep])
        return [(e[1], e[3]) for e in events]
    index = np.asarray(keep + keep, dtype=np.int64)
    kind = np.concatenate([np.ones(len(keep), dtype=np.int64), np.zeros(len(keep), dtype=np.int64)])
    neg_size = np.concatenate([-size, np.zeros(len(keep), dtype=np.int64)])
    order = np.lexsort((index, neg_size, kind, times))
    return list(zip(kind[order].tolist(), index[order].tolist()))


def section_totals(instance: PackingInstance) -> list[int]:
    """For each buffer, the most bytes live at any moment of its lifetime.

    A buffer in a crowded stretch of time is the hardest to place; MiniMalloc
    calls this key the buffer's section total ("T"). One sweep for the live
    bytes per section, then range maxima (a sparse table): O(n log n).
    """
    times = sorted(set(instance.lowers) | set(instance.uppers))
    index = {t: k for k, t in enumerate(times)}
    live = [0] * len(times)
    for lo, hi, size in zip(instance.lowers, instance.uppers, instance.sizes):
        live[index[lo]] += size
        live[index[hi]] -= size
    running = 0
    for k in range(len(times)):
        running += live[k]
        live[k] = running
    return range_max(live, [index[lo] for lo in instance.lowers], [index[hi] for hi in instance.uppers])


def orderings(instance: PackingInstance) -> dict[str, Callable[[], list[int]]]:
    """Named buffer orders for the portfolio, most useful first (each built lazily)."""
    n = len(instance)
    lo, hi, size = instance.lowers, instance.uppers, instance.sizes
    length = [hi[i] - lo[i] for i in range(n)]

    def by(key: Callable[[int], tuple]) -> Callable[[], list[int]]:
        return lambda: sorted(range(n), key=key)

    def total_first() -> list[int]:
        total = section_totals(instance)
        return sorted(range(n), key=lambda i: (-total[i], -size[i], -length[i], i))

    def degree_first() -> list[int]:
        degree = conflict_weights(lo, hi, size)
        return sorted(range(n), key=lambda i: (-degree[i], -size[i], i))

    return {
        "size": by(lambda i: (-size[i], -length[i], lo[i], i)),
        "total": total_first,
        "area": by(lambda i: (-size[i] * length[i], -size[i], i)),
        "length": by(lambda i: (-length[i], -size[i], i)),
        "conflicts": degree_first,
        "start": by(lambda i: (lo[i], -size[i], i)),
        "end": by(lambda i: (-hi[i], -size[i], i)),
        # the caller's own order: often the program's (topological) order, or the order the
        # packing was built in; TFLite and omnimalloc ("greedy", "best_fit") place in it.
        # Last, so that on a tie the sorted orders above keep the win.
        "input": lambda: list(range(n)),
    }


@dataclass
class GreedyResult:
    """The best packing the portfolio found, the variant that found it, and every variant's height."""

    offsets: list[int]
    height: int
    variant: str
    tried: dict[str, int]


def greedy_portfolio(instance: PackingInstance, time_budget: float | None = None,
                     target: int | None = None, deadline: float | None = None) -> GreedyResult:
    """Run every ordering with best fit and first fit, then the sweep; keep the lowest packing.

    New variants start while ``time_budget`` seconds last; a variant still
    running at ``deadline`` (a ``time.monotonic()`` value; default: the end of
    the time budget) is abandoned. The portfolio stops early once a packing
    reaches ``target`` (default: the interval lower bound, which no packing
    can beat). The first variant (size order, best fit) always runs unless
    the deadline cuts it short or the instance has too many conflicting pairs
    for conflict lists; :func:`sweep_packing` then stands in for it. Ties go
    to the earlier variant.
    """
    start = time.monotonic()
    if target is None:
        target = live_peak(instance.lowers, instance.uppers, instance.sizes, instance.alignment)
    if deadline is None:
        deadline = start + time_budget if time_budget is not None else float("inf")
    best: GreedyResult | None = None
    tried: dict[str, int] = {}

    def consider(offsets: list[int], variant: str) -> bool:
        nonlocal best
        height = instance.height(offsets)
        tried[variant] = height
        if best is None or height < best.height:
            best = GreedyResult(offsets, height, variant, tried)
        return best.height <= target

    if instance.build_conflicts(deadline):
        variants = [(name, make_order, fit) for name, make_order in orderings(instance).items()
                    for fit in ("best-fit", "first-fit")]
        order, order_of = None, None
        for name, make_order, fit in variants:
            out_of_budget = time_budget is not None and time.monotonic() - start > time_budget
            if (best is not None and out_of_budget) or time.monotonic() > deadline:
                break
            if order_of != name:
                order, order_of = make_order(), name
            offsets = place_in_order(instance, order, best_fit=(fit == "best-fit"), deadline=deadline)
            if offsets is None:                   # the deadline cut this variant short
                break
            if consider(offsets, f"{name}/{fit}"):
                return best
    if best is None or time.monotonic() <= deadline:
        consider(sweep_packing(instance), "sweep/best-fit")
    assert best is not None
    return best
