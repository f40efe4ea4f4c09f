"""Capacity check before planning: can any plan of this graph fit the target and the budget?

Measuring kernel scratch runs every op once on real tensors, and the
scheduler's solvers take seconds; neither is worth doing (and the first can
exhaust the host's memory) when a bound that needs no order already says no
plan fits. Two facts hold in every order:

- graph inputs and weights stay resident in the target's main tier for the
  whole run, so their bytes must fit its capacity;
- while a node runs, the storage of every activation it reads and of every
  result it writes is live at once (counted once per storage root, so views
  and in-place writes add nothing), so the largest such set over all nodes is
  a lower bound on the activation peak of any schedule — and the planned peak
  (arena + what lives outside it + scratch) is never below it.

:func:`check_capacity` raises :class:`~memplan.errors.BudgetInfeasibleError`
naming the limit and what holds it up when either fact rules every plan
out. The ``schedule`` and ``allocate`` passes call it before they measure
anything.
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import BudgetInfeasibleError
from memplan.ir.graph import Graph
from memplan.ir.types import eval_bytes
from memplan.analysis.liveness import storage_roots
from memplan.units import format_bytes


@dataclass(frozen=True)
class NodeBound:
    """The bytes that must be live while ``node`` runs: ``buffers`` is ``[(value, bytes), ...]``."""

    node: str
    source: str
    nbytes: int
    buffers: tuple[tuple[str, int], ...]


def node_lower_bound(graph: Graph) -> NodeBound | None:
    """The node whose activations read and written need the most bytes at once (None: no nodes)."""
    roots = storage_roots(graph)
    produced = {v.name: v for n in graph.nodes for v in n.outputs}
    best: NodeBound | None = None
    for node in graph.nodes:
        live: dict[str, int] = {}
        for v in (*node.inputs, *node.outputs):
            root = roots[v.name]
            if root in produced and root not in live:
                live[root] = eval_bytes(produced[root].nbytes)
        total = sum(live.values())
        if best is None or total > best.nbytes:
            buffers = tuple(sorted(live.items(), key=lambda kv: -kv[1]))
            best = NodeBound(node.name, node.source or node.source_op or "", total, buffers)
    return best


def resident_bytes(graph: Graph) -> int:
    """Bytes of the graph inputs and weights (live for the whole run)."""
    return sum(eval_bytes(v.nbytes) for v in graph.inputs + graph.params)


def _listing(items, k: int = 3) -> str:
    items = sorted(items, key=lambda kv: -kv[1])
    text = ", ".join(f"%{name} {format_bytes(n)}" for name, n in items[:k])
    return text + (f" and {len(items) - k} more" if len(items) > k else "")


def check_capacity(graph: Graph, ctx) -> None:
    """Raise :class:`BudgetInfeasibleError` if no order of ``graph`` can fit ``ctx``'s target tier
    or memory budget (see the module docstring); a cheap check, run before any measurement."""
    tier = ctx.target.main_tier
    resident = resident_bytes(graph)
    bound = node_lower_bound(graph)
    need = bound.nbytes if bound is not None else 0
    live = [(name, n, bound.source) for name, n in bound.buffers] if bound is not None else []
    where = (f"node {bound.node}{' (from ' + bound.source + ')' if bound.source else ''} reads and writes "
             f"{_listing(bound.buffers)}, which every order holds at once") if bound is not None else ""
    if resident > tier.capacity:
        held = [(v.name, eval_bytes(v.nbytes)) for v in graph.inputs + graph.params]
        raise BudgetInfeasibleError(
            f"no plan fits target {ctx.target.name!r}: tier {tier.name!r} holds {format_bytes(tier.capacity)}, "
            f"but the graph's inputs and weights alone take {format_bytes(resident)} ({_listing(held)})",
            budget=ctx.memory_budget if ctx.memory_budget is not None else tier.capacity,
            best_peak=need, lower_bound=need, live_at_peak=live)
    budget = ctx.memory_budget
    if budget is not None and need > budget:
        raise BudgetInfeasibleError(
            f"no plan fits the memory budget of {format_bytes(budget)}: the activation peak is at least "
            f"{format_bytes(need)} in any order ({where})",
            budget=budget, best_peak=need, lower_bound=need, live_at_peak=live)
    room = tier.capacity - resident
    if need > room:
        raise BudgetInfeasibleError(
            f"no plan fits target {ctx.target.name!r}: tier {tier.name!r} holds {format_bytes(tier.capacity)}, "
            f"inputs and weights take {format_bytes(resident)}, leaving {format_bytes(room)} for activations, "
            f"and the activation peak is at least {format_bytes(need)} in any order ({where})",
            budget=room, best_peak=need, lower_bound=need, live_at_peak=live)
