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
from memplan.ir.custom_ops import INPLACE_ARGS
from memplan.ir.graph import iter_values
from memplan.ir.ops import OpKind, is_view, lookup
from memplan.ir.types import eval_bytes
from memplan.passes.manager import register_pass
from memplan.plan import Plan
from memplan.target import HardwareSpec
from memplan.units import format_bytes


def verify_plan(graph: Graph, plan: Plan, target: HardwareSpec | None = None, *, alignment: int = 64) -> None:
    """Raise :class:`PlanVerificationError` naming the step and buffers at fault; return None if sound."""
    if plan.graph != graph.name:
        raise PlanVerificationError(f"the plan is for graph {plan.graph!r:.80}, not {graph.name!r}")
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
    arena_bytes = _check_storage(graph, plan, target, root, outputs, alignment)
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
            _check_inplace(step, node, root, values_of, clobbered, {v.name for v in graph.outputs},
                           {v.name for v in graph.inputs + graph.params})
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
    _check_capacity(graph, plan, target, end, root, outputs)


def _check_inplace(step, node, root, values_of, clobbered, graph_outputs, resident):
    """``node`` overwrites the storage of its input ``node.reuses``: every value using that storage
    so far is dead from now on (reading one later is a fault, caught by the caller)."""
    reused = next((v for v in node.inputs if v.name == node.reuses), None)
    if reused is None or len(node.outputs) != 1:
        raise PlanVerificationError(f"step {step}: node {node.name} writes in place over %{node.reuses}, "
                                    f"which is not one of its inputs (or it has several outputs)")
    r = root[reused.name]
    if r in resident:
        raise PlanVerificationError(f"step {step}: node {node.name} overwrites %{reused.name} in place, whose "
                                    f"storage %{r} is a graph input or weight (the caller's or the module's)")
    other = _reads_overwritten(node, reused.name, root)
    if other is not None:
        raise PlanVerificationError(f"step {step}: node {node.name} ({node.op}) overwrites %{reused.name} in "
                                    f"place while reading %{other} from the same storage %{r} in the same step")
    if eval_bytes(node.outputs[0].nbytes) > eval_bytes(reused.nbytes):
        raise PlanVerificationError(f"step {step}: node {node.name} writes {eval_bytes(node.outputs[0].nbytes)} "
                                    f"bytes in place over %{reused.name}, which holds {eval_bytes(reused.nbytes)}")
    for v in values_of.get(r, []):
        if v in graph_outputs:
            raise PlanVerificationError(f"step {step}: node {node.name} overwrites graph output %{v} in place")
        clobbered.setdefault(v, node.name)


def _reads_overwritten(node, reused: str, root) -> str | None:
    """A value ``node`` reads from the storage it overwrites, other than what an in-place kernel
    may read: an elementwise or broadcast op may read ``reused`` itself (element by element);
    an op of ``INPLACE_ARGS`` may read the storage once, as ``reused`` at a listed position;
    nothing else may read it at all."""
    r = root[reused]
    kind = lookup(node.op, node=node.name).kind
    hits = [(i, v.name) for i, a in enumerate(node.args) for v in iter_values(a) if root[v.name] == r]
    hits += [(None, v.name) for v in iter_values(node.kwargs) if root[v.name] == r]
    if node.op in INPLACE_ARGS:
        allowed = set(INPLACE_ARGS[node.op])
        bad = [name for i, name in hits if i not in allowed or name != reused]
        return bad[0] if bad else (hits[1][1] if len(hits) > 1 else None)
    if kind in (OpKind.ELEMENTWISE, OpKind.BROADCAST):
        bad = [name for _i, name in hits if name != reused]
        return bad[0] if bad else None
    return hits[0][1] if hits else reused  # no kernel of another kind may write over what it reads


