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
MiniMalloc's round robin does), warm-started from the best heuristic packing,
and takes turns with the TelaMalloc-style repair search of
:mod:`memplan.solvers.alloc_repair` where that one packs lower.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from memplan.solvers.alloc_greedy import section_totals
from memplan.solvers.alloc_instance import PackingInstance, align_up, section_spans
from memplan.solvers.alloc_repair import RepairSearch

FOUND, INFEASIBLE, NODE_LIMIT, TIMEOUT = "found", "infeasible", "node-limit", "timeout"


class _Timeout(Exception):
    """The deadline passed inside one search step; :meth:`_CanonicalSearch.run` turns it into TIMEOUT."""


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


SETUP_SECONDS_PER_BUFFER = 3e-5    # what one search's indexes cost to build (measured, rounded up)
SETUP_SECONDS_PER_ENTRY = 2e-7     # ... per conflict-list entry and per (buffer, section) pair


def setup_seconds(instance: PackingInstance) -> float:
    """Estimated time to build one :class:`_CanonicalSearch` of ``instance`` (computed in O(n log n))."""
    entries = 2 * instance.edges + section_spans(instance.lowers, instance.uppers)
    return SETUP_SECONDS_PER_BUFFER * len(instance) + SETUP_SECONDS_PER_ENTRY * entries


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

    def __init__(self, instance: PackingInstance, order: list[int]):
        self.order = order
        self.alignment = instance.alignment
        n = len(order)
        rank = np.empty(n, dtype=np.int64)
        rank[np.asarray(order, dtype=np.int64)] = np.arange(n, dtype=np.int64)
        self.size = np.array([instance.sizes[b] for b in order], dtype=np.int64)
        times = sorted(set(instance.lowers) | set(instance.uppers))
        section_of = {t: k for k, t in enumerate(times)}
        self.sections = [(section_of[instance.lowers[b]], section_of[instance.uppers[b]]) for b in order]
        indptr, indices = instance.neighbour_csr
        ranked = rank[indices]
        self.neighbours = [np.sort(ranked[indptr[b]:indptr[b + 1]]) for b in order]
        self.section_bytes = np.zeros(max(len(times) - 1, 1), dtype=np.int64)
        for r, (s0, s1) in enumerate(self.sections):
            self.section_bytes[s0:s1] += self.size[r]
        # (section, rank) membership pairs sorted by section, for the floor inference
        lengths = np.array([s1 - s0 for s0, s1 in self.sections], dtype=np.int64)
        starts = np.repeat(np.array([s0 for s0, _ in self.sections], dtype=np.int64), lengths)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        member_section = starts + within
        by_section = np.argsort(member_section, kind="stable")
        self.member_rank = np.repeat(np.arange(n, dtype=np.int64), lengths)[by_section]
        self.member_start = np.searchsorted(member_section[by_section], np.arange(len(self.section_bytes) + 1))

    def run(self, capacity: int, node_limit: int, deadline: float) -> SearchOutcome:
        """One search from scratch: a packing within ``capacity``, a proof there is none, or a give-up."""
        n = len(self.order)
        self.capacity = capacity
        self.node_limit = node_limit
        self.deadline = deadline
        self.min_offset = np.zeros(n, dtype=np.int64)
        self.placed = np.zeros(n, dtype=bool)
        self.offsets = np.full(n, -1, dtype=np.int64)
        self.floor = np.zeros_like(self.section_bytes)
        self.unplaced_bytes = self.section_bytes.copy()
        self.nodes = 0
        self.solution: list[int] | None = None
        if len(self.order) == 0:
            return SearchOutcome(FOUND, [], 0)
        if int(self.unplaced_bytes.max()) > self.capacity:   # the interval bound already says no
            return SearchOutcome(INFEASIBLE, None, 0)
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old_limit, 2 * len(self.order) + 1000))   # two frames per level
        try:
            status = self._search(0, 0)
        except _Timeout:
            status = TIMEOUT
        finally:
            sys.setrecursionlimit(old_limit)
        if status != FOUND:
            return SearchOutcome(status, None, self.nodes)
        offsets = [0] * len(self.order)
        for r, buf in enumerate(self.order):
            offsets[buf] = int(self.solution[r])
        return SearchOutcome(FOUND, offsets, self.nodes)

    def _candidates(self, last_offset: int, last_rank: int) -> list[int] | None:
        """Unplaced ranks worth branching on, by (minimum offset, rank); None when all are placed.

        Keeps the canonical ones that pass dominance and the section inference.
        """
        unplaced = np.flatnonzero(~self.placed)
        if len(unplaced) == 0:
            return None
        offset = self.min_offset[unplaced]
        lowest_top = int((offset + self.size[unplaced]).min())
        keep = (offset < lowest_top) & ((offset > last_offset) | ((offset == last_offset) & (unplaced >= last_rank)))
        kept, kept_offset = unplaced[keep], offset[keep]
        sort = np.lexsort((kept, kept_offset))
        return self._feasible(kept[sort].tolist(), kept_offset[sort].tolist())

    def _feasible(self, ranks: list[int], offsets: list[int]) -> list[int]:
        """The candidates whose placement passes the section inference.

        Placing rank r at offset o leaves, in each section s, ``unplaced[s]``
        bytes to fit above ``max(floor[s], o)`` (later offsets never go
        lower); inside r's sections the floor becomes r's top, so the test is
        ``o + unplaced[s] <= C`` there, and outside it only bites where the
        floor is below o. Checked here without placing anything.
        """
        slack = self.capacity - self.unplaced_bytes   # highest offset each section tolerates
        passing, outside_bad = [], {}
        for k, (r, o) in enumerate(zip(ranks, offsets)):
            if k % 32 == 31 and time.monotonic() > self.deadline:
                raise _Timeout
            if o not in outside_bad:
                bad = np.flatnonzero((slack < o) & (self.floor < o))
                outside_bad[o] = (int(bad[0]), int(bad[-1])) if len(bad) else None
            s0, s1 = self.sections[r]
            bad_range = outside_bad[o]
            if bad_range is not None and (bad_range[0] < s0 or bad_range[1] >= s1):
                continue
            if int(slack[s0:s1].min()) < o:
                continue
            passing.append(r)
        return passing

    def _floors_hold(self, offset: int, s0: int, s1: int, raised_to: int) -> bool:
        """MiniMalloc's floor inference on sections ``[s0, s1)``.

        No unplaced buffer of a section goes below its minimum offset, so the
        bytes left in the section must fit above the lowest of those. To
        stay cheap it looks only at sections whose slack is below
        ``raised_to`` (the minimum offset just raised): weaker pruning
        elsewhere, never a wrong one.
        """
        slack = self.capacity - self.unplaced_bytes[s0:s1]
        tight = np.flatnonzero(slack < raised_to)
        if len(tight) == 0:
            return True
        s1 = s0 + int(tight[-1]) + 1
        s0 = s0 + int(tight[0])
        lo, hi = self.member_start[s0], self.member_start[s1]
        ranks = self.member_rank[lo:hi]
        starts = self.member_start[s0:s1] - lo
        lowest = np.minimum.reduceat(np.where(self.placed[ranks], self.capacity, self.min_offset[ranks]), starts)
        left = self.unplaced_bytes[s0:s1]
        need = np.maximum(np.maximum(lowest, offset), self.floor[s0:s1]) + left
        return not bool(((need > self.capacity) & (left > 0)).any())

    def _search(self, last_offset: int, last_rank: int) -> str:
        self.nodes += 1
        if self.nodes > self.node_limit:
            return NODE_LIMIT
        if time.monotonic() > self.deadline:
            return TIMEOUT
        candidates = self._candidates(last_offset, last_rank)
        if candidates is None:
            self.solution = self.offsets.tolist()
            return FOUND
        for r in candidates:
            status = self._place_and_recurse(r)
            if status != INFEASIBLE:
                return status
        return INFEASIBLE

    def _place_and_recurse(self, r: int) -> str:
        """Place rank ``r`` at its minimum offset, search on, then undo."""
        offset = int(self.min_offset[r])
        top = offset + int(self.size[r])
        s0, s1 = self.sections[r]
        nbrs = self.neighbours[r]                 # conflicting buffers now start at r's top or above
        aligned_top = align_up(top, self.alignment)
        raised = nbrs[~self.placed[nbrs] & (self.min_offset[nbrs] < aligned_top)]
        old_min = self.min_offset[raised]
        self.min_offset[raised] = aligned_top
        old_floor = self.floor[s0:s1].copy()
        self.floor[s0:s1] = top
        self.unplaced_bytes[s0:s1] -= self.size[r]
        self.placed[r] = True
        self.offsets[r] = offset
        hull0 = min([s0] + [self.sections[j][0] for j in raised.tolist()])
        hull1 = max([s1] + [self.sections[j][1] for j in raised.tolist()])
        if self._floors_hold(offset, hull0, hull1, aligned_top):
            status = self._search(offset, r)
        else:
            status = INFEASIBLE
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
    return _CanonicalSearch(instance, order).run(capacity, node_limit, deadline)


