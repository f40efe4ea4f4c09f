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

A *planned* graph holds the whole plan (see ``docs/planned-ir.md``): the order
of ``Graph.nodes`` is the schedule; ``Graph.storages`` are the static buffers,
one per memory tier; every value that owns bytes has an :class:`Alloc` (a slot
in a storage, its own allocation, or kernel-owned); every type names its
memory space; ``Node.scratch`` declares the bytes a kernel needs beyond its
outputs; ``Node.recomputes`` marks a clone that recomputes a value; and
``Graph.attrs`` records the target's tier capacities and the memory budget
the plan was made for. Passes change graphs through the rewrite API
(:meth:`Graph.insert_node`, :meth:`Graph.replace_all_uses`,
:meth:`Graph.erase_node`, :meth:`Graph.clone_node`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from memplan.ir.types import TensorType

INPUT, PARAM, NODE = "input", "param", "node"
SLOT, OWN, KERNEL = "slot", "own", "kernel"


@dataclass(frozen=True)
class Alloc:
    """Where the bytes of a value live in a planned graph.

    - ``slot``: at byte ``offset`` of storage ``storage`` (a static buffer of one tier), laid out
      with ``strides`` (elements); printed ``slot(%storage_dram, 1024, [3, 1])``;
    - ``own``: a buffer of its own, allocated by the emitted code with ``strides`` just before the
      producing kernel writes it (graph outputs: they are handed to the caller); ``own([3, 1])``;
    - ``kernel``: kernel-owned: the kernel allocates its result itself (an op with no copy-free
      ``out=`` form); it lives from its step to its last use and is never copied; ``kernel``.
    """

    kind: str
    storage: str = ""
    offset: int = 0
    strides: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in (SLOT, OWN, KERNEL):
            raise ValueError(f"allocation kind must be slot, own or kernel, got {self.kind!r}")
        if self.strides is not None:
            object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))

    def __str__(self) -> str:
        strides = "[" + ", ".join(map(str, self.strides or ())) + "]"
        if self.kind == SLOT:
            return f"slot(%{self.storage}, {self.offset}, {strides})"
        if self.kind == OWN:
            return f"own({strides})"
        return "kernel"


@dataclass(eq=False)
class Storage:
    """A static buffer of ``nbytes`` bytes in memory tier ``tier``, allocated for the whole run;
    values with a ``slot`` allocation live inside it. Printed
    ``storage %storage_dram = memplan.storage("dram", 4096)``."""

    name: str
    tier: str
    nbytes: int


