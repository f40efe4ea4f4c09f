"""PyTorch backend: Plan → a readable Python module of aten calls.

The emitted function runs the plan's schedule, one statement per step, each
traced to its source op and module in a comment, and drops every value at
its last use (``del``) so that no activation outlives its plan interval.

>>> import torch, memplan
>>> cm = memplan.compile(torch.nn.Linear(4, 2), (torch.randn(3, 4),))
>>> print(cm.source.splitlines()[0])
# memplan: graph 'Linear' on target 'cpu', 2 steps
"""
from __future__ import annotations

import itertools
import keyword
import linecache


from memplan.ir.graph import Graph, Value
from memplan.ir.ops import lookup
from memplan.ir.printer import format_call
from memplan.plan import Plan
from memplan.units import format_bytes

_RESERVED = {"torch", "aten", "memplan_ops", "weights", "run"}
_counter = itertools.count()


def _returns_sequence(opdef) -> bool:
    schema = getattr(opdef.impl, "_schema", None)
    if schema is None:
        return getattr(opdef.impl, "returns_sequence", False)
    return len(schema.returns) != 1 or str(schema.returns[0].type).startswith(("List", "Tensor[]"))


class _Names:
    """IR value names -> Python identifiers (stable, collision free)."""

    def __init__(self):
        self.map: dict[str, str] = {}
        self.used: set[str] = set(_RESERVED)

    def __call__(self, v: Value) -> str:
        if v.name not in self.map:
            base = "".join(c if c.isalnum() or c == "_" else "_" for c in v.name)
            if not base or base[0].isdigit() or keyword.iskeyword(base) or base in _RESERVED:
                base = "v_" + base
            name, i = base, 1
            while name in self.used:
                name, i = f"{base}_{i}", i + 1
            self.used.add(name)
            self.map[v.name] = name
        return self.map[v.name]


def _short_op(name: str) -> str:
    """``aten.addmm.default -> aten.addmm``; other names unchanged."""
    return name[: -len(".default")] if name.endswith(".default") else name


def emit_python(graph: Graph, plan: Plan) -> str:
    """Python source of ``run(weights, *inputs)`` executing ``plan`` on ``graph``."""
    names = _Names()
    by_name = {n.name: n for n in graph.nodes}
    order = plan.schedule or [n.name for n in graph.nodes]
    last_use: dict[str, int] = {}
    for step, node_name in enumerate(order):
        node = by_name[node_name]
        for v in node.inputs:
            last_use[v.name] = step
        for v in node.outputs:
            last_use.setdefault(v.name, step)
    keep = {v.name for v in graph.outputs}

    s = plan.stats
    lines = [f"# memplan: graph {graph.name!r} on target {plan.target!r}, {len(order)} steps"]
    if "peak_bytes" in s:
        lines.append(f"# planned activation peak {format_bytes(s['peak_bytes'])}; "
                     f"inputs + weights {format_bytes(s.get('resident_bytes', 0))}")
    lines += ["import torch", "aten = torch.ops.aten", "", ""]
    params = ", ".join(names(v) for v in graph.inputs)
    lines.append(f"def run(weights{', ' if params else ''}{params}):")
    body = []
    for p in graph.params:
        body.append(f"{names(p)} = weights[{p.name!r}]")
    freed_at: dict[int, list[str]] = {}
    for name, step in last_use.items():
        if name not in keep:
            freed_at.setdefault(step, []).append(name)
    value_by_name = {v.name: v for v in graph.values()}
    for step, node_name in enumerate(order):
        node = by_name[node_name]
        opdef = lookup(node.op, node=node.name)
        outs = [names(v) for v in node.outputs]
        target = outs[0] if (len(outs) == 1 and not _returns_sequence(opdef)) else ", ".join(outs) + ","
        call = format_call(node, names)
        if node.op.startswith("memplan."):
            call = "memplan_ops." + call[len("memplan."):]
        origin = ", ".join(x for x in (_short_op(node.source_op or node.op), node.source) if x)
        body.append(f"{target} = {call}  # {step}: from {origin}")
        dead = sorted(freed_at.get(step, []))
        dead = [names(value_by_name[d]) for d in dead if value_by_name[d].kind != "param"]
        if dead:
            body.append(f"del {', '.join(dead)}")
    rets = [names(v) for v in graph.outputs]
    body.append(f"return {rets[0]}" if len(rets) == 1 else f"return ({', '.join(rets)},)")
    lines += ["    " + b for b in body]
    return "\n".join(lines) + "\n"


def load_python(source: str, module_name: str = "memplan_generated"):
    """Compile emitted source; return its ``run`` function (tracebacks show the source)."""
    from memplan.ir.ops import _CUSTOM

    filename = f"<{module_name}_{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": module_name, "memplan_ops": _CustomOps(_CUSTOM)}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["run"]


class _CustomOps:
    """``memplan_ops.<name>`` in emitted code resolves to the registered reference implementation."""

    def __init__(self, table):
        self._table = table

    def __getattr__(self, name):
        return self._table["memplan." + name].impl


__all__ = ["emit_python", "load_python"]
