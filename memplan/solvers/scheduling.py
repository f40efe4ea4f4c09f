"""Operator scheduling: an order of a DAG's nodes that minimises the peak of live bytes.

The public entry is :func:`solve_schedule`. It runs a portfolio of heuristics
(topological baseline, memory-aware list scheduling, BFS, DFS variants), splits
the DAG at its cut vertices into segments that every order runs one after
another, solves each distinct segment once (CP-SAT when small, window search
when large) and reuses the answer for repeated segments such as transformer
blocks. The order returned is always valid and never worse than the best
heuristic; the result carries an order-independent lower bound, the gap to it
and per-segment statistics.

>>> from memplan.solvers.scheduling import Buf, ScheduleProblem, solve_schedule
>>> # two branches a0 -> a1 and b0 -> b1, each with a big intermediate, joined by node 4;
>>> # the given order 0..4 starts both branches at once
>>> p = ScheduleProblem(5, [[], [], [0], [1], [2, 3]],
...                     [Buf(10, 0, (2,)), Buf(10, 1, (3,)), Buf(1, 2, (4,)), Buf(1, 3, (4,)), Buf(1, 4, keep=True)])
>>> peak_of(p, [0, 1, 2, 3, 4])
21
>>> r = solve_schedule(p, time_limit=5)
>>> r.order, r.peak, r.lower_bound, r.status
([0, 2, 1, 3, 4], 12, 12, 'OPTIMAL')
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from memplan.solvers.sched_cpsat import ExactResult, solve_exact
from memplan.solvers.sched_decompose import (Decomposition, canonical_key, extract_subproblem, find_segments,
                                             improve_by_windows, segment_bases)
from memplan.solvers.sched_heuristics import HEURISTICS, best_heuristic, topological_baseline
from memplan.solvers.sched_problem import (INPUT, Buf, ScheduleProblem, check_order, is_topological, live_profile,
                                           lower_bound, must_live_bytes, peak_of)

__all__ = [
    "Buf", "ScheduleProblem", "ScheduleResult", "SegmentStats", "INPUT", "EXACT_MAX_NODES",
    "solve_schedule", "peak_of", "live_profile", "lower_bound", "must_live_bytes", "check_order",
    "is_topological", "best_heuristic", "solve_exact", "ExactResult", "HEURISTICS",
]

EXACT_MAX_NODES = 100   # segments up to this size are solved by CP-SAT as a whole, larger ones by windows


@dataclass
class SegmentStats:
    """One segment of the decomposition: its size, the bytes passing over it, its peak and bound
    (both including those bytes), how it was solved. ``shape``: id of its distinct form; segments
    with the same shape share one solve (``reused`` for all but the first)."""

    index: int
    nodes: int
    shape: int
    reused: bool
    base_bytes: int
    peak: int
    bound: int
    method: str
    status: str
    wall_s: float


@dataclass
class ScheduleResult:
    """The order chosen by :func:`solve_schedule` and how good it is.

    ``lower_bound``: proven lower bound on the peak of any order; ``gap``: ``(peak -
    lower_bound) / peak``; ``status``: ``"OPTIMAL"`` when the peak meets the bound, else
    ``"FEASIBLE"``; ``method``: what produced the order (``"heuristic:<name>"``,
    ``"cp-sat"``, ``"decomposed"``); ``heuristic_peaks``: the peak of every heuristic.
    """

    order: list[int]
    peak: int
    lower_bound: int
    status: str
    gap: float
    wall_s: float
    method: str
    baseline_peak: int
    heuristic_peak: int
    heuristic_peaks: dict[str, int] = field(default_factory=dict)
    segments: list[SegmentStats] = field(default_factory=list)
    exact_decomposition: bool = True
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for people: peak vs baseline, best heuristic and bound, segments."""
        lines = [f"schedule: peak {self.peak} bytes (baseline {self.baseline_peak}, best heuristic "
                 f"{self.heuristic_peak}), lower bound {self.lower_bound}, gap {100 * self.gap:.1f}%, "
                 f"{self.status}, {self.method}, {self.wall_s:.2f} s"]
        if self.segments:
            distinct = len({s.shape for s in self.segments})
            solved = sum(1 for s in self.segments if not s.reused and s.method != "heuristic")
            lines.append(f"  {len(self.segments)} segments ({distinct} distinct, {solved} re-solved), "
                         f"largest {max(s.nodes for s in self.segments)} nodes")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class _Shape:
    """A distinct segment form: its sub-problem (base 0), best local order so far and bound."""

    shape_id: int
    sub: ScheduleProblem
    order: list[int]
    peak: int
    bound: int
    method: str = "heuristic"
    status: str = "FEASIBLE"
    wall_s: float = 0.0
    attempts: int = 0
    instances: list[int] = field(default_factory=list)
    max_base: int = 0

    @property
    def proven(self) -> bool:
        return self.peak <= self.bound

    @property
    def value(self) -> int:
        """The peak this shape contributes to the whole (at its instance with the most bytes over it)."""
        return self.peak + self.max_base


