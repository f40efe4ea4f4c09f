"""Pass ``verify_plan``: the independent checker (:mod:`memplan.analysis.check`) run on the planned IR."""
from __future__ import annotations

from memplan.analysis.check import PlanCheck, verify_plan
from memplan.passes.registry import register_pass


@register_pass("verify_plan")
def verify_plan_pass(graph, ctx):
    """Re-check the planned IR independently of the passes that made it."""
    ctx.records["check"] = verify_plan(graph, ctx.target)
    return graph


def check_plan(graph, plan) -> PlanCheck:
    """Verify planned ``graph`` on its own, then check that report ``plan`` describes it (same graph,
    order, placement and offsets); used by ``memplan show`` on a ``.plan.json`` beside its ``.mir``."""
    from memplan.errors import PlanVerificationError
    from memplan.plan import Plan

    check = verify_plan(graph)
    derived = Plan.from_graph(graph, check)
    if plan.graph != graph.name:
        raise PlanVerificationError(f"the plan is for graph {plan.graph!r:.80}, not {graph.name!r}")
    for field in ("schedule", "placement", "allocation"):
        if getattr(plan, field) != getattr(derived, field):
            raise PlanVerificationError(f"the plan's {field} is not the one of the planned IR beside it")
    return check


__all__ = ["PlanCheck", "check_plan", "verify_plan", "verify_plan_pass"]