def _check_storage(graph, plan, target, root, outputs, alignment) -> int | None:
    """The storage the plan asks for is one the backend realises: one arena, in the target's main
    tier, of ``stats.arena_bytes`` bytes, holding only buffers the graph's nodes produce, each at a
    non-negative integer offset. Returns the arena's size (None without an allocation)."""
    arena = plan.allocation
    if not isinstance(arena, dict) or not all(isinstance(t, dict) for t in arena.values()):
        raise PlanVerificationError("plan allocation must map a tier name to {buffer: offset}")
    tiers = [t for t, offsets in arena.items() if offsets]
    if len(tiers) > 1:
        raise PlanVerificationError(f"plan allocates in {len(tiers)} tiers ({', '.join(map(repr, tiers[:4]))}); the "
                                    "PyTorch backend places one arena, in the target's main memory tier")
    if target is not None and tiers and tiers[0] != target.main_tier.name:
        raise PlanVerificationError(f"plan allocates in tier {tiers[0]!r}, which is not the main memory tier "
                                    f"{target.main_tier.name!r} of target {target.name!r}")
    if not tiers:
        return plan.stats.get("arena_bytes") if isinstance(plan.stats.get("arena_bytes"), int) else None
    arena_bytes = plan.stats.get("arena_bytes")
    if not isinstance(arena_bytes, int) or isinstance(arena_bytes, bool) or arena_bytes < 0:
        raise PlanVerificationError(f"plan allocates an arena but states no size for it (stats.arena_bytes "
                                    f"is {arena_bytes!r:.40})")
    producer_of = {v.name for n in graph.nodes for v in n.outputs}
    tier = tiers[0]
    for name, offset in arena[tier].items():
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise PlanVerificationError(f"%{name}: offset {offset!r:.40} in tier {tier!r} is not an integer")
        if offset < 0:
            raise PlanVerificationError(f"%{name}: offset {offset} in tier {tier!r} is negative")
        if name not in producer_of:
            raise PlanVerificationError(f"tier {tier!r} allocates %{name}, which no node of graph "
                                        f"{graph.name!r} produces")
        if root[name] != name:
            raise PlanVerificationError(f"tier {tier!r} allocates %{name}, a view or in-place result that owns "
                                        f"no bytes (its storage is %{root[name]})")
        if name in outputs:
            raise PlanVerificationError(f"graph output %{name} is placed in the arena ({tier}); outputs must "
                                        "live outside it")
        where = plan.placement.get(name, tier) if isinstance(plan.placement, dict) else tier
        if where != tier:
            raise PlanVerificationError(f"%{name} is placed in {where!r} but allocated in tier {tier!r}")
    return arena_bytes


def _place(step, node, name, size, in_arena, arena, live, arena_bytes, alignment):
    tier = in_arena.get(name)
    if tier is None:
        raise PlanVerificationError(f"step {step}: %{name} (written by {node}) has no slot in any arena")
    offset = arena[tier][name]
    if offset % alignment:
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


def _peak_of_storage(graph, plan, root, outputs) -> int | None:
    """The peak the plan's storage makes: the arena, plus at each step the graph outputs produced so
    far and that step's scratch (``stats.scratch_bytes``, measured when the plan was made)."""
    arena_bytes = plan.stats.get("arena_bytes")
    if not plan.allocation or not isinstance(arena_bytes, int):
        return None
    scratch = plan.stats.get("scratch_bytes") or {}
    nodes = {n.name: n for n in graph.nodes}
    held, worst = 0, 0
    for name in plan.schedule:
        for v in nodes[name].outputs:
            if root[v.name] == v.name and v.name in outputs:
                held += eval_bytes(v.nbytes)
        extra = scratch.get(name, 0) if isinstance(scratch, dict) else 0
        worst = max(worst, held + (extra if isinstance(extra, int) else 0))
    return arena_bytes + worst


def _check_capacity(graph, plan, target, end, root=None, outputs=None):
    planned = plan.stats.get("planned_peak_bytes")
    if root is not None:
        recomputed = _peak_of_storage(graph, plan, root, outputs)
        if recomputed is not None:
            if isinstance(planned, int) and planned < recomputed:
                raise PlanVerificationError(f"plan states a planned peak of {format_bytes(planned)}, but its arena "
                                            f"and outputs need {format_bytes(recomputed)}")
            planned = recomputed if not isinstance(planned, int) else max(planned, recomputed)
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
