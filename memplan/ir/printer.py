"""The IR text form.

::

    graph main(%x: f32[1, 128]) {
      param %fc_weight: f32[64, 128]  # 32.00 KiB
      %t: f32[128, 64] = aten.t.default(%fc_weight) loc("fc", "aten.linear")  # 32.00 KiB
      %addmm: f32[1, 64] = aten.addmm.default(%fc_bias, %x, %t) loc("fc", "aten.linear")  # 256 B
      return %addmm
    }

Every value prints with its type; every node with its provenance
(``loc(module path or ONNX node, source op)``) and, after ``#``, its output
bytes. A node that writes its output over an input's storage (see the
``inplace`` pass) says so with ``reuses(%input)`` before its ``loc``. Arguments are Python literals with ``%name`` for values. A node that
holds a sub-graph prints it as an indented block after the call. The parser
(:mod:`memplan.ir.parser`) reads this back: ``parse(print_graph(g)) == g``.
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


def print_graph(graph: Graph, indent: str = "") -> str:
    """The text form of ``graph`` (see the module docstring)."""
    lines = []
    sig = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines.append(f"{indent}graph {graph.name}({sig}) {{")
    inner = indent + "  "
    for p in graph.params:
        lines.append(f"{inner}param %{p.name}: {p.type}  # {_bytes(p)}")
    for node in graph.nodes:
        lines.extend(print_node(node, inner))
    lines.append(f"{inner}return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _is_view(node: Node) -> bool:
    from memplan.ir.ops import is_view
    return bool(node.inputs) and is_view(node.op)


def print_node(node: Node, indent: str = "") -> list[str]:
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    loc = f" loc({node.source!r}, {node.source_op!r})" if (node.source or node.source_op) else ""
    label = f" [{node.name}]" if node.outputs and node.outputs[0].name != node.name else ""
    size = " + ".join(_bytes(v) for v in node.outputs)
    if _is_view(node):
        size = f"view of %{node.inputs[0].name}"
    reuses = ""
    if node.reuses is not None:
        reuses = f" reuses(%{node.reuses})"
        size = f"in place of %{node.reuses}"
    line = f"{indent}{outs} = {format_call(node)}{label}{reuses}{loc}"
    if node.subgraph is not None:
        body = print_graph(node.subgraph, indent).split("\n")
        return [f"{line} {body[0].strip()}  # {size}"] + body[1:]
    return [f"{line}  # {size}"]
