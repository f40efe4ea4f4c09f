"""Liveness analysis: live ranges, bytes live at every step, peak and what makes it.

For a schedule (an order of the graph's nodes) a value is live from the step
that produces it to the last step that reads it (graph outputs: to the end).
A view (``OpDef.view``) owns no bytes: it aliases its base, and extends the
base's live range to its own last use; so does the output of a node that
writes in place over an input (``Node.reuses``, see the ``inplace`` pass). Bytes are counted once per storage
root. Graph inputs and weights are resident for the whole run and are
reported apart from the activations the planner controls.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from memplan.ir.graph import Graph, Node
from memplan.ir.ops import lookup
from memplan.ir.types import eval_bytes


@dataclass
class LiveRange:
    """``[start, end]`` steps (inclusive) during which ``value``'s storage is needed."""

    value: str
    start: int
    end: int
    nbytes: int
    source: str = ""


@dataclass
class Liveness:
    """Result of :func:`liveness` for one schedule."""

    schedule: list[str]
    ranges: dict[str, LiveRange]              # storage roots produced by nodes
    alias_of: dict[str, str]                  # value -> storage root (views)
    live_bytes: list[int]                     # activation bytes live at each step (temps included)
    resident_bytes: int                       # inputs + weights, live throughout
    temp_bytes: list[int] = field(default_factory=list)  # scratch of each step
    peak_bytes: int = 0
    peak_step: int = -1
    live_at_peak: list[LiveRange] = field(default_factory=list)

    def top_buffers(self, k: int = 5) -> list[LiveRange]:
        return sorted(self.live_at_peak, key=lambda r: -r.nbytes)[:k]


def storage_roots(graph: Graph) -> dict[str, str]:
    """value name -> name of the value whose storage it uses (itself unless a view or written in place)."""
    root: dict[str, str] = {v.name: v.name for v in graph.values()}
    for node in graph.nodes:
        if node.reuses is not None:
            root[node.outputs[0].name] = root[node.reuses.name]
            continue
        opdef = lookup(node.op, node=node.name)
        if opdef.view and node.inputs:
            base = root[node.inputs[0].name]
            for v in node.outputs:
                root[v.name] = base
    return root


def liveness(graph: Graph, schedule: list[str] | None = None,
             bindings: dict[str, int] | None = None, temps: dict[str, int] | None = None) -> Liveness:
    """Live ranges and per-step bytes of ``graph`` run in ``schedule`` (node names;
    default: graph order). ``temps``: scratch bytes a node needs during its own step
    only. Symbolic sizes take their value in ``bindings`` (default 1)."""
    order = schedule if schedule is not None else [n.name for n in graph.nodes]
    by_name = {n.name: n for n in graph.nodes}
    step_of = {name: i for i, name in enumerate(order)}
    root = storage_roots(graph)
    last = len(order) - 1
    ranges: dict[str, LiveRange] = {}
    for name in order:
        node: Node = by_name[name]
        for v in node.outputs:
            if root[v.name] == v.name:
                ranges[v.name] = LiveRange(v.name, step_of[name], step_of[name],
                                           eval_bytes(v.nbytes, bindings), node.source)
    for name in order:
        i = step_of[name]
        for v in by_name[name].inputs:
            r = ranges.get(root[v.name])
            if r is not None:
                r.end = max(r.end, i)
    for v in graph.outputs:
        r = ranges.get(root[v.name])
        if r is not None:
            r.end = last
    temp_bytes = [(temps or {}).get(name, 0) for name in order]
    live_bytes = list(temp_bytes)
    for r in ranges.values():
        for i in range(r.start, r.end + 1):
            live_bytes[i] += r.nbytes
    resident = sum(eval_bytes(v.nbytes, bindings) for v in graph.inputs + graph.params)
    result = Liveness(order, ranges, {k: v for k, v in root.items() if k != v}, live_bytes, resident, temp_bytes)
    if live_bytes:
        result.peak_step = max(range(len(order)), key=lambda i: live_bytes[i])
        result.peak_bytes = live_bytes[result.peak_step]
        result.live_at_peak = [r for r in ranges.values() if r.start <= result.peak_step <= r.end]
    return result



