"""The IR text form.

::

    graph main(%x: f32[1, 128]) {
      param %fc_weight: f32[64, 128]  # 32.00 KiB
      %t: f32[128, 64] = aten.t.default(%fc_weight) loc('fc', 'aten.linear')  # view of %fc_weight
      %addmm: f32[1, 64] = aten.addmm.default(%fc_bias, %x, %t) loc('fc', 'aten.linear')  # 256 B
      return %addmm
    }

Every value prints with its type; every node with its provenance
(``loc(module path or ONNX node, source op)``) and, after ``#``, its output
bytes. A node that writes its output over an input's storage (see the
``inplace`` pass) says so with ``reuses(%input)`` before its ``loc``.
Arguments are Python literals with ``%name`` for values. A node that holds a
sub-graph prints it as an indented block after the call. The parser
(:mod:`memplan.ir.parser`) reads this back: ``parse(print_graph(g)) == g``.

A planned graph (see :mod:`memplan.ir.graph`) prints its whole plan, in this
order inside the graph: ``attr key = literal`` lines (``Graph.attrs``, in dict
order), params, ``storage %name = memplan.storage("tier", bytes)`` lines,
then the nodes in schedule order. A type names its memory space
(``f32[1, 64]@dram``); an output's allocation follows its type
(``slot(%storage_dram, 0, [64, 1])``, ``own([64, 1])``, ``kernel``); a node's
annotations follow its call in the order
``[label] reuses(%x) recomputes(%y) scratch(N) loc(...)``::

    attr memory_budget = 1048576
    storage %storage_dram = memplan.storage("dram", 4096)  # 4.00 KiB
    %mm: f32[1, 64]@dram slot(%storage_dram, 0, [64, 1]) = aten.mm.default(%x, %t) scratch(512)  # 256 B
    %g.r1: f32[1, 64]@dram own([64, 1]) = aten.gelu.default(%r) recomputes(%g)  # 256 B

Allocations are printed on node outputs only (inputs and params have none in
a plan).
"""
from __future__ import annotations

import math

import sympy
import torch

from memplan.ir.graph import Graph, Node, Value
from memplan.units import format_bytes


def format_arg(a) -> str:
    """One argument as IR text (and, identically, as Python source for the backend)."""
    if isinstance(a, Value):
        return f"%{a.name}"
    if isinstance(a, bool) or a is None:
        return repr(a)
    if isinstance(a, int):
        return repr(a)
    if isinstance(a, float):
        if math.isnan(a):
            return "nan"
        if math.isinf(a):
            return "inf" if a > 0 else "-inf"
        return repr(a)
    if isinstance(a, str):
        return repr(a)
    if isinstance(a, list):
        return "[" + ", ".join(format_arg(x) for x in a) + "]"
    if isinstance(a, tuple):
        inner = ", ".join(format_arg(x) for x in a)
        return f"({inner},)" if len(a) == 1 else f"({inner})"
    if isinstance(a, torch.dtype):
        return str(a)  # torch.float32
    if isinstance(a, torch.device):
        return f"torch.device({str(a)!r})"
    if isinstance(a, (torch.layout, torch.memory_format)):
        return str(a)  # torch.strided / torch.contiguous_format
    if isinstance(a, sympy.Expr):
        return str(a)
    raise TypeError(f"cannot print argument {a!r} of type {type(a).__name__}")


def format_call(node: Node, value_name=lambda v: f"%{v.name}") -> str:
    """``op(args..., key=value...)`` with values rendered by ``value_name``."""
    return f"{node.op}({', '.join(format_arguments(node, value_name))})"


def format_arguments(node: Node, value_name=lambda v: f"%{v.name}") -> list[str]:
    """The rendered arguments of ``node``'s call: positional ones, then ``key=value``."""
    def fmt(a):
        if isinstance(a, Value):
            return value_name(a)
        if isinstance(a, list):
            return "[" + ", ".join(fmt(x) for x in a) + "]"
        if isinstance(a, tuple):
            inner = ", ".join(fmt(x) for x in a)
            return f"({inner},)" if len(a) == 1 else f"({inner})"
        return format_arg(a)
    return [fmt(a) for a in node.args] + [f"{k}={fmt(v)}" for k, v in node.kwargs.items()]


def _bytes(v: Value) -> str:
    n = v.type.nbytes
    return format_bytes(n) if isinstance(n, int) else f"{n} B"


def format_literal(a) -> str:
    """An ``attr`` value as IR text: an int, float, bool or None as :func:`format_arg` writes it, a
    str in double quotes."""
    if isinstance(a, str):
        return '"' + "".join('\\"' if c == '"' else repr(c)[1:-1] for c in a) + '"'
    if a is None or isinstance(a, (bool, int, float)):
        return format_arg(a)
    raise TypeError(f"a graph attribute is an int, float, str, bool or None, got {type(a).__name__}")


def print_graph(graph: Graph, indent: str = "") -> str:
    """The text form of ``graph`` (see the module docstring)."""
    lines = []
    sig = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines.append(f"{indent}graph {graph.name}({sig}) {{")
    inner = indent + "  "
    for key, value in graph.attrs.items():
        lines.append(f"{inner}attr {key} = {format_literal(value)}")
    for p in graph.params:
        lines.append(f"{inner}param %{p.name}: {p.type}  # {_bytes(p)}")
    for st in graph.storages.values():
        lines.append(f"{inner}storage %{st.name} = memplan.storage({format_literal(st.tier)}, {st.nbytes})"
                     f"  # {format_bytes(st.nbytes)}")
    for node in graph.nodes:
        lines.extend(print_node(node, inner))
    lines.append(f"{inner}return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _is_view(node: Node) -> bool:
    from memplan.ir.ops import is_view
    return bool(node.inputs) and is_view(node.op)


def print_node(node: Node, indent: str = "") -> list[str]:
    outs = ", ".join(f"%{v.name}: {v.type}" + (f" {v.alloc}" if v.alloc is not None else "") for v in node.outputs)
    loc = f" loc({node.source!r}, {node.source_op!r})" if (node.source or node.source_op) else ""
    label = f" [{node.name}]" if node.outputs and node.outputs[0].name != node.name else ""
    size = " + ".join(_bytes(v) for v in node.outputs)
    if _is_view(node):
        size = f"view of %{node.inputs[0].name}"
    notes = ""
    if node.reuses is not None:
        notes += f" reuses(%{node.reuses.name})"
        size = f"in place of %{node.reuses.name}"
    if node.recomputes is not None:
        notes += f" recomputes(%{node.recomputes.name})"
    if node.scratch:
        notes += f" scratch({node.scratch})"
    line = f"{indent}{outs} = {format_call(node)}{label}{notes}{loc}"
    if node.subgraph is not None:
        body = print_graph(node.subgraph, indent).split("\n")
        return [f"{line} {body[0].strip()}  # {size}"] + body[1:]
    return [f"{line}  # {size}"]


def _graph_text(graph: Graph) -> str:
    return print_graph(graph)


# ``str(graph)`` is its text form. Installed here, where the printer lives, so that the graph module
# does not import its printer back (no import cycle); ``memplan.ir`` imports this module.
Graph.__str__ = _graph_text
