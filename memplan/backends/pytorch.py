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

import builtins
import itertools
import keyword
import linecache


from memplan.backends.bindings import fast_binding
from memplan.ir.graph import Graph, Value, iter_leaves
from memplan.ir.ops import lookup, out_variant
from memplan.ir.types import DTYPES
from memplan.passes.layout import eager_strides, slot_strides
from memplan.ir.printer import format_arguments
from memplan.plan import Plan
from memplan.units import format_bytes

_ARENA = "arena"
# every name the emitted module binds or reads besides the values: a value may never take one
_RESERVED = frozenset({"torch", "aten", "memplan_ops", "weights", "run", "inf", "nan", _ARENA}
                      | {f"{_ARENA}_{dt}" for dt in DTYPES} | set(dir(builtins)) | set(keyword.kwlist)
                      | set(getattr(keyword, "softkwlist", ())))
_counter = itertools.count()
_COMMENT_LIMIT = 160


def comment_text(text) -> str:
    """``text`` made safe for a ``#`` comment of emitted code: printable ASCII only (every other
    character, line breaks included, becomes ``?``), at most ``_COMMENT_LIMIT`` characters. Names
    and provenance come from a user's file; nothing from it may end a comment line."""
    text = str(text)
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:_COMMENT_LIMIT])
    return clean + ("..." if len(text) > _COMMENT_LIMIT else "")


def identifier(text: str) -> str:
    """An ASCII Python identifier derived from ``text`` (not yet checked against reserved names)."""
    base = "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else "_" for c in text)[:64]
    if not base or base[0].isdigit():
        base = "v_" + base
    return base


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
            base = identifier(v.name)
            if base in _RESERVED or base.startswith("__"):
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
    """Python source of ``run(weights, *inputs)`` executing ``plan`` on ``graph``.

    With an allocation in the plan, every intermediate lives in one arena
    allocated per run (``torch.empty(arena_bytes, dtype=torch.uint8)``): each
    op writes into its planned slot through its aten ``out=`` variant, or, if
    it has none, its result is copied into the slot (the plan counts that
    result as scratch of the step). Graph outputs are allocated on their own
    so they never pin or alias the arena. Without an allocation, values are
    dropped at their last use instead.
    """
    _check_emittable(graph)
    names = _Names()
    by_name = {n.name: n for n in graph.nodes}
    order = plan.schedule or [n.name for n in graph.nodes]
    offsets = {name: off for tier in plan.allocation.values() for name, off in tier.items()}
    use_arena = bool(plan.allocation)

    s = plan.stats
    lines = [f"# memplan: graph {comment_text(graph.name)} on target {comment_text(plan.target)}, {len(order)} steps"]
    if "planned_peak_bytes" in s:
        lines.append(f"# planned peak {format_bytes(s['planned_peak_bytes'])}: arena "
                     f"{format_bytes(s['arena_bytes'])} + outputs and scratch {format_bytes(s['outside_arena_bytes'])}; "
                     f"inputs + weights {format_bytes(s.get('resident_bytes', 0))}")
    elif "peak_bytes" in s:
        lines.append(f"# planned activation peak {format_bytes(s['peak_bytes'])}; "
                     f"inputs + weights {format_bytes(s.get('resident_bytes', 0))}")
    lines += ["from math import inf, nan", "", "import torch", "", "aten = torch.ops.aten", "", ""]
    params = ", ".join(names(v) for v in graph.inputs)
    lines.append(f"def run(weights{', ' if params else ''}{params}):")
    body = [f"{names(p)} = weights[{p.name!r}]" for p in graph.params]
    if use_arena:
        body += _arena_prologue(graph, offsets, s.get("arena_bytes", 0))
        freed_at = {}
        strides = eager_strides(graph)
    else:
        freed_at = _last_uses(graph, order, by_name)
    value_by_name = {v.name: v for v in graph.values()}
    for step, node_name in enumerate(order):
        node = by_name[node_name]
        origin = ", ".join(x for x in (_short_op(node.source_op or node.op), node.source) if x)
        comment = f"  # {step}: from {comment_text(origin)}"
        if node.reuses is not None:
            body += _inplace_step(node, names, comment)
        elif use_arena:
            body += _arena_step(node, names, offsets, strides, comment)
        else:
            body.append(f"{_targets(node, names)} = {_call(node, names)}{comment}")
        dead = [names(value_by_name[d]) for d in sorted(freed_at.get(step, []))
                if value_by_name[d].kind != "param"]
        if dead:
            body.append(f"del {', '.join(dead)}")
    rets = [names(v) for v in graph.outputs]
    body.append(f"return {rets[0]}" if len(rets) == 1 else f"return ({''.join(r + ', ' for r in rets)})")
    lines += ["    " + b for b in body]
    return "\n".join(lines) + "\n"


def _check_emittable(graph: Graph) -> None:
    """The emitted code holds literals only: every shape is concrete and every argument a plain
    value (a symbolic dim printed into code would be read as a Python name)."""
    import sympy
    from memplan.errors import MemplanError

    for v in graph.values():
        if not v.type.is_static:
            raise MemplanError(f"value %{v.name} has symbolic type {v.type}: the PyTorch backend emits concrete "
                               "shapes; bind the symbolic dims first (example inputs, --input-shape)")
    for node in graph.nodes:
        for leaf in iter_leaves((node.args, node.kwargs)):
            if isinstance(leaf, sympy.Basic):
                raise MemplanError(f"node {node.name} ({node.op}) has the symbolic argument {comment_text(leaf)}: "
                                   "the PyTorch backend emits concrete values only")