@dataclass
class MinimizeOutcome:
    """The lowest packing found for one instance and what is proven about it."""

    offsets: list[int]
    height: int
    proven_lower: int        # no packing of height < proven_lower exists
    improved: bool           # the search beat the incumbent
    nodes: int = 0
    log: list[str] = field(default_factory=list)


SEARCH_FIRST = 0.15          # share of the time the canonical search gets before the repair is tried
REPAIR_PROBE = 0.06          # share of the time the repair's first turn gets


def minimize_height(instance: PackingInstance, incumbent: list[int], lower_bound: int,
                    stop_at: int, deadline: float, fixed_capacity: bool = False, seed: int = 0) -> MinimizeOutcome:
    """Lower the height of ``incumbent`` until ``deadline``: canonical searches, then repair if it helps.

    The canonical search (:class:`_Descent`) runs first, for 15% of the
    time: it solves the tight instances outright and proves bounds.
    Then the TelaMalloc-style repair (:class:`~memplan.solvers.alloc_repair.RepairSearch`)
    gets a short turn (the probe) to go below the search's best. If it
    fails, the search has the rest of the time; if it succeeds, the two take
    turns to the end, the repair's turn doubling after each success and the
    search polishing the repair's packing in between.

    With ``fixed_capacity``, both look for a packing within ``stop_at``
    (the feasibility question). Stops once the height is ``<= stop_at``,
    the bounds meet, or ``deadline`` (a ``time.monotonic()`` value) passes.
    """
    outcome = MinimizeOutcome(list(incumbent), instance.height(incumbent), lower_bound, False)
    start = time.monotonic()
    if not instance.build_conflicts(deadline):
        outcome.log.append(f"no time to list the conflicts of {len(instance)} buffers: search skipped")
        return outcome
    descent = _Descent(instance, outcome, stop_at, fixed_capacity, seed, deadline)
    descent.run(start + SEARCH_FIRST * (deadline - start))
    take_turns_with_repair(instance, descent, outcome, stop_at, start, deadline, seed, fixed_capacity)
    descent.run(deadline)
    outcome.improved = outcome.height < instance.height(incumbent)
    return outcome


