"""Pass ``schedule``: choose the node order and record its liveness in the plan.

Today the order is the graph's topological order (what eager PyTorch runs);
the memory-minimising schedulers come with the planning core.
"""
from memplan.errors import BudgetInfeasibleError
from memplan.passes.liveness import liveness
from memplan.passes.manager import register_pass
from memplan.units import format_bytes


@register_pass("schedule", kind="plan")
def schedule(graph, plan, ctx):
    """Set ``plan.schedule`` and the peak statistics; enforce the memory budget."""
    order = [n.name for n in graph.nodes]
    live = liveness(graph, order)
    plan.schedule = order
    plan.stats.update(liveness_stats(graph, live))
    plan.stats["topological_peak_bytes"] = live.peak_bytes
    plan.stats["memory_budget"] = ctx.memory_budget
    if ctx.memory_budget is not None and live.peak_bytes > ctx.memory_budget:
        top = live.top_buffers(5)
        listing = ", ".join(f"%{r.value} {format_bytes(r.nbytes)} ({r.source or 'graph'})" for r in top)
        raise BudgetInfeasibleError(
            f"no plan fits the memory budget of {format_bytes(ctx.memory_budget)}: the smallest activation "
            f"peak found is {format_bytes(live.peak_bytes)} at step {live.peak_step} "
            f"(node {order[live.peak_step]}); largest buffers live there: {listing}",
            budget=ctx.memory_budget, best_peak=live.peak_bytes, lower_bound=0,
            live_at_peak=[(r.value, r.nbytes, r.source) for r in top])
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
