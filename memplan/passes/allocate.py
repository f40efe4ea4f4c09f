"""Pass ``allocate``: a byte offset in one static arena for every intermediate buffer.

Buffers are the storage roots the schedule produces that are not graph
outputs (outputs are handed to the caller, so they are allocated on their
own and never alias the arena). Each lives from the step that writes it to
its last read, views included; :func:`~memplan.solvers.allocation.solve_allocation`
packs them (greedy portfolio, then an exact search towards the interval lower
bound). The planned peak of the run is then

    arena bytes + max over steps (graph outputs produced so far + scratch of the step)

and that is what the memory budget bounds and what the emitted code allocates.
"""
from __future__ import annotations

from memplan.errors import BudgetInfeasibleError
from memplan.passes.capacity import check_capacity
from memplan.passes.liveness import Liveness, liveness, storage_roots
from memplan.passes.scratch import step_scratch
from memplan.passes.manager import register_pass
from memplan.solvers.allocation import Buffer, solve_allocation
from memplan.units import format_bytes

ALIGNMENT = 64  # bytes: every slot starts on a cache line (and on any dtype's boundary)


def arena_buffers(graph, live: Liveness) -> tuple[list[Buffer], set[str]]:
    """The arena's buffers (``[start, end + 1)`` lifetimes) and the roots kept outside it."""
    roots = storage_roots(graph)
    outside = {roots[v.name] for v in graph.outputs}
    buffers = [Buffer(r.value, r.start, r.end + 1, -(-r.nbytes // ALIGNMENT) * ALIGNMENT)
               for r in live.ranges.values() if r.value not in outside]
    return buffers, outside


def outside_bytes(live: Liveness, outside: set[str]) -> list[int]:
    """Per step: bytes allocated outside the arena (outputs produced so far, plus scratch)."""
    per_step = list(live.temp_bytes)
    for name in outside:
        r = live.ranges.get(name)
        if r is not None:
            for i in range(r.start, len(per_step)):
                per_step[i] += r.nbytes
    return per_step


@register_pass("allocate", kind="plan")
def allocate(graph, plan, ctx):
    """Fill ``plan.allocation`` (tier -> value -> offset) and the arena statistics; enforce the budget."""
    temps = plan.stats.get("scratch_bytes")
    if temps is None:
        check_capacity(graph, ctx)  # before measuring anything: no order fits, no need to try
        temps = step_scratch(graph, ctx.options, ctx.log)
    if ctx.options.get("joint", True):
        plan.schedule = joint_order(graph, plan, temps)
    live = liveness(graph, plan.schedule, temps=temps)
    from memplan.passes.schedule import liveness_stats
    plan.stats.update(liveness_stats(graph, live))  # the joint choice may have changed the order
    plan.stats["live_profile"] = live.live_bytes
    buffers, outside = arena_buffers(graph, live)
    extra = max(outside_bytes(live, outside), default=0)
    time_limit = float(ctx.options.get("allocate_time_limit", 5.0))
    result = solve_allocation(buffers, time_limit=time_limit, alignment=ALIGNMENT)
    budget = ctx.memory_budget
    if budget is not None and result.height + extra > budget and budget - extra >= result.lower_bound:
        # feasibility mode: any packing under what the budget leaves for the arena
        tight = solve_allocation(buffers, capacity=budget - extra, time_limit=time_limit, alignment=ALIGNMENT)
        if tight.height < result.height:
            result = tight
    tier = ctx.target.main_tier.name
    plan.allocation = {tier: dict(sorted(result.offsets.items(), key=lambda kv: kv[1]))}
    plan.placement = {**{b.id: tier for b in buffers}, **{name: "output" for name in sorted(outside)}}
    planned = result.height + extra
    plan.stats.update({
        "arena_bytes": result.height,
        "arena_lower_bound_bytes": result.lower_bound,
        "outside_arena_bytes": extra,
        "planned_peak_bytes": planned,
        "buffers": {b.id: [b.lower, b.upper, b.size] for b in buffers},
        "memory_budget": budget,
    })
    plan.stats.setdefault("solves", []).append({
        "pass": "allocate", "method": result.method, "status": result.status, "objective": result.height,
        "bound": result.lower_bound, "gap": round(result.gap, 6), "wall_s": round(result.wall_s, 4),
        "buffers": len(buffers)})
    if budget is not None and planned > budget:
        raise budget_error(graph, plan, live, budget, planned)
    tier_room = ctx.target.main_tier.capacity - live.resident_bytes
    if planned > tier_room:
        raise budget_error(graph, plan, live, max(tier_room, 0), planned,
                           limit=f"target {ctx.target.name!r}: tier {tier!r} holds "
                                 f"{format_bytes(ctx.target.main_tier.capacity)}, of which inputs and weights "
                                 f"take {format_bytes(live.resident_bytes)}, leaving "
                                 f"{format_bytes(max(tier_room, 0))} for activations")
    return plan


def quick_planned_peak(graph, order: list[str], temps) -> tuple[int, int]:
    """(arena height of the greedy portfolio + bytes outside the arena, live-bytes peak) of an order."""
    live = liveness(graph, order, temps=temps)
    buffers, outside = arena_buffers(graph, live)
    greedy = solve_allocation(buffers, time_limit=1.0, alignment=ALIGNMENT, method="greedy")
    return greedy.height + max(outside_bytes(live, outside), default=0), live.peak_bytes


def joint_order(graph, plan, temps) -> list[str]:
    """Iterated order/offsets: among the scheduler's order, the topological order and every
    heuristic order, keep the one whose *packed* arena (plus what lives outside it) is lowest.

    The order with the fewest live bytes can still pack worse (fragmentation depends on the
    order), so this compares what the run would really allocate; the scheduler's order wins ties.
    Records each candidate's figures in ``plan.stats["joint"]``.
    """
    from memplan.passes.schedule import schedule_problem
    from memplan.solvers.sched_heuristics import HEURISTICS

    problem = schedule_problem(graph, temps)
    candidates = {"scheduler": list(plan.schedule)}
    for name, heuristic in HEURISTICS.items():
        candidates[name] = [graph.nodes[i].name for i in heuristic(problem)]
    scored = {}
    seen: dict[tuple, str] = {}
    for name, order in candidates.items():
        key = tuple(order)
        if key in seen:
            scored[name] = scored[seen[key]]
            continue
        seen[key] = name
        scored[name] = quick_planned_peak(graph, order, temps)
    best = min(candidates, key=lambda n: (scored[n][0], n != "scheduler"))
    plan.stats["joint"] = {"chosen": best, "candidates": {n: {"planned": p, "live_peak": l}
                                                          for n, (p, l) in scored.items()}}
    return candidates[best]


def budget_error(graph, plan, live: Liveness, budget: int, best: int, *,
                 limit: str = "") -> BudgetInfeasibleError:
    """The error a user gets when no plan fits: the limit, best peak, lower bound, what is live at
    the peak. ``limit`` names a limit other than the memory budget (``budget`` is then its bytes)."""
    bound = plan.stats.get("lower_bound_bytes", 0)
    top = live.top_buffers(5)
    listing = ", ".join(f"%{r.value} {format_bytes(r.nbytes)} ({r.source or 'graph'})" for r in top)
    return BudgetInfeasibleError(
        f"no plan fits {limit or 'the memory budget of ' + format_bytes(budget)}: "
        f"the smallest peak memplan found is "
        f"{format_bytes(best)} (lower bound {format_bytes(bound)}); at its peak step {live.peak_step} "
        f"(node {live.schedule[live.peak_step]}) the largest live buffers are: {listing}",
        budget=budget, best_peak=best, lower_bound=bound,
        live_at_peak=[(r.value, r.nbytes, r.source) for r in top])
