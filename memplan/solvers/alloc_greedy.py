"""Greedy allocators: place buffers one by one into the lowest gap that fits.

The core is TFLite's "greedy by size" (also TelaMalloc's baseline): take the
buffers in some order; for each, look at the conflicting buffers already
placed, walk the gaps between them from the bottom up, and take the
tightest gap that fits (best fit) or the first one (first fit); if none fits,
go on top. The order matters a lot and no order wins on every instance, so
:func:`greedy_portfolio` runs several and keeps the lowest packing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from memplan.solvers.alloc_instance import PackingInstance, align_up, live_peak


def place_in_order(instance: PackingInstance, order: list[int], best_fit: bool = True) -> list[int]:
    """Offsets from placing buffers in ``order``, each in the best (or first) gap that fits.

    >>> inst = PackingInstance(lowers=[0, 1, 2], uppers=[2, 3, 4], sizes=[4, 2, 4])
    >>> place_in_order(inst, [0, 2, 1])
    [0, 4, 0]
    """
    sizes = instance.sizes
    alignment = instance.alignment
    neighbours = instance.neighbours
    offsets = [-1] * len(sizes)
    for i in order:
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


def section_totals(instance: PackingInstance) -> list[int]:
    """For each buffer, the most bytes live at any moment of its lifetime.

    A buffer in a crowded stretch of time is the hardest to place; MiniMalloc
    calls this key the buffer's section total ("T").
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
    return [max(live[index[lo]:index[hi]], default=0) for lo, hi in zip(instance.lowers, instance.uppers)]


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
        degree = [sum(size[j] for j in nbrs) for nbrs in instance.neighbours]
        return sorted(range(n), key=lambda i: (-degree[i], -size[i], i))

    return {
        "size": by(lambda i: (-size[i], -length[i], lo[i], i)),
        "total": total_first,
        "area": by(lambda i: (-size[i] * length[i], -size[i], i)),
        "length": by(lambda i: (-length[i], -size[i], i)),
        "conflicts": degree_first,
        "start": by(lambda i: (lo[i], -size[i], i)),
        "end": by(lambda i: (-hi[i], -size[i], i)),
    }


@dataclass
class GreedyResult:
    """The best packing the portfolio found, the variant that found it, and every variant's height."""

    offsets: list[int]
    height: int
    variant: str
    tried: dict[str, int]


def greedy_portfolio(instance: PackingInstance, time_budget: float | None = None,
                     target: int | None = None) -> GreedyResult:
    """Run every ordering with best fit and first fit; keep the lowest packing.

    The first variant (size order, best fit) always runs; the rest run while
    ``time_budget`` seconds last, and the portfolio stops early once a
    packing reaches ``target`` (default: the interval lower bound, which no
    packing can beat).
    """
    start = time.monotonic()
    if target is None:
        target = live_peak(instance.lowers, instance.uppers, instance.sizes, instance.alignment)
    best: GreedyResult | None = None
    tried: dict[str, int] = {}
    for name, make_order in orderings(instance).items():
        order = make_order()
        for fit in ("best-fit", "first-fit"):
            if best is not None and time_budget is not None and time.monotonic() - start > time_budget:
                break
            offsets = place_in_order(instance, order, best_fit=(fit == "best-fit"))
            height = instance.height(offsets)
            variant = f"{name}/{fit}"
            tried[variant] = height
            if best is None or height < best.height:
                best = GreedyResult(offsets, height, variant, tried)
            if best.height <= target:
                return best
    assert best is not None
    return best
