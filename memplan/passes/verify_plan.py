"""Pass ``verify_plan`` and the independent plan checker :func:`verify_plan`."""
from memplan.errors import PlanVerificationError
from memplan.ir.graph import Graph
from memplan.passes.manager import register_pass
from memplan.plan import Plan


def check_plan(graph: Graph, plan: Plan) -> None:
    """Reject a plan whose schedule is not a valid execution of ``graph``.

    Simulates the schedule: every node runs exactly once, after every value it
    reads exists, and every graph output is produced.
    """
    nodes = {n.name: n for n in graph.nodes}
    available = {v.name for v in graph.inputs} | {v.name for v in graph.params}
    seen = set()
    for step, name in enumerate(plan.schedule):
        node = nodes.get(name)
        if node is None:
            raise PlanVerificationError(f"step {step}: node {name!r} is not in graph {graph.name!r}")
        if name in seen:
            raise PlanVerificationError(f"step {step}: node {name!r} runs twice")
        seen.add(name)
        for v in node.inputs:
            if v.name not in available:
                raise PlanVerificationError(
                    f"step {step}: node {name} reads %{v.name} before it is produced")
        available.update(v.name for v in node.outputs)
    missing = [n for n in nodes if n not in seen]
    if missing:
        raise PlanVerificationError(f"plan never runs node {missing[0]!r} ({len(missing)} nodes missing)")
    for v in graph.outputs:
        if v.name not in available:
            raise PlanVerificationError(f"graph output %{v.name} is never produced")


@register_pass("verify_plan", kind="plan")
def verify_plan(graph, plan, ctx):
    """Re-check the plan independently of the passes that made it."""
    check_plan(graph, plan)
    return plan
