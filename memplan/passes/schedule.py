"""Pass ``schedule``: put the nodes in the order that minimises the peak of live bytes.

The graph becomes a plain :class:`~memplan.solvers.sched_problem.ScheduleProblem`
(one buffer per storage root; views give their readers to their base; graph
outputs are kept to the end; each step carries the scratch its kernel needs),
which :func:`~memplan.solvers.scheduling.solve_schedule` solves: a portfolio of
heuristics, then exact CP-SAT on the segments of a decomposition at cut points,
each distinct segment solved once. The pass reorders ``graph.nodes`` (the
order of the nodes *is* the schedule) and records the solver's status, bound
and gap and the baselines in ``ctx.records``. Before it measures any scratch,
:func:`~memplan.passes.capacity.check_capacity` refuses a graph that no order
could fit in the target's tier or the budget.
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.analysis.liveness import liveness
from memplan.analysis.planning import OWN, SLOT, budget_error, liveness_stats, schedule_problem, storage_kinds
from memplan.passes.capacity import check_capacity
from memplan.passes.registry import register_pass
from memplan.solvers.scheduling import solve_schedule


@dataclass(frozen=True)
class ScheduleOptions:
    """Options of ``schedule``."""

    schedule_method: str = "auto"           # auto, exact, heuristic, or a heuristic's name (baseline, ...)
    schedule_time_limit: float = 5.0        # seconds for the exact solver
    measure_scratch: bool = True            # measure each kernel's scratch on this host (else: estimate)
    scratch_measure_cap: int | None = None  # most bytes of tensors one measurement may allocate


def planned_scratch(graph, ctx) -> dict[str, int]:
    """Scratch of each node when it writes into a slot wherever it can (measured once per graph
    version and kept in ``ctx.records``)."""
    kinds = storage_kinds(graph, ctx.get_backend().writes_into)
    key = (id(graph), tuple(id(n) for n in graph.nodes), tuple(sorted(kinds.items())))
    cached = ctx.records.get("_scratch")
    if cached is not None and cached[0] == key:
        return cached[1]
    # every value written into a buffer it is given (a slot, or a graph output's own buffer) is measured
    # in the out= form the backend emits for it
    temps = ctx.get_backend().scratch(graph, {v for v, k in kinds.items() if k in (SLOT, OWN)}, ctx.options,
                                      ctx.log)
    ctx.records["_scratch"] = (key, temps)
    return temps


@register_pass("schedule", options=ScheduleOptions, produces=("order",))
def schedule(graph, ctx):
    """Reorder the nodes into the order of least peak memory; record the solver's figures."""
    method = ctx.options.get("schedule_method", "auto")
    from memplan.solvers.scheduling import HEURISTICS
    if method not in ("auto", "exact", "heuristic") and method not in HEURISTICS:
        from memplan.errors import MemplanError
        raise MemplanError(f"option schedule_method={str(method)[:40]!r}: choose auto, exact, heuristic or one of "
                           f"{', '.join(sorted(HEURISTICS))}")
    check_capacity(graph, ctx)  # before measuring anything: no order fits, no need to try
    temps = planned_scratch(graph, ctx)
    problem = schedule_problem(graph, temps)
    result = solve_schedule(problem, time_limit=float(ctx.options.get("schedule_time_limit", 5.0)),
                            method=ctx.options.get("schedule_method", "auto"))
    topological = [n.name for n in graph.nodes]
    graph.reorder([graph.nodes[i] for i in result.order])
    live = liveness(graph, temps=temps)
    assert live.peak_bytes == result.peak, "liveness and the scheduling instance disagree"
    stats = ctx.records.setdefault("stats", {})
    stats.update(liveness_stats(graph, live))
    stats.update({
        "topological_peak_bytes": result.baseline_peak,
        "live_profile": live.live_bytes,
        "topological_live_profile": liveness(graph, topological, temps=temps).live_bytes,
        "heuristic_peak_bytes": result.heuristic_peak,
        "heuristic_peaks": result.heuristic_peaks,
        "lower_bound_bytes": result.lower_bound,
    })
    if ctx.memory_budget is not None and result.peak > ctx.memory_budget:
        raise budget_error(live, ctx.memory_budget, result.peak, result.lower_bound)
    stats.setdefault("solves", []).append({
        "pass": "schedule", "method": result.method, "status": result.status, "objective": result.peak,
        "bound": result.lower_bound, "gap": round(result.gap, 6), "wall_s": round(result.wall_s, 4),
        "segments": len(result.segments), "notes": result.notes})
    return graph