def next_step(status: str, step: int, node_limit: int) -> tuple[int, int]:
    """The descent's next (step below the best height, node limit) after a decision: a fit doubles the
    step; a node limit halves it, and at a step of 1 doubles the node limit."""
    if status == FOUND:
        return step * 2, node_limit
    if status == NODE_LIMIT:
        step = max(step // 2, 1)
        return step, node_limit * 2 if step == 1 else node_limit
    return step, node_limit


def take_turns_with_repair(instance: PackingInstance, descent, outcome, stop_at, start: float, deadline: float,
                           seed: int, fixed_capacity: bool) -> None:
    """The repair search probes for a turn; while it packs lower than the canonical search it gets
    doubling turns, the search (``descent``, resumable) a slice in between; a failed probe ends it."""
    repair = RepairSearch(instance, seed)
    turn, repair_won = REPAIR_PROBE * (deadline - start), False
    while not descent.finished() and time.monotonic() < deadline:
        offsets, log = repair.lower(outcome.offsets, outcome.proven_lower, stop_at,
                                    min(deadline, time.monotonic() + turn), fixed_capacity)
        outcome.log.extend(log)
        if instance.height(offsets) < outcome.height:
            outcome.offsets, outcome.height = offsets, instance.height(offsets)
            repair_won, turn = True, 2 * turn
        elif not repair_won:
            break                                # the probe failed: the repair cannot beat the search here
        descent.run(min(deadline, time.monotonic() + turn / 8))


class _Descent:
    """The canonical search's side of :func:`minimize_height`, resumable: it shares ``outcome``.

    Two kinds of runs alternate, each trying the preorders in turn until one
    finds a packing (the new incumbent) or proves its capacity infeasible
    (the proven bound rises):

    - an *exact* attempt at the lowest capacity not yet ruled out (the lower
      bound at first), with a node limit that doubles every round: this is
      what solves tight instances, whose optimum is the bound;
    - a few *descent* steps at ``height - step`` with a small node limit;
      the step doubles after a success and halves after a give-up.

    The first run starts with one dive per preorder without a node limit
    worth the name ("skyline": lowest offset first), itself a good
    heuristic. With ``fixed_capacity``, only exact attempts at ``stop_at`` run.
    """

    def __init__(self, instance: PackingInstance, outcome: MinimizeOutcome, stop_at: int,
                 fixed_capacity: bool, seed: int, deadline: float = float("inf")):
        self.instance = instance
        self.outcome = outcome
        self.stop_at = stop_at
        self.fixed_capacity = fixed_capacity
        self.setup = setup_seconds(instance)
        self.searches = {}
        for name, order in preorders(instance).items():   # each costs O(n + conflicts): stop at the deadline
            if time.monotonic() + self.setup > deadline:
                break
            self.searches[name] = _CanonicalSearch(instance, order)
        self.rng = random.Random(seed)
        self.total = section_totals(instance)
        n = len(instance)
        self.exact_limit = self.descent_limit = 2 * n + 64
        self.step = max((outcome.height - outcome.proven_lower) // 32, 1)
        self.dives = list(self.searches.items())

    def finished(self) -> bool:
        """Whether the bounds meet (or, with a fixed capacity, it is met or proven out of reach);
        also when the deadline left no time to set up a single search."""
        outcome = self.outcome
        return (not self.searches or outcome.height <= max(outcome.proven_lower, self.stop_at)
                or (self.fixed_capacity and outcome.proven_lower > self.stop_at))

    def run(self, deadline: float) -> None:
        """Search until finished or ``deadline``, resuming the rounds where the last run stopped."""
        outcome, n = self.outcome, len(self.instance)
        while self.dives and not self.finished() and time.monotonic() < deadline:
            name, search = self.dives[0]
            run = search.run(outcome.height - 1, n + 1, deadline)
            if run.status == TIMEOUT:
                return
            self.dives.pop(0)
            if run.status == FOUND:
                outcome.offsets, outcome.height = run.offsets, self.instance.height(run.offsets)
                outcome.log.append(f"skyline dive[{name}]: height {outcome.height}")
            elif run.status == INFEASIBLE:        # the dive exhausted its branches: the incumbent is optimal
                outcome.proven_lower = max(outcome.proven_lower, outcome.height)

        def done() -> bool:
            return self.finished() or time.monotonic() >= deadline

        while not done():
            self._attempt(self.stop_at if self.fixed_capacity else outcome.proven_lower, self.exact_limit, deadline)
            self.exact_limit *= 2
            if self.fixed_capacity:
                continue
            # diversify the descent with one randomly perturbed preorder per round (if there is time to build it)
            noisy = sorted(range(n), key=lambda i: (-self.total[i] * self.rng.uniform(0.7, 1.3), i))
            extra = ({"random": _CanonicalSearch(self.instance, noisy)}
                     if time.monotonic() + self.setup < deadline else {})
            for _ in range(6):
                if done():
                    break
                target = max(outcome.proven_lower, outcome.height - self.step)
                status = self._attempt(target, self.descent_limit, deadline, extra)
                self.step, self.descent_limit = next_step(status, self.step, self.descent_limit)

    def _attempt(self, capacity: int, node_limit: int, deadline: float,
                 extra: dict[str, _CanonicalSearch] | None = None) -> str:
        """One search per preorder at ``capacity`` until one finds a packing or proves there is none."""
        outcome = self.outcome
        for name, search in (self.searches | (extra or {})).items():
            run = search.run(capacity, node_limit, deadline)
            outcome.nodes += run.nodes
            if run.status == FOUND:
                outcome.offsets, outcome.height = run.offsets, self.instance.height(run.offsets)
                outcome.log.append(f"search[{name}] packed in {outcome.height} <= {capacity} ({run.nodes} nodes)")
                return FOUND
            if run.status == INFEASIBLE:
                outcome.proven_lower = max(outcome.proven_lower, capacity + 1)
                outcome.log.append(f"search[{name}] proved {capacity} infeasible ({run.nodes} nodes)")
                return INFEASIBLE
            if run.status == TIMEOUT:
                return TIMEOUT
        return NODE_LIMIT
