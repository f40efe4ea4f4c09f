"""The independent plan checker (:func:`verify_plan`) and the pass that runs it.

It trusts nothing the planning passes computed: it re-derives every value's
storage root (views alias their base) and last read from the graph and the
schedule alone, then simulates the run step by step and rejects the plan if

- a node runs twice, never, or before a value it reads exists;
- a value is read after its storage was freed, or after a node overwrote
  its storage in place (``Node.reuses``); an in-place node reads another
  alias of the bytes it overwrites, or writes more bytes than they hold;
- a buffer has no slot, is misaligned, or reaches past the arena;
- two buffers live at the same time overlap in the arena;
- the arena (plus what lives outside it, plus inputs and weights) exceeds the
  target tier's capacity, or the planned peak exceeds the memory budget;
- a graph output lives in the arena (it would be overwritten or pin the arena).
"""
from __future__ import annotations

from memplan.errors import PlanVerificationError
from memplan.ir.graph import Graph
from memplan.ir.ops import is_view
from memplan.ir.types import eval_bytes
from memplan.passes.manager import register_pass
from memplan.plan import Plan
from memplan.target import HardwareSpec
from memplan.units import format_bytes


def verify_plan(graph: Graph, plan: Plan, target: HardwareSpec | None = None, *, alignment: int = 64) -> None:
    """Raise :class:`PlanVerificationError` naming the step and buffers at fault; return None if sound."""
    nodes = {n.name: n for n in graph.nodes}
    root = {v.name: v.name for v in graph.values()}
    for n in graph.nodes:  # storage roots, re-derived here on purpose
        if n.reuses is not None:
            root[n.outputs[0].name] = root[n.reuses]
        elif is_view(n.op) and n.inputs:
            for v in n.outputs:
                root[v.name] = root[n.inputs[0].name]
    last_read: dict[str, int] = {}
    for step, name in enumerate(plan.schedule):
        node = nodes.get(name)
        if node is None:
            raise PlanVerificationError(f"step {step}: node {name!r} is not in graph {graph.name!r}")
        for v in node.inputs:
            last_read[root[v.name]] = step
    outputs = {root[v.name] for v in graph.outputs}
    end = len(plan.schedule)
    arena = plan.allocation
    tier_of = plan.placement
    arena_bytes = plan.stats.get("arena_bytes")
    in_arena = {name: tier for tier, offsets in arena.items() for name in offsets}

    available = {v.name for v in graph.inputs} | {v.name for v in graph.params}
    freed: set[str] = set()
    live: dict[str, tuple[int, int]] = {}  # root -> (offset, end) of buffers live in the arena
    seen: set[str] = set()
    values_of: dict[str, list[str]] = {}  # root -> values produced so far that use its storage
    clobbered: dict[str, str] = {}  # value -> the node that overwrote its storage in place
    for step, name in enumerate(plan.schedule):
        node = nodes[name]
        if name in seen:
            raise PlanVerificationError(f"step {step}: node {name!r} runs twice")
        seen.add(name)
        for v in node.inputs:
            if v.name not in available:
                raise PlanVerificationError(f"step {step}: node {name} reads %{v.name} before it is produced")
            if root[v.name] in freed:
                raise PlanVerificationError(f"step {step}: node {name} reads %{v.name} after its storage "
                                            f"%{root[v.name]} was freed")
            if v.name in clobbered:
                raise PlanVerificationError(f"step {step}: node {name} reads %{v.name} after node "
                                            f"{clobbered[v.name]} overwrote its storage in place")
        if node.reuses is not None:
            _check_inplace(step, node, root, values_of, clobbered, {v.name for v in graph.outputs})
        for v in node.outputs:
            available.add(v.name)
            values_of.setdefault(root[v.name], []).append(v.name)
            if root[v.name] != v.name:
                continue  # a view: no storage of its own
            size = eval_bytes(v.nbytes)
            if v.name in outputs:
                if v.name in in_arena:
                    raise PlanVerificationError(f"graph output %{v.name} is placed in the arena "
                                                f"({in_arena[v.name]}); outputs must live outside it")
                continue
            if arena or tier_of:
                _place(step, name, v.name, size, in_arena, arena, live, arena_bytes, alignment)
        for r in [r for r in live if last_read.get(r, -1) <= step]:
            del live[r]
            freed.add(r)
        for v in node.outputs:  # produced and never read: dead after this step
            r = root[v.name]
            if r == v.name and r not in outputs and last_read.get(r, -1) < step:
                freed.add(r)
    missing = [n for n in nodes if n not in seen]
    if missing:
        raise PlanVerificationError(f"plan never runs node {missing[0]!r} ({len(missing)} nodes missing)")
    for v in graph.outputs:
        if v.name not in available:
            raise PlanVerificationError(f"graph output %{v.name} is never produced")
    _check_capacity(graph, plan, target, end)


