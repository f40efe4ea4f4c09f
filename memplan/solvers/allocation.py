"""Static memory allocation: a byte offset for every buffer in one arena.

A buffer lives during ``[lower, upper)`` (half-open, MiniMalloc's convention)
and needs ``size`` bytes. Buffers whose lifetimes intersect may not share
bytes. The goal is the lowest arena *height* (the highest byte used), or, in
feasibility mode, any packing within a given capacity. The height can never
be below the *interval lower bound*: the most bytes live at one time.

:func:`solve_allocation` runs, within one time limit:

1. a portfolio of greedy heuristics (orders x best/first fit, and a
   time-ordered best-fit sweep that needs no conflict lists), keeping the
   lowest packing (:mod:`memplan.solvers.alloc_greedy`);
2. if that packing is above the bound, an exact search per independent
   component of the conflict graph, warm-started from it: MiniMalloc's
   branch and bound (``method="search"``, the default), compiled from C++
   (:mod:`memplan.solvers.alloc_native`; it decides a capacity, or lowers the
   height by decisions from the bound up) where the kernel is available, else
   its pure-Python form (:mod:`memplan.solvers.alloc_search`); either hands
   part of the time to a TelaMalloc-style repair search
   (:mod:`memplan.solvers.alloc_repair`) where that packs lower. Or a CP-SAT
   model (:mod:`memplan.solvers.alloc_cpsat`). When minimising (no capacity)
   and omnimalloc is installed, its compiled greedy portfolio and simulated
   annealing first get a tenth of the time and may replace the warm start
   (:mod:`memplan.solvers.alloc_omni`).

Every stage honours the time limit and keeps memory near-linear in the
number of buffers: the bound, the components, the validation and the sweep
are ``O(n log n)``; conflict lists (up to ``n**2 / 2`` pairs when every
buffer is live at once) are built only below
:data:`~memplan.solvers.alloc_instance.MAX_CONFLICT_EDGES`, and the exact
phase skips, with a log line, a component too large for it (see
:func:`exact_cost`).

It knows nothing of graphs, torch or ONNX: plain buffers in, offsets out.

>>> buffers = [Buffer("a", 0, 2, 64), Buffer("b", 1, 3, 32), Buffer("c", 2, 4, 64)]
>>> result = solve_allocation(buffers, time_limit=1.0)
>>> result.height, result.lower_bound, result.status
(96, 96, 'optimal')
>>> validate(buffers, result.offsets)
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from memplan.solvers.alloc_cpsat import cpsat_packing
from memplan.solvers.alloc_greedy import greedy_portfolio
from memplan.solvers.alloc_instance import (MAX_CONFLICT_EDGES, PackingInstance, SortedKeys, components,
                                             section_spans)
from memplan.solvers.alloc_native import native_available, native_fits, native_minimize, native_status
from memplan.solvers.alloc_omni import IMPORT_SECONDS, omnimalloc_module, omnimalloc_packing
from memplan.solvers.alloc_search import minimize_height, setup_seconds

METHODS = ("auto", "greedy", "search", "cpsat")
BELOW_BOUND_SECONDS = 0.1  # a capacity below the interval bound is answered in this time: one quick packing
MAX_VALUE = 2**62                # |lower|, |upper| and size of a buffer are below this
MAX_EXACT_BUFFERS = 10_000       # larger components keep their heuristic packing
MAX_CPSAT_BUFFERS = 2_000
MAX_SECTION_SPANS = 4_000_000    # (buffer, section) pairs the exact search indexes
OMNIMALLOC_SHARE = 0.1          # share of the time limit omnimalloc's heuristics get (when installed)


@dataclass(frozen=True)
class Buffer:
    """A block of ``size`` bytes live during ``[lower, upper)``."""

    id: str
    lower: int
    upper: int
    size: int

    def __post_init__(self):
        for name in ("lower", "upper", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"buffer {self.id!r}: {name} must be an int, got {value!r:.40}")
            if not -MAX_VALUE < value < MAX_VALUE:
                raise ValueError(f"buffer {self.id!r}: {name} is out of range (|{name}| must be below 2**62)")
        if self.upper <= self.lower:
            raise ValueError(f"buffer {self.id!r}: empty lifetime [{self.lower}, {self.upper}) (need upper > lower)")
        if self.size < 0:
            raise ValueError(f"buffer {self.id!r}: negative size {self.size}")

    def conflicts_with(self, other: Buffer) -> bool:
        """Whether the two lifetimes intersect (so the two may not share bytes)."""
        return self.lower < other.upper and other.lower < self.upper


@dataclass
class AllocationResult:
    """What :func:`solve_allocation` found and what it knows about it.

    ``status``:
      - ``optimal``: ``height`` equals a proven lower bound;
      - ``feasible``: a packing (within ``capacity`` if one was given), not proven optimal;
      - ``infeasible``: a capacity was given and no packing fits in it (proven);
      - ``unknown``: a capacity was given, no packing within it was found in
        time, and none was proven impossible.
    ``offsets`` is always a valid packing (of height ``height``); when the
    status is ``infeasible`` or ``unknown`` it is the best one found, above
    the capacity.
    """

    offsets: dict[str, int]
    height: int
    lower_bound: int
    status: str
    wall_s: float
    method: str
    capacity: int | None = None
    log: list[str] = field(default_factory=list)

    @property
    def gap(self) -> float:
        """Relative distance of ``height`` above ``lower_bound`` (0.0 when they meet)."""
        if self.height <= self.lower_bound:
            return 0.0
        return (self.height - self.lower_bound) / self.lower_bound if self.lower_bound else float("inf")

    @property
    def fits(self) -> bool:
        """Whether the packing is within the capacity (always, without one)."""
        return self.capacity is None or self.height <= self.capacity


def interval_lower_bound(buffers: Sequence[Buffer], alignment: int = 1) -> int:
    """The most bytes live at once: no packing of ``buffers`` can be lower.

    Computed exactly by a sweep over lifetime endpoints (ends before starts
    at equal times, since lifetimes are half-open). For interval conflict
    graphs this equals the maximum-weight clique, the classic stronger bound.

    >>> interval_lower_bound([Buffer("a", 0, 2, 10), Buffer("b", 1, 3, 5), Buffer("c", 2, 4, 7)])
    15
    """
    return _instance(buffers, alignment).lower_bound()


def validate(buffers: Sequence[Buffer], offsets: Mapping[str, int] | Sequence[int],
             capacity: int | None = None, alignment: int = 1) -> None:
    """Raise ``ValueError`` unless ``offsets`` is a valid packing of ``buffers``.

    ``offsets`` maps buffer ids to byte offsets (or lists them in buffer
    order). Checks: every buffer has a non-negative offset that is a multiple
    of ``alignment``, ends within ``capacity``, and no two buffers whose
    lifetimes intersect share a byte. The message names the buffers at fault.
    """
    if not isinstance(offsets, Mapping):
        if len(offsets) != len(buffers):
            raise ValueError(f"{len(offsets)} offsets for {len(buffers)} buffers")
        offsets = {b.id: o for b, o in zip(buffers, offsets)}
    for b in buffers:
        if b.id not in offsets:
            raise ValueError(f"buffer {b.id!r} has no offset")
        o = offsets[b.id]
        if isinstance(o, bool) or not isinstance(o, int) or o < 0:
            raise ValueError(f"buffer {b.id!r}: offset {o!r} is not a non-negative int")
        if alignment > 1 and o % alignment:
            raise ValueError(f"buffer {b.id!r}: offset {o} is not a multiple of the alignment {alignment}")
        if capacity is not None and o + b.size > capacity:
            raise ValueError(f"buffer {b.id!r} [{o}, {o + b.size}) ends above the capacity {capacity}")
    # sweep over time: the buffers live at once are disjoint, so their offsets are distinct; kept
    # sorted, a new buffer only has to clear its two neighbours there (O(n log n), no pairwise scan)
    placed = [(b.lower, b.upper, b.size, offsets[b.id]) for b in buffers]
    events = [(lo, 1, k) for k, (lo, _, size, _) in enumerate(placed) if size > 0]
    events += [(hi, 0, k) for k, (_, hi, size, _) in enumerate(placed) if size > 0]
    events.sort()
    live = SortedKeys()                       # offsets of the buffers live now
    live_at: dict[int, int] = {}              # offset -> index of the live buffer there
    for _, is_start, k in events:
        o = placed[k][3]
        if not is_start:
            live.remove(o)
            del live_at[o]
            continue
        if o in live_at:
            clash = live_at[o]
        else:
            clash, below, above = None, live.last_below(o), live.first_at_least(o)
            if below is not None and below + placed[live_at[below]][2] > o:
                clash = live_at[below]
            elif above is not None and above < o + placed[k][2]:
                clash = live_at[above]
        if clash is not None:
            first, second = buffers[clash], buffers[k]      # the one live first, then the newcomer
            raise ValueError(
                f"buffers {first.id!r} (bytes [{offsets[first.id]}, {offsets[first.id] + first.size}), "
                f"live [{first.lower}, {first.upper})) and {second.id!r} (bytes [{offsets[second.id]}, "
                f"{offsets[second.id] + second.size}), live [{second.lower}, {second.upper})) overlap")
        live.add(o)
        live_at[o] = k


def solve_allocation(buffers: Sequence[Buffer], capacity: int | None = None, time_limit: float = 10.0,
                     alignment: int = 1, method: str = "auto", seed: int = 0) -> AllocationResult:
    """Pack ``buffers`` into an arena as low as possible (or within ``capacity``).

    ``method``: ``greedy`` (heuristic portfolio only), ``search`` (portfolio,
    then MiniMalloc-style branch and bound), ``cpsat`` (portfolio, then a
    CP-SAT model), ``auto`` (= ``search``). The exact phase runs only where
    the heuristic is above the lower bound (or the capacity), one independent
    component at a time, tallest first, and stops at ``time_limit`` seconds.
    With ``capacity``, the goal is any packing of height ``<= capacity``.
    ``seed`` drives the random choices of ``search`` and its repair turns
    (same seed, same choices; only the time limit can cut a run short at a
    different point).
    """
    start = time.monotonic()
    deadline = start + time_limit
    if method not in METHODS:
        raise ValueError(f"unknown allocation method {method!r}; choose from {', '.join(METHODS)}")
    if alignment < 1:
        raise ValueError(f"alignment must be >= 1, got {alignment}")
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    ids = [b.id for b in buffers]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"buffer id {duplicate!r} appears more than once")
    if not (isinstance(time_limit, (int, float)) and math.isfinite(time_limit) and time_limit > 0):
        raise ValueError(f"time_limit must be a finite positive number of seconds, got {time_limit!r}")
    instance = _instance(buffers, alignment)
    bound = instance.lower_bound()
    log: list[str] = []

    exact = method != "greedy"
    if capacity is not None and capacity < bound:
        # proven at once: no packing is below the most bytes live at one time; one quick packing to return
        exact, deadline = False, min(deadline, start + min(time_limit, BELOW_BOUND_SECONDS))
    greedy = greedy_portfolio(instance, time_budget=time_limit * (0.2 if exact else 1.0), target=bound,
                              deadline=deadline)
    offsets, winner = list(greedy.offsets), f"greedy:{greedy.variant}"
    log.append(f"greedy {greedy.variant}: height {greedy.height} "
               f"(best of {len(greedy.tried)} variants, lower bound {bound})")

    if exact and capacity is None and instance.height(offsets) > bound:
        # omnimalloc's compiled heuristics, where installed, with a tenth of the time (alloc_omni)
        # its first import (about a second, once per process) is not part of its share, but happens only
        # when the time left can pay for both
        if deadline - time.monotonic() > IMPORT_SECONDS + OMNIMALLOC_SHARE * time_limit:
            omnimalloc_module()
        member = omnimalloc_packing(instance, min(deadline, time.monotonic() + OMNIMALLOC_SHARE * time_limit),
                                    seed, log)
        if member is not None and instance.height(member[0]) < instance.height(offsets):
            offsets, winner = list(member[0]), member[1]

    proven, improved = bound, False
    if capacity is not None and capacity < bound:
        log.append(f"capacity {capacity} is below the interval lower bound {bound}")
    elif exact and instance.height(offsets) > (bound if capacity is None else capacity):
        proven, improved = _exact_phase(instance, offsets, bound, capacity, deadline, method, seed, log)
    if exact and capacity is not None and proven > capacity and instance.height(offsets) > proven:
        # the capacity is out of reach: spend the time left finding how low the arena can go
        log.append(f"capacity {capacity} is proven infeasible; minimising the height instead")
        lowered_bound, lowered = _exact_phase(instance, offsets, proven, None, deadline, method, seed, log)
        proven, improved = max(proven, lowered_bound), improved or lowered
    if improved:
        winner = method if method != "auto" else "search"

    height = instance.height(offsets)
    if capacity is not None and height > capacity:
        status = "infeasible" if proven > capacity else "unknown"
    else:
        status = "optimal" if height <= proven else "feasible"
    return AllocationResult(offsets={b.id: o for b, o in zip(buffers, offsets)}, height=height,
                            lower_bound=min(proven, height), status=status,
                            wall_s=time.monotonic() - start, method=winner, capacity=capacity, log=log)


def exact_cost(instance: PackingInstance, method: str) -> str | None:
    """Why the exact phase cannot take on ``instance`` (one component), or None if it can.

    The search indexes every conflicting pair and every (buffer, section)
    pair, and its numbers are int64; CP-SAT builds a model per buffer. Each
    is checked in O(n log n) before anything is built.
    """
    n = len(instance)
    limit = MAX_CPSAT_BUFFERS if method == "cpsat" else MAX_EXACT_BUFFERS
    if n > limit:
        return f"{n} buffers, above the limit of {limit} for {'CP-SAT' if method == 'cpsat' else 'the search'}"
    if sum(instance.sizes) >= MAX_VALUE:
        return "total size above 2**62 bytes"
    if instance.edges > MAX_CONFLICT_EDGES:
        return f"{instance.edges} conflicting pairs, above the limit of {MAX_CONFLICT_EDGES}"
    spans = section_spans(instance.lowers, instance.uppers)
    if spans > MAX_SECTION_SPANS:
        return f"{spans} (buffer, time section) pairs, above the limit of {MAX_SECTION_SPANS}"
    return None


def _instance(buffers: Sequence[Buffer], alignment: int) -> PackingInstance:
    return PackingInstance([b.lower for b in buffers], [b.upper for b in buffers],
                           [b.size for b in buffers], alignment)


def _exact_phase(instance: PackingInstance, offsets: list[int], bound: int, capacity: int | None,
                 deadline: float, method: str, seed: int, log: list[str]) -> tuple[int, bool]:
    """Improve ``offsets`` in place, one component at a time; return (proven bound, improved).

    Without a capacity, the arena is as tall as its tallest component: work
    on that one, with all the time left, until it is proven optimal or gets
    below the next tallest, then move on. With a capacity, every component
    above it gets an equal share of the time left, round after round.
    """
    groups = components(instance.lowers, instance.uppers, instance.sizes)
    heights = [max(offsets[i] + instance.sizes[i] for i in g) for g in groups]
    floors = [0] * len(groups)              # proven lower bound of each component
    skipped: set[int] = set()               # components too large for the exact phase
    proven, improved = bound, False
    native = method != "cpsat" and native_available()
    if method != "cpsat":
        log.append(f"exact search: {native_status() if native else 'pure Python (' + native_status() + ')'}")
    while time.monotonic() < deadline:
        goal = max(bound, proven) if capacity is None else capacity
        open_ = [k for k in range(len(groups)) if heights[k] > max(goal, floors[k]) and k not in skipped]
        if not open_ or (capacity is not None and proven > capacity):
            break
        if capacity is None:
            k = max(open_, key=lambda j: heights[j])
            if heights[k] < max(heights):   # the tallest component is proven optimal: nothing helps
                break
            stop_at = max([goal] + [h for h in heights if h < heights[k]])
            share = deadline - time.monotonic()
        else:
            k = max(open_, key=lambda j: heights[j])
            stop_at = capacity
            share = (deadline - time.monotonic()) / len(open_)
        share_ends = min(deadline, time.monotonic() + share)
        group = groups[k]
        if len(group) == len(instance):
            group = sorted(group)             # the whole instance: its analyses carry over
        sub = instance.subset(group)
        why_not = exact_cost(sub, method)
        use_native = native and why_not is None and native_fits(sub) is None
        if why_not is None and method != "cpsat" and not use_native \
                and time.monotonic() + 2 * setup_seconds(sub) > share_ends:
            why_not = f"about {setup_seconds(sub):.1f} s to set up the search, more than the time left"
        if why_not is not None:
            log.append(f"exact phase skips a component of {len(group)} buffers: {why_not}; "
                       "it keeps its heuristic packing")
            skipped.add(k)
            continue
        sub_offsets = [offsets[i] for i in group]
        floors[k] = max(floors[k], sub.lower_bound())
        if method == "cpsat":
            limit = heights[k] if capacity is None else min(capacity, heights[k] - 1)
            run = cpsat_packing(sub, sub_offsets, floors[k], limit, share_ends - time.monotonic())
            log.append(f"cp-sat on component of {len(group)} buffers: {run.status}, "
                       f"height {run.height}, bound {run.bound}" + (f" ({run.note})" if run.note else ""))
            found = run.offsets is not None and run.height < heights[k]
            new_offsets, new_height = (run.offsets, run.height) if found else (sub_offsets, heights[k])
            floors[k] = max(floors[k], run.bound if run.status != "optimal" else new_height)
        else:
            minimize = native_minimize if use_native else minimize_height
            run = minimize(sub, sub_offsets, floors[k], stop_at=stop_at, deadline=share_ends,
                           fixed_capacity=capacity is not None, seed=seed)
            log.append(f"{'native ' if use_native else ''}search on component of {len(group)} buffers: height {heights[k]} -> {run.height} "
                       f"(bound {run.proven_lower}, {run.nodes} nodes)")
            log.extend(f"  {line}" for line in run.log[-5:])
            new_offsets, new_height = run.offsets, run.height
            floors[k] = max(floors[k], run.proven_lower)
        if new_height < heights[k]:
            improved = True
            heights[k] = new_height
            for i, o in zip(group, new_offsets):
                offsets[i] = o
        proven = max(proven, floors[k])
        if method == "cpsat" and not found and floors[k] < heights[k]:
            break                            # CP-SAT had its time and could not improve: do not loop
    return proven, improved