def _call(node, names, op: str | None = None, outs: dict[str, Value] | None = None) -> str:
    """The call of ``node`` (as overload ``op`` if given, with the ``outs`` keyword arguments), by the
    fastest binding that reaches exactly that overload (:func:`~memplan.backends.bindings.fast_binding`)."""
    op = op or node.op
    outs = outs or {}
    parts = format_arguments(node, names) + [f"{arg}={names(v)}" for arg, v in outs.items()]
    binding = fast_binding(node, op, outs)
    if binding is not None and binding.startswith("."):
        return f"{parts[0]}{binding}({', '.join(parts[1:])})"
    if binding is None:
        binding = "memplan_ops." + op[len("memplan."):] if op.startswith("memplan.") else op
    return f"{binding}({', '.join(parts)})"


def _targets(node, names) -> str:
    outs = [names(v) for v in node.outputs]
    opdef = lookup(node.op, node=node.name)
    return outs[0] if (len(outs) == 1 and not _returns_sequence(opdef)) else ", ".join(outs) + ","


def _last_uses(graph, order, by_name) -> dict[int, list[str]]:
    last_use: dict[str, int] = {}
    for step, node_name in enumerate(order):
        node = by_name[node_name]
        for v in node.inputs:
            last_use[v.name] = step
        for v in node.outputs:
            last_use.setdefault(v.name, step)
    keep = {v.name for v in graph.outputs}
    freed_at: dict[int, list[str]] = {}
    for name, step in last_use.items():
        if name not in keep:
            freed_at.setdefault(step, []).append(name)
    return freed_at


def _arena_view(dtype: str) -> str:
    return f"{_ARENA}_{dtype}"


def _arena_prologue(graph, offsets, arena_bytes) -> list[str]:
    dtypes = sorted({v.type.dtype for v in graph.values() if v.name in offsets})
    lines = [f"{_ARENA} = torch.empty({arena_bytes}, dtype=torch.uint8)  # the planned arena: "
             f"{format_bytes(arena_bytes)}"]
    for dt in dtypes:
        lines.append(f"{_arena_view(dt)} = {_ARENA}.view({DTYPES[dt]})")
    return lines


def _slot(v, offsets, strides) -> str:
    """``torch.as_strided(arena_f32, shape, strides, start)``: the planned slot of value ``v``, laid
    out with the strides eager gives it. (One view op: slicing and then viewing costs two calls,
    and on small transformers that Python overhead alone is 5% of the run.)"""
    item = v.type.torch_dtype.itemsize
    start = offsets[v.name] // item
    shape = [int(d) for d in v.type.shape]
    stride = slot_strides(shape, strides.get(v.name))
    return f"torch.as_strided({_arena_view(v.type.dtype)}, {tuple(shape)}, {tuple(stride)}, {start})"


def _arena_step(node, names, offsets, strides, comment) -> list[str]:
    """The statements of one step when intermediates live in the arena."""
    opdef = lookup(node.op, node=node.name)
    in_arena = [v for v in node.outputs if v.name in offsets]
    if opdef.view or not in_arena or node.subgraph is not None:
        # views own no bytes; ops whose outputs all leave the graph allocate them themselves
        return [f"{_targets(node, names)} = {_call(node, names)}{comment}"]
    lines = []
    out = out_variant(node.op)
    if out is not None:
        out_op, out_args = out
        for v in node.outputs:
            if v.name in offsets:
                lines.append(f"{names(v)} = {_slot(v, offsets, strides)}")
            else:  # a graph output: a tensor of its own, laid out as eager lays it out
                shape = [int(d) for d in v.type.shape]
                lines.append(f"{names(v)} = torch.empty_strided({tuple(shape)}, "
                             f"{tuple(slot_strides(shape, strides.get(v.name)))}, dtype={DTYPES[v.type.dtype]})")
        lines.append(f"{_call(node, names, out_op, dict(zip(out_args, node.outputs)))}{comment}")
        return lines
    # no out= variant: the op allocates its result; copy what belongs in the arena into its slot
    if len(node.outputs) == 1 and not _returns_sequence(opdef):
        v = node.outputs[0]
        return [f"{names(v)} = {_slot(v, offsets, strides)}",
                f"{names(v)}.copy_({_call(node, names)}){comment} (no out= variant: copied into its slot)"]
    lines.append(f"{_targets(node, names)} = {_call(node, names)}{comment} (no out= variant)")
    for v in in_arena:
        lines.append(f"{names(v)} = {_slot(v, offsets, strides)}.copy_({names(v)})")
    return lines


def _inplace_step(node, names, comment) -> list[str]:
    """A node that writes over its input ``node.reuses`` (the ``inplace`` pass): its output *is*
    that input's tensor, arena slot or not."""
    v = node.outputs[0]
    reused = next(x for x in node.inputs if x.name == node.reuses)
    lines = [f"{names(v)} = {names(reused)}"]
    out = out_variant(node.op)
    if out is not None:
        out_op, out_args = out
        lines.append(f"{_call(node, names, out_op, {out_args[0]: v})}{comment} (in place)")
    else:
        lines.append(f"{names(v)}.copy_({_call(node, names)}){comment} (in place; no out= variant)")
    return lines


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