def _check_inplace(step, node, root, values_of, clobbered, graph_outputs):
    """``node`` overwrites the storage of its input ``node.reuses``: every value using that storage
    so far is dead from now on (reading one later is a fault, caught by the caller)."""
    reused = next((v for v in node.inputs if v.name == node.reuses), None)
    if reused is None or len(node.outputs) != 1:
        raise PlanVerificationError(f"step {step}: node {node.name} writes in place over %{node.reuses}, "
                                    f"which is not one of its inputs (or it has several outputs)")
    r = root[reused.name]
    others = [v.name for v in node.inputs if root[v.name] == r and v.name != reused.name]
    if others:
        raise PlanVerificationError(f"step {step}: node {node.name} overwrites %{reused.name} in place while "
                                    f"reading %{others[0]}, another alias of the same storage %{r}")
    if eval_bytes(node.outputs[0].nbytes) > eval_bytes(reused.nbytes):
        raise PlanVerificationError(f"step {step}: node {node.name} writes {eval_bytes(node.outputs[0].nbytes)} "
                                    f"bytes in place over %{reused.name}, which holds {eval_bytes(reused.nbytes)}")
    for v in values_of.get(r, []):
        if v in graph_outputs:
            raise PlanVerificationError(f"step {step}: node {node.name} overwrites graph output %{v} in place")
        clobbered.setdefault(v, node.name)


def _place(step, node, name, size, in_arena, arena, live, arena_bytes, alignment):
    tier = in_arena.get(name)
    if tier is None:
        raise PlanVerificationError(f"step {step}: %{name} (written by {node}) has no slot in any arena")
    offset = arena[tier][name]
    if offset < 0 or offset % alignment:
        raise PlanVerificationError(f"step {step}: %{name} at offset {offset} is not {alignment}-byte aligned")
    if arena_bytes is not None and offset + size > arena_bytes:
        raise PlanVerificationError(f"step {step}: %{name} [{offset}, {offset + size}) reaches past the "
                                    f"arena of {arena_bytes} bytes")
    for other, (lo, hi) in live.items():
        if in_arena.get(other) == tier and offset < hi and lo < offset + size and size and hi > lo:
            raise PlanVerificationError(
                f"step {step}: %{name} [{offset}, {offset + size}) overlaps %{other} [{lo}, {hi}) "
                f"in arena {tier!r} while both are live")
    live[name] = (offset, offset + size)


def _check_capacity(graph, plan, target, end):
    planned = plan.stats.get("planned_peak_bytes")
    budget = plan.stats.get("memory_budget")
    if planned is not None and budget is not None and planned > budget:
        raise PlanVerificationError(f"planned peak {format_bytes(planned)} exceeds the memory budget "
                                    f"{format_bytes(budget)}")
    if target is not None and planned is not None:
        resident = sum(eval_bytes(v.nbytes) for v in graph.inputs + graph.params)
        tier = target.main_tier
        if planned + resident > tier.capacity:
            raise PlanVerificationError(
                f"plan needs {format_bytes(planned)} + {format_bytes(resident)} (inputs and weights) in tier "
                f"{tier.name!r}, which holds {format_bytes(tier.capacity)} on target {target.name!r}")


def check_plan(graph: Graph, plan: Plan) -> None:
    """Schedule-and-arena check without a target (used by ``memplan show``)."""
    verify_plan(graph, plan, None)


@register_pass("verify_plan", kind="plan")
def verify_plan_pass(graph, plan, ctx):
    """Re-check the plan independently of the passes that made it."""
    verify_plan(graph, plan, ctx.target)
    return plan
