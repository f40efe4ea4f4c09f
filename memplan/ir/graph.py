"""The dataflow IR: values, nodes and graphs.

A :class:`Graph` is a list of :class:`Node` s in a valid (topological) order
over SSA :class:`Value` s. Every node names an op of the registry
(:mod:`memplan.ir.ops`) and carries its call arguments the way torch.fx does:
``args``/``kwargs`` hold Values where tensors go and plain Python data
(ints, floats, lists, dtypes) elsewhere. A node may hold a sub-graph (a fused
group, a tiled loop), so every pass sees one uniform structure.

Weights (parameters, buffers, ONNX initializers) are values of kind
``param``; their data lives in ``Graph.weights`` and is not part of the text
form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from memplan.ir.types import TensorType

INPUT, PARAM, NODE = "input", "param", "node"


@dataclass(eq=False)
class Value:
    """One SSA tensor value. ``kind`` is ``input``, ``param`` or ``node`` (produced by a node)."""

    name: str
    type: TensorType
    kind: str = NODE
    producer: "Node | None" = field(default=None, repr=False)

    @property
    def nbytes(self):
        return self.type.nbytes

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One op application.

    ``op`` is a registry name (``aten.addmm.default``, ``memplan.fused``);
    ``source`` traces the node to the model: the module path or ONNX node
    name, and ``source_op`` the op it came from in the source model.
    ``reuses`` names the input whose storage the (single) output overwrites in
    place (set by the ``inplace`` pass; None: the output has storage of its own).
    """

    name: str
    op: str
    args: tuple
    kwargs: dict[str, Any]
    outputs: tuple[Value, ...]
    source: str = ""
    source_op: str = ""
    subgraph: "Graph | None" = None
    reuses: str | None = None

    @property
    def inputs(self) -> list[Value]:
        """The tensor values this node reads, in argument order (duplicates kept)."""
        return list(iter_values((self.args, self.kwargs)))

    def __repr__(self) -> str:
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"<Node {self.name}: {outs} = {self.op}>"


def iter_leaves(obj) -> Iterator[Any]:
    """Every leaf (a Value, or plain data other than lists, tuples and dicts) of a nested
    structure of args, in order."""
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from iter_leaves(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from iter_leaves(item)
    else:
        yield obj


def iter_values(obj) -> Iterator[Value]:
    """Every :class:`Value` inside a nested structure of args, in order."""
    return (leaf for leaf in iter_leaves(obj) if isinstance(leaf, Value))


def map_values(obj, fn):
    """Rebuild a nested args structure with every Value replaced by ``fn(value)``."""
    if isinstance(obj, Value):
        return fn(obj)
    if isinstance(obj, list):
        return [map_values(item, fn) for item in obj]
    if isinstance(obj, tuple):
        return tuple(map_values(item, fn) for item in obj)
    if isinstance(obj, dict):
        return {k: map_values(v, fn) for k, v in obj.items()}
    return obj


class Graph:
    """A dataflow graph: inputs, params (weights), nodes in order, outputs.

    >>> from memplan.ir import Graph, TensorType
    >>> g = Graph("tiny")
    >>> x = g.add_input("x", TensorType("f32", (2, 3)))
    >>> (y,) = g.add_node("aten.relu.default", (x,), {}, [TensorType("f32", (2, 3))])
    >>> g.outputs = [y]
    >>> print(g)  # doctest: +NORMALIZE_WHITESPACE
    graph tiny(%x: f32[2, 3]) {
      %relu: f32[2, 3] = aten.relu.default(%x)  # 24 B
      return %relu
    }
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.params: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.weights: dict[str, torch.Tensor] = {}
        self._names: set[str] = set()

    # ---- construction -------------------------------------------------
    def fresh_name(self, hint: str) -> str:
        """A value/node name not used yet in this graph, derived from ``hint``."""
        base = "".join(c if (c.isalnum() or c in "_.") else "_" for c in hint).strip(".") or "v"
        if base[0].isdigit():
            base = "v" + base
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.fresh_name(name), type, INPUT)
        self.inputs.append(value)
        return value

    def add_param(self, name: str, type: TensorType, data: torch.Tensor | None = None) -> Value:
        value = Value(self.fresh_name(name), type, PARAM)
        self.params.append(value)
        if data is not None:
            self.weights[value.name] = data
        return value

    def add_node(self, op: str, args: tuple, kwargs: dict, out_types: list[TensorType], *,
                 name: str | None = None, source: str = "", source_op: str = "",
                 subgraph: "Graph | None" = None, out_names: list[str] | None = None) -> tuple[Value, ...]:
        """Append a node and return its output values (one per entry of ``out_types``)."""
        short = op.split(".")[1] if op.count(".") >= 1 else op
        node_name = self.fresh_name(name or short)
        outputs = []
        for i, t in enumerate(out_types):
            hint = out_names[i] if out_names else (node_name if i == 0 else f"{node_name}_o{i}")
            vname = node_name if (i == 0 and not out_names) else self.fresh_name(hint)
            outputs.append(Value(vname, t, NODE))
        node = Node(node_name, op, tuple(args), dict(kwargs), tuple(outputs), source, source_op, subgraph)
        for v in outputs:
            v.producer = node
        self.nodes.append(node)
        return node.outputs

    # ---- queries --------------------------------------------------------
    def values(self) -> Iterator[Value]:
        """Every value: inputs, params, then node outputs in order."""
        yield from self.inputs
        yield from self.params
        for node in self.nodes:
            yield from node.outputs

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def users(self) -> dict[str, list[Node]]:
        """value name -> nodes reading it (in graph order, once per node)."""
        out: dict[str, list[Node]] = {v.name: [] for v in self.values()}
        for node in self.nodes:
            seen = set()
            for v in node.inputs:
                if v.name not in seen:
                    out[v.name].append(node)
                    seen.add(v.name)
        return out

    def __str__(self) -> str:
        from memplan.ir.printer import print_graph
        return print_graph(self)

    def __eq__(self, other) -> bool:
        """Structural equality (names, types, ops, args, provenance, sub-graphs); weights' data
        is not compared."""
        if not isinstance(other, Graph):
            return NotImplemented
        return _structure(self) == _structure(other)

    __hash__ = None  # mutable


def _structure(g: Graph):
    def arg(a):
        return map_values(a, lambda v: ("%", v.name, str(v.type)))
    return (
        g.name,
        [(v.name, str(v.type)) for v in g.inputs],
        [(v.name, str(v.type)) for v in g.params],
        [(n.name, n.op, arg(n.args), arg(n.kwargs), [(v.name, str(v.type)) for v in n.outputs],
          n.source, n.source_op, _structure(n.subgraph) if n.subgraph is not None else None, n.reuses)
         for n in g.nodes],
        [v.name for v in g.outputs],
    )
