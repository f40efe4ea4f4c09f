"""Pass ``schedule``: the operator order that minimises the peak of live bytes.

The graph becomes a plain :class:`~memplan.solvers.sched_problem.ScheduleProblem`
(one buffer per storage root; views give their readers to their base; graph
outputs are kept to the end; ops without an ``out=`` variant carry their
result as scratch), which :func:`~memplan.solvers.scheduling.solve_schedule`
solves: a portfolio of heuristics, then exact CP-SAT on the segments of a
decomposition at cut points, each distinct segment solved once. The plan
records the order, its peak, the baselines and the solver's status and gap.
Before it measures any scratch, :func:`~memplan.passes.capacity.check_capacity`
refuses a graph that no order could fit in the target's tier or the budget.
"""
from __future__ import annotations

from memplan.ir.graph import Graph
from memplan.ir.types import eval_bytes
from memplan.passes.capacity import check_capacity
from memplan.passes.liveness import liveness, storage_roots
from memplan.passes.scratch import step_scratch
from memplan.passes.manager import register_pass
from memplan.solvers.sched_problem import Buf, ScheduleProblem
from memplan.solvers.scheduling import solve_schedule


def schedule_problem(graph: Graph, temps: dict[str, int] | None = None) -> ScheduleProblem:
    """The scheduling instance of ``graph`` (node ``i`` is ``graph.nodes[i]``)."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    producer = {v.name: index[n.name] for n in graph.nodes for v in n.outputs}
    roots = storage_roots(graph)
    preds: list[list[int]] = []
    users: dict[str, set[int]] = {}
    for i, node in enumerate(graph.nodes):
        preds.append(sorted({producer[v.name] for v in node.inputs if v.name in producer}))
        for v in node.inputs:
            if roots[v.name] in producer:
                users.setdefault(roots[v.name], set()).add(i)
    keep = {roots[v.name] for v in graph.outputs}
    buffers = []
    for node in graph.nodes:
        for v in node.outputs:
            if roots[v.name] == v.name:
                buffers.append(Buf(eval_bytes(v.nbytes), index[node.name], tuple(users.get(v.name, ())),
                                   v.name in keep))
    temp = [(temps or {}).get(n.name, 0) for n in graph.nodes]
    return ScheduleProblem(len(graph.nodes), preds, buffers, temp, names=[n.name for n in graph.nodes])


@register_pass("schedule", kind="plan")
def schedule(graph, plan, ctx):
    """Choose the order (``plan.schedule``) and record its liveness and solver statistics."""
    check_capacity(graph, ctx)  # before measuring anything: no order fits, no need to try
    temps = step_scratch(graph, ctx.options, ctx.log)
    problem = schedule_problem(graph, temps)
    result = solve_schedule(problem, time_limit=float(ctx.options.get("schedule_time_limit", 5.0)),
                            method=ctx.options.get("schedule_method", "auto"))
    plan.schedule = [graph.nodes[i].name for i in result.order]
    live = liveness(graph, plan.schedule, temps=temps)
    assert live.peak_bytes == result.peak, "liveness and the scheduling instance disagree"
    plan.stats.update(liveness_stats(graph, live))
    plan.stats.update({
        "topological_peak_bytes": result.baseline_peak,
        "live_profile": live.live_bytes,
        "topological_live_profile": liveness(graph, [n.name for n in graph.nodes], temps=temps).live_bytes,
        "heuristic_peak_bytes": result.heuristic_peak,
        "heuristic_peaks": result.heuristic_peaks,
        "lower_bound_bytes": result.lower_bound,
        "scratch_bytes": temps,
    })
    if ctx.memory_budget is not None and result.peak > ctx.memory_budget:
        from memplan.passes.allocate import budget_error
        raise budget_error(graph, plan, live, ctx.memory_budget, result.peak)
    plan.stats.setdefault("solves", []).append({
        "pass": "schedule", "method": result.method, "status": result.status, "objective": result.peak,
        "bound": result.lower_bound, "gap": round(result.gap, 6), "wall_s": round(result.wall_s, 4),
        "segments": len(result.segments), "notes": result.notes})
    return plan


def liveness_stats(graph, live) -> dict:
    """The plan statistics of one liveness result."""
    peak_node = live.schedule[live.peak_step] if live.peak_step >= 0 else ""
    return {
        "peak_bytes": live.peak_bytes,
        "peak_step": live.peak_step,
        "peak_node": peak_node,
        "resident_bytes": live.resident_bytes,
        "live_at_peak": [{"value": r.value, "bytes": r.nbytes, "start": r.start, "end": r.end,
                          "source": r.source} for r in live.top_buffers(10)],
    }