@dataclass(eq=False)
class Value:
    """One SSA tensor value. ``kind`` is ``input``, ``param`` or ``node`` (produced by a node)."""

    name: str
    type: TensorType
    kind: str = NODE
    producer: "Node | None" = field(default=None, repr=False)
    alloc: Alloc | None = None

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
    ``reuses`` is the input whose storage the (single) output overwrites in
    place (set by the ``inplace`` pass; None: the output has storage of its own).
    ``recomputes`` is the value this node computes again (a clone made by a
    recomputation pass: same op and arguments, a new output). ``scratch`` is
    the bytes its kernel allocates beyond its outputs during its step, as the
    backend declared them (part of the planned peak).
    """

    name: str
    op: str
    args: tuple
    kwargs: dict[str, Any]
    outputs: tuple[Value, ...]
    source: str = ""
    source_op: str = ""
    subgraph: "Graph | None" = None
    reuses: "Value | None" = None
    recomputes: "Value | None" = None
    scratch: int = 0

    @property
    def inputs(self) -> list[Value]:
        """The tensor values this node reads, in argument order (duplicates kept)."""
        out: list = []
        _leaves_into(self.args, out)
        _leaves_into(self.kwargs, out)
        return [leaf for leaf in out if isinstance(leaf, Value)]

    def __repr__(self) -> str:
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"<Node {self.name}: {outs} = {self.op}>"


def iter_leaves(obj) -> Iterator[Any]:
    """Every leaf (a Value, or plain data other than lists, tuples and dicts) of a nested
    structure of args, in order."""
    out: list = []
    _leaves_into(obj, out)
    return iter(out)


def _leaves_into(obj, out: list) -> None:
    # one list filled by plain recursion: generators nested per level cost a call per leaf and
    # per level, and every pass asks for a node's inputs many times
    if isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, (list, tuple, dict)):
                _leaves_into(item, out)
            else:
                out.append(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            if isinstance(item, (list, tuple, dict)):
                _leaves_into(item, out)
            else:
                out.append(item)
    else:
        out.append(obj)


def iter_values(obj) -> Iterator[Value]:
    """Every :class:`Value` inside a nested structure of args, in order."""
    out: list = []
    _leaves_into(obj, out)
    return iter([leaf for leaf in out if isinstance(leaf, Value)])


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
        self.storages: dict[str, Storage] = {}
        self.attrs: dict[str, Any] = {}
        self._names: set[str] = set()
        self._next_suffix: dict[str, int] = {}

    # ---- construction -------------------------------------------------
    def copy(self) -> "Graph":
        """A structural copy (nodes, values, bodies, allocations) sharing the weight tensors."""
        import copy as _copy
        memo = {id(t): t for t in self.weights.values()}
        return _copy.deepcopy(self, memo)

    def fresh_name(self, hint: str) -> str:
        """A value/node name not used yet in this graph, derived from ``hint``."""
        base = "".join(c if (c.isalnum() or c in "_.") else "_" for c in hint).strip(".") or "v"
        if base[0].isdigit():
            base = "v" + base
        name, i = base, self._next_suffix.get(base, 1)
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._next_suffix[base] = i  # the next call with this hint starts here: linear, not quadratic
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
                 subgraph: "Graph | None" = None, out_names: list[str] | None = None,
                 before: "Node | None" = None, after: "Node | None" = None) -> tuple[Value, ...]:
        """Create a node and return its output values (one per entry of ``out_types``).

        The node goes at the end, or just ``before`` / ``after`` a node of this graph."""
        node = self.make_node(op, args, kwargs, out_types, name=name, source=source, source_op=source_op,
                              subgraph=subgraph, out_names=out_names)
        if before is not None:
            self.insert_node(node, before=before)
        elif after is not None:
            self.insert_node(node, after=after)
        else:
            self.nodes.append(node)
        return node.outputs

    def make_node(self, op: str, args: tuple, kwargs: dict, out_types: list[TensorType], *,
                  name: str | None = None, source: str = "", source_op: str = "",
                  subgraph: "Graph | None" = None, out_names: list[str] | None = None) -> Node:
        """A node with fresh names whose outputs name it as producer, not yet in ``nodes``
        (place it with :meth:`insert_node`)."""
        short = op.split(".")[1] if op.count(".") >= 1 else op
        node_name = self.fresh_name(name or short)
        outputs = []
        for i, t in enumerate(out_types):
            hint = out_names[i] if out_names else (node_name if i == 0 else f"{node_name}_o{i}")
            first = i == 0 and (not out_names or out_names[0] == name)
            vname = node_name if first else self.fresh_name(hint)
            outputs.append(Value(vname, t, NODE))
        node = Node(node_name, op, tuple(args), dict(kwargs), tuple(outputs), source, source_op, subgraph)
        for v in outputs:
            v.producer = node
        return node

    def add_storage(self, tier: str, nbytes: int, name: str | None = None) -> Storage:
        """Declare a static buffer of ``nbytes`` bytes in tier ``tier``."""
        storage = Storage(self.fresh_name(name or f"storage_{tier}"), tier, int(nbytes))
        self.storages[storage.name] = storage
        return storage

    # ---- rewriting ------------------------------------------------------
    def _position(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise KeyError(f"node {node.name} is not in graph {self.name}")

    def insert_node(self, node: Node, *, before: "Node | None" = None, after: "Node | None" = None) -> Node:
        """Put ``node`` (made by :meth:`make_node` or taken out by :meth:`erase_node`) just
        ``before`` or ``after`` a node of this graph (at the end if neither is given)."""
        if before is not None and after is not None:
            raise ValueError("insert_node takes before or after, not both")
        if before is not None:
            self.nodes.insert(self._position(before), node)
        elif after is not None:
            self.nodes.insert(self._position(after) + 1, node)
        else:
            self.nodes.append(node)
        self._names.add(node.name)
        for v in node.outputs:
            self._names.add(v.name)
        return node

    def replace_all_uses(self, old: Value, new: Value, *, after: "Node | None" = None,
                         keep: "Node | None" = None) -> int:
        """Make every reader of ``old`` read ``new`` instead (arguments, ``reuses``, graph outputs);
        with ``after``, only readers placed after that node; ``keep`` is a node left as it is.
        Returns the number of nodes changed."""
        start = self._position(after) + 1 if after is not None else 0
        changed = 0
        swap = (lambda v: new if v is old else v)
        for node in self.nodes[start:]:
            if node is keep or node is new.producer:
                continue
            if any(v is old for v in node.inputs):
                node.args = map_values(node.args, swap)
                node.kwargs = map_values(node.kwargs, swap)
                if node.reuses is old:
                    node.reuses = new
                changed += 1
        self.outputs = [new if v is old else v for v in self.outputs]
        return changed

    def erase_node(self, node: Node) -> Node:
        """Take ``node`` out of the graph; its outputs must have no readers left."""
        readers = [n.name for n in self.nodes if n is not node and any(v.producer is node for v in n.inputs)]
        if readers or any(v.producer is node for v in self.outputs):
            raise ValueError(f"cannot erase node {node.name}: its outputs are still read "
                             f"({', '.join(readers[:3]) or 'graph outputs'})")
        self.nodes.pop(self._position(node))
        return node

    def erase_nodes(self, nodes) -> None:
        """Take ``nodes`` out at once: :meth:`erase_node` for many nodes, with the same check (no node
        that stays and no graph output may read an output they produce) made in one pass over the
        graph instead of one per node (erasing one by one is quadratic)."""
        gone = {id(n): n for n in nodes}
        if not gone:
            return
        missing = set(gone) - {id(n) for n in self.nodes}
        if missing:
            raise KeyError(f"node {gone[next(iter(missing))].name} is not in graph {self.name}")
        made = {id(v): n for n in gone.values() for v in n.outputs if v.producer is n}
        kept = []
        for n in self.nodes:
            if id(n) in gone:
                continue
            read = next((v for v in n.inputs if id(v) in made), None)
            if read is not None:
                raise ValueError(f"cannot erase node {made[id(read)].name}: its outputs are still read ({n.name})")
            kept.append(n)
        read = next((v for v in self.outputs if id(v) in made), None)
        if read is not None:
            raise ValueError(f"cannot erase node {made[id(read)].name}: its outputs are still read (graph outputs)")
        self.nodes = kept

    def eliminate_dead_code(self) -> list[Node]:
        """Take out every node none of whose outputs reaches a graph output (every op is pure);
        return them. Params stay (the caller decides about unused weights)."""
        needed = {v.name for v in self.outputs}
        dead = []
        for node in reversed(self.nodes):
            if any(v.name in needed for v in node.outputs):
                needed.update(v.name for v in node.inputs)
            else:
                dead.append(node)
        self.erase_nodes(dead)
        return dead

    def replace_node(self, old: Node, new: Node) -> Node:
        """Put ``new`` where ``old`` was: every reader of ``old``'s outputs reads ``new``'s (same
        count), and ``old`` leaves the graph."""
        if len(old.outputs) != len(new.outputs):
            raise ValueError(f"node {new.name} has {len(new.outputs)} outputs, {old.name} has {len(old.outputs)}")
        self.insert_node(new, before=old)
        for a, b in zip(old.outputs, new.outputs):
            self.replace_all_uses(a, b)
        return self.erase_node(old)

    def clone_node(self, node: Node, *, suffix: str = "r", recompute: bool = True,
                   before: "Node | None" = None, after: "Node | None" = None) -> Node:
        """A copy of ``node`` (same op, arguments and provenance; new outputs named
        ``<name>.<suffix>1``, ...), placed ``before``/``after`` a node (default: at the end). With
        ``recompute``, the clone records which value it recomputes (``recomputes(%x)``)."""
        out_names = [self._numbered(f"{v.name}.{suffix}") for v in node.outputs]
        clone = self.make_node(node.op, node.args, dict(node.kwargs), [v.type for v in node.outputs],
                               name=out_names[0], source=node.source, source_op=node.source_op,
                               subgraph=node.subgraph, out_names=out_names)
        if recompute:
            clone.recomputes = node.outputs[0]
        self.insert_node(clone, before=before, after=after)
        return clone

    def _numbered(self, base: str) -> str:
        i = 1
        while f"{base}{i}" in self._names:
            i += 1
        return f"{base}{i}"

    def reorder(self, order: list[Node]) -> None:
        """Make ``order`` (the same nodes, permuted) the order of the graph: the schedule."""
        if len(order) != len(self.nodes) or {id(n) for n in order} != {id(n) for n in self.nodes}:
            raise ValueError(f"reorder of graph {self.name}: the order must hold each node exactly once")
        self.nodes = list(order)

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
    def name(v):
        return None if v is None else v.name
    return (
        g.name,
        sorted((k, repr(v)) for k, v in g.attrs.items()),
        [(v.name, str(v.type)) for v in g.inputs],
        [(v.name, str(v.type)) for v in g.params],
        [(s.name, s.tier, s.nbytes) for s in g.storages.values()],
        [(n.name, n.op, arg(n.args), arg(n.kwargs), [(v.name, str(v.type), str(v.alloc)) for v in n.outputs],
          n.source, n.source_op, _structure(n.subgraph) if n.subgraph is not None else None, name(n.reuses),
          name(n.recomputes), n.scratch)
         for n in g.nodes],
        [v.name for v in g.outputs],
    )