def solve_schedule(problem: ScheduleProblem, time_limit: float = 10.0, method: str = "auto",
                   workers: int = 2, attach_sinks: bool | None = None) -> ScheduleResult:
    """An order of ``problem``'s nodes with a low peak, within about ``time_limit`` seconds.

    ``method``: ``"auto"`` (heuristics, then decomposition into segments solved exactly
    or by window search), ``"exact"`` (CP-SAT on the whole problem, for small ones),
    ``"heuristic"`` (best of the portfolio) or one heuristic's name (see
    :data:`HEURISTICS`). ``attach_sinks``: let the decomposition move sinks into the
    segment of their last predecessor (default: only when that makes segments smaller).
    """
    start = time.perf_counter()
    # leave time to stitch, check and measure the answer
    deadline = start + max(0.05, time_limit - 0.1 - 2e-5 * (problem.n + len(problem.buffers)))
    baseline_peak = peak_of(problem, topological_baseline(problem))
    bound = lower_bound(problem)

    def finish(order, how, lower, heur=None, segments=(), exact_dec=True, notes=()) -> ScheduleResult:
        check_order(problem, order)
        peak = peak_of(problem, order)
        lower = min(lower, peak)
        return ScheduleResult(
            order=list(order), peak=peak, lower_bound=lower,
            status="OPTIMAL" if peak <= lower else "FEASIBLE",
            gap=(peak - lower) / peak if peak else 0.0, wall_s=time.perf_counter() - start,
            method=how, baseline_peak=baseline_peak,
            heuristic_peak=heur.peak if heur else peak, heuristic_peaks=dict(heur.peaks) if heur else {},
            segments=list(segments), exact_decomposition=exact_dec, notes=list(notes))

    if method in HEURISTICS:
        return finish(HEURISTICS[method](problem), f"heuristic:{method}", bound)
    heur = best_heuristic(problem)
    if method == "heuristic" or problem.n <= 1:
        return finish(heur.order, f"heuristic:{heur.name}", bound, heur)
    if method == "exact":
        res = solve_exact(problem, heur.order, deadline - time.perf_counter(), workers, bound)
        how = "cp-sat" if res.peak < heur.peak else f"heuristic:{heur.name}"
        return finish(res.order, how, max(bound, res.bound), heur, notes=[f"cp-sat status {res.status}"])
    if method != "auto":
        raise ValueError(f"solve_schedule: unknown method {method!r}; use 'auto', 'exact', 'heuristic' "
                         f"or one of {sorted(HEURISTICS)}")

    dec = _choose_decomposition(problem, attach_sinks)
    order, lower, segments, notes = _solve_segments(problem, dec, heur.order, bound, deadline, workers)
    if peak_of(problem, order) < heur.peak:
        return finish(order, "decomposed", lower, heur, segments, dec.exact, notes)
    return finish(heur.order, f"heuristic:{heur.name}", lower, heur, segments, dec.exact, notes)


