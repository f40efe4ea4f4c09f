"""Exact allocation: a MiniMalloc-style branch-and-bound search.

MiniMalloc (Moffitt, ASPLOS 2023) decides "do these buffers fit in capacity
C?" by depth-first search over *canonical* packings only:

- Every buffer is placed at its *minimum offset*: the top of the highest
  conflicting buffer placed so far (0 if none), rounded up to the alignment.
  Any packing can be pushed down into this form without raising its height.
- Buffers are placed in non-decreasing (offset, preorder rank) order, so each
  canonical packing is reached along one path only.
- Dominance: a buffer whose minimum offset is at or above the lowest top any
  unplaced buffer could reach would leave a gap that another buffer could
  fill first; that branch is skipped.
- Inference, per *section* (an elementary time interval between endpoints):
  the bytes still to place in a section must fit between the section's floor
  (the top of what is placed there, and at least the offset being placed,
  since later offsets never go lower) and C.

The search is complete: "no packing" after it runs out of branches is a
proof. :func:`minimize_height` drives it with decreasing capacities and
node limits that double, trying several buffer preorders in turn (as
MiniMalloc's round robin does), warm-started from the best heuristic packing.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from memplan.solvers.alloc_greedy import section_totals
from memplan.solvers.alloc_instance import PackingInstance, align_up

FOUND, INFEASIBLE, NODE_LIMIT, TIMEOUT = "found", "infeasible", "node-limit", "timeout"


def preorders(instance: PackingInstance) -> dict[str, list[int]]:
    """MiniMalloc's static buffer orders (ties broken by the next key, all descending).

    ``length/area/total`` puts long-lived buffers first, ``total/area/length``
    the buffers of the most crowded stretch of time, and so on.
    """
    n = len(instance)
    size = instance.sizes
    length = [instance.uppers[i] - instance.lowers[i] for i in range(n)]
    area = [size[i] * length[i] for i in range(n)]
    total = section_totals(instance)
    keys = {"length": length, "area": area, "total": total}
    names = (("length", "area", "total"), ("total", "area", "length"), ("total", "length", "area"))
    return {"/".join(name): sorted(range(n), key=lambda i: tuple(-keys[k][i] for k in name) + (i,))
            for name in names}


@dataclass
class SearchOutcome:
    """One decision run: ``status`` is found / infeasible / node-limit / timeout."""

    status: str
    offsets: list[int] | None
    nodes: int


class _CanonicalSearch:
    """Depth-first search for a packing of height <= capacity, in one preorder.

    Arrays are indexed by *rank* (position in the preorder), so the canonical
    tie-break "lower rank first" is a plain integer comparison.
    """

    def __init__(self, instance: PackingInstance, order: list[int], capacity: int):
        self.order = order
        self.capacity = capacity
        self.alignment = instance.alignment
        rank = {buf: r for r, buf in enumerate(order)}
        n = len(order)
        self.size = np.array([instance.sizes[b] for b in order], dtype=np.int64)
        times = sorted(set(instance.lowers) | set(instance.uppers))
        section_of = {t: k for k, t in enumerate(times)}
        self.sections = [(section_of[instance.lowers[b]], section_of[instance.uppers[b]]) for b in order]
        self.neighbours = [np.array(sorted(rank[j] for j in instance.neighbours[b]), dtype=np.int64)
                           for b in order]
        self.min_offset = np.zeros(n, dtype=np.int64)
        self.placed = np.zeros(n, dtype=bool)
        self.offsets = np.full(n, -1, dtype=np.int64)
        self.floor = np.zeros(max(len(times) - 1, 1), dtype=np.int64)
        self.unplaced_bytes = np.zeros_like(self.floor)
        for r, (s0, s1) in enumerate(self.sections):
            self.unplaced_bytes[s0:s1] += self.size[r]
        self.nodes = 0
        self.solution: list[int] | None = None

    def run(self, node_limit: int, deadline: float) -> SearchOutcome:
        self.node_limit = node_limit
        self.deadline = deadline
        if len(self.order) == 0:
            return SearchOutcome(FOUND, [], 0)
        if int(self.unplaced_bytes.max()) > self.capacity:   # the interval bound already says no
            return SearchOutcome(INFEASIBLE, None, 0)
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old_limit, len(self.order) + 1000))
        try:
            status = self._search(0, 0)
        finally:
            sys.setrecursionlimit(old_limit)
        if status != FOUND:
            return SearchOutcome(status, None, self.nodes)
        offsets = [0] * len(self.order)
        for r, buf in enumerate(self.order):
            offsets[buf] = int(self.solution[r])
        return SearchOutcome(FOUND, offsets, self.nodes)

    def _candidates(self, last_offset: int, last_rank: int) -> np.ndarray | None:
        """Unplaced ranks to branch on, by (minimum offset, rank); None when all are placed."""
        unplaced = np.flatnonzero(~self.placed)
        if len(unplaced) == 0:
            return None
        offset = self.min_offset[unplaced]
        lowest_top = int((offset + self.size[unplaced]).min())
        keep = (offset < lowest_top) & ((offset > last_offset) | ((offset == last_offset) & (unplaced >= last_rank)))
        kept, kept_offset = unplaced[keep], offset[keep]
        return kept[np.lexsort((kept, kept_offset))]

    def _search(self, last_offset: int, last_rank: int) -> str:
        self.nodes += 1
        if self.nodes > self.node_limit:
            return NODE_LIMIT
        if self.nodes % 64 == 0 and time.monotonic() > self.deadline:
            return TIMEOUT
        candidates = self._candidates(last_offset, last_rank)
        if candidates is None:
            self.solution = self.offsets.tolist()
            return FOUND
        for r in candidates.tolist():
            status = self._try(r)
            if status != INFEASIBLE:
                return status
        return INFEASIBLE

    def _try(self, r: int) -> str:
        """Place rank ``r`` at its minimum offset, check, recurse, undo."""
        offset = int(self.min_offset[r])
        top = offset + int(self.size[r])
        s0, s1 = self.sections[r]
        # raise the minimum offset of unplaced conflicting buffers
        nbrs = self.neighbours[r]
        aligned_top = align_up(top, self.alignment)
        raised = nbrs[~self.placed[nbrs] & (self.min_offset[nbrs] < aligned_top)]
        old_min = self.min_offset[raised]
        self.min_offset[raised] = aligned_top
        old_floor = self.floor[s0:s1].copy()
        self.floor[s0:s1] = top
        self.unplaced_bytes[s0:s1] -= self.size[r]
        self.placed[r] = True
        self.offsets[r] = offset
        # inference: what is left in each section must fit between its floor and the capacity
        status = INFEASIBLE
        if int((np.maximum(self.floor, offset) + self.unplaced_bytes).max()) <= self.capacity:
            status = self._search(offset, r)
        self.placed[r] = False
        self.offsets[r] = -1
        self.unplaced_bytes[s0:s1] += self.size[r]
        self.floor[s0:s1] = old_floor
        self.min_offset[raised] = old_min
        return status


def search_packing(instance: PackingInstance, capacity: int, order: list[int],
                   node_limit: int, deadline: float) -> SearchOutcome:
    """Decide whether ``instance`` packs within ``capacity`` (one canonical DFS).

    Returns ``found`` with offsets, ``infeasible`` (a proof), or
    ``node-limit`` / ``timeout`` when it gave up first.
    """
    return _CanonicalSearch(instance, order, capacity).run(node_limit, deadline)


@dataclass
class MinimizeOutcome:
    """The lowest packing found for one instance and what is proven about it."""

    offsets: list[int]
    height: int
    proven_lower: int        # no packing of height < proven_lower exists
    improved: bool           # the search beat the incumbent
    nodes: int = 0
    log: list[str] = field(default_factory=list)


def minimize_height(instance: PackingInstance, incumbent: list[int], lower_bound: int,
                    stop_at: int, deadline: float, capacities: str = "ladder") -> MinimizeOutcome:
    """Lower the height of ``incumbent`` by repeated canonical searches.

    Each round doubles the node limit and, for each capacity to try (the
    lower bound first; with ``capacities="ladder"`` also points between it
    and the incumbent's height), runs the search in each preorder until one
    finds a packing (the new incumbent) or proves the capacity infeasible
    (the proven bound rises). Stops once the height is ``<= stop_at``, the
    bounds meet, or ``deadline`` (``time.monotonic()``) passes.
    """
    best, height = incumbent, instance.height(incumbent)
    low = lower_bound
    outcome = MinimizeOutcome(best, height, low, False)
    orders = preorders(instance)
    node_limit = max(len(instance), 32)
    while height > max(low, stop_at) and time.monotonic() < deadline:
        if capacities != "ladder" and low > stop_at:
            break                                   # the capacity asked for is proven infeasible
        node_limit *= 2
        gap = height - low
        if capacities == "ladder":
            targets = sorted({low, low + gap // 8, low + gap // 4, low + gap // 2, height - 1})
        else:
            targets = [max(low, stop_at)]
        for capacity in targets:
            if not (low <= capacity < height):
                continue
            for name, order in orders.items():
                run = search_packing(instance, capacity, order, node_limit, deadline)
                outcome.nodes += run.nodes
                if run.status == FOUND:
                    best, height = run.offsets, instance.height(run.offsets)
                    outcome.improved = True
                    outcome.log.append(f"search[{name}] packed in {height} <= {capacity} ({run.nodes} nodes)")
                    break
                if run.status == INFEASIBLE:
                    low = capacity + 1
                    outcome.log.append(f"search[{name}] proved {capacity} infeasible ({run.nodes} nodes)")
                    break
                if run.status == TIMEOUT:
                    break
            if time.monotonic() >= deadline or height <= max(low, stop_at):
                break
    outcome.offsets, outcome.height, outcome.proven_lower = best, height, low
    return outcome