def _choose_decomposition(problem: ScheduleProblem, attach_sinks: bool | None) -> Decomposition:
    """The exact decomposition, unless attaching is asked for or shrinks a too-large segment."""
    exact = find_segments(problem)
    if attach_sinks is False:
        return exact
    largest = max((len(s) for s in exact.segments), default=0)
    if attach_sinks is None and largest <= EXACT_MAX_NODES:
        return exact
    loose = find_segments(problem, attach=True)
    if attach_sinks or max((len(s) for s in loose.segments), default=0) < largest:
        return loose
    return exact


def _solve_segments(problem: ScheduleProblem, dec: Decomposition, heur_order: list[int], bound: int,
                    deadline: float, workers: int):
    """Solve each distinct segment (best first where it matters) and stitch the orders together."""
    seg_of = [0] * problem.n
    for k, nodes in enumerate(dec.segments):
        for v in nodes:
            seg_of[v] = k
    bases = segment_bases(problem, seg_of, len(dec.segments))
    heur_step = [0] * problem.n
    for i, v in enumerate(heur_order):
        heur_step[v] = i

    shapes: dict[tuple, _Shape] = {}
    shape_of: list[_Shape] = []
    for k, nodes in enumerate(dec.segments):
        sub = extract_subproblem(problem, nodes, seg_of, k, k, base=0)
        key = canonical_key(sub)
        shape = shapes.get(key)
        if shape is None:
            local_heur = sorted(range(len(nodes)), key=lambda i: heur_step[nodes[i]])
            h = best_heuristic(sub, extra={"whole-graph": local_heur})
            shape = _Shape(len(shapes), sub, h.order, h.peak, lower_bound(sub))
            shapes[key] = shape
        shape.instances.append(k)
        shape.max_base = max(shape.max_base, bases[k])
        shape_of.append(shape)

    def whole_bound() -> int:
        if not dec.exact:
            return bound
        return max([bound] + [s.bound + s.max_base for s in shapes.values()])

    notes = []
    if not dec.exact:
        notes.append(f"decomposition attached {dec.attached} floating nodes heuristically: segment bounds unused")
    while True:
        remaining = deadline - time.perf_counter()
        top = max(shapes.values(), key=lambda s: s.value, default=None)
        if top is None or remaining < 0.05 or top.value <= whole_bound() or top.proven or top.attempts >= 2:
            break
        contenders = sum(1 for s in shapes.values() if s.value > whole_bound())
        budget = remaining if contenders == 1 else min(remaining, max(1.0, 0.5 * remaining))
        top.attempts += 1
        if top.sub.n <= EXACT_MAX_NODES:
            res = solve_exact(top.sub, top.order, budget, workers, top.bound)
            top.order, top.peak, top.bound = res.order, res.peak, max(top.bound, res.bound)
            top.method, top.status = "cp-sat", res.status
            top.wall_s += res.wall_s
        else:
            order, stats = improve_by_windows(top.sub, top.order, budget, lower=top.bound, workers=workers)
            top.order, top.peak = order, peak_of(top.sub, order)
            top.method, top.status = "windows", f"{stats.improved}/{stats.windows} windows improved"
            top.wall_s += stats.wall_s

    order: list[int] = []
    segments: list[SegmentStats] = []
    for k, nodes in enumerate(dec.segments):
        shape = shape_of[k]
        order.extend(nodes[i] for i in shape.order)
        first = shape.instances[0] == k
        segments.append(SegmentStats(k, len(nodes), shape.shape_id, not first, bases[k], shape.peak + bases[k],
                                     shape.bound + bases[k], shape.method,
                                     "OPTIMAL" if shape.proven else shape.status, shape.wall_s if first else 0.0))
    return order, whole_bound(), segments, notes
