"""Pass ``canonicalize``: identity copies and dead code go.

- A copy that changes nothing (``aten.clone`` keeping the memory format,
  ``aten.alias``, ``aten.detach``, ``aten.lift_fresh_copy``; what eval-mode
  dropout exports as) is replaced by its input: every registered op is pure,
  so nothing can observe the missing copy, and its buffer is never planned.
  A copy that is a graph output, or that a graph output views, stays, so
  an output is fresh wherever eager's is. A graph output whose storage is a
  weight is copied (the compiled module's weights are never handed out).
- ``aten.reshape`` (which returns a view when the input's layout allows,
  and a fresh copy otherwise, so no planner could account for it) becomes
  ``aten.view`` where the eager layout allows a view, and
  ``aten.clone(memory_format=contiguous)`` + ``aten.view`` elsewhere: the
  same decomposition torch.export applies (where the view only feeds oneDNN
  convolutions, the copy is laid out so that the view comes out channels-last:
  :func:`~memplan.passes.layout.layout_copy`).
- ``aten.relu(x)`` becomes ``aten.clamp_min(x, 0)`` (the same values, NaN
  included): ``relu.out`` allocates a temporary as large as its output,
  ``clamp_min.out`` writes straight into its slot.
- A chain of elementwise ops computing a known activation of one tensor (GPT-2's
  eight-op tanh GELU) becomes that one op (:mod:`memplan.passes.activations`;
  option ``activations="off"`` keeps chains as written).
- Nodes none of whose outputs reach a graph output, and params no node
  reads, are removed.
"""
from dataclasses import dataclass
from typing import Literal

import torch

from memplan.ir.graph import PARAM, Graph
from memplan.ir.ops import lookup
from memplan.analysis.strides import eager_strides
from memplan.passes.layout import channels_last_consumers, erase_nodes, layout_copy
from memplan.passes.registry import register_pass

_IDENTITY_COPIES = {"aten.clone.default", "aten.alias.default", "aten.detach.default",
                    "aten.lift_fresh_copy.default"}


def _is_identity_copy(node) -> bool:
    if node.op not in _IDENTITY_COPIES or len(node.outputs) != 1:
        return False
    fmt = node.kwargs.get("memory_format")
    return fmt is None or str(fmt) == "torch.preserve_format"


@dataclass(frozen=True)
class CanonicalizeOptions:
    """Options of ``canonicalize``."""

    activations: Literal["auto", "off"] = "auto"  # auto: decomposed activations become one op


@register_pass("canonicalize", kind="graph", options=CanonicalizeOptions)
def canonicalize(graph: Graph, ctx) -> Graph:
    """Forward identity copies to their input; drop dead nodes and unused params."""
    outputs = output_aliases(graph)
    forwarded = []
    for node in graph.nodes:
        if node.op == "aten.relu.default" and len(node.args) == 1 and not node.kwargs:
            node.op, node.args = "aten.clamp_min.default", (node.args[0], 0)
            node.source_op = node.source_op or "aten.relu.default"
        if _is_identity_copy(node) and node.outputs[0].name not in outputs:
            graph.replace_all_uses(node.outputs[0], node.inputs[0], after=node)  # a chain of copies ends at its source
            forwarded.append(node)
    erase_nodes(graph, forwarded)
    if forwarded:
        ctx.log.append(f"canonicalize: forwarded {len(forwarded)} identity copies (clone/alias/detach)")
    _lower_reshapes(graph, ctx)
    _scalar_fills(graph, ctx)
    if ctx.options.get("activations", "auto") != "off":
        from memplan.passes.activations import recognize_activations
        made = recognize_activations(graph)
        if made:
            ops = sorted({op for _, op in made})
            ctx.log.append(f"canonicalize: {len(made)} elementwise chains are the activation they compute "
                           f"({', '.join(ops)})")
    dead = graph.eliminate_dead_code()
    needed = {v.name for n in graph.nodes for v in n.inputs} | {v.name for v in graph.outputs}
    unused = [p for p in graph.params if p.name not in needed]
    graph.params = [p for p in graph.params if p.name in needed]
    for p in unused:
        graph.weights.pop(p.name, None)
    if dead or unused:
        ctx.log.append(f"canonicalize: removed {len(dead)} dead nodes and {len(unused)} unused params")
    copied = _copy_weight_outputs(graph)
    if copied:
        ctx.log.append(f"canonicalize: {copied} graph outputs that are weights (or views of them) are copied")
    return graph


def output_aliases(graph: Graph) -> set[str]:
    """Names of the values whose storage a graph output shares: the outputs and, through chains of
    views, the values they view. A copy producing one of them makes a graph output fresh: removing
    it would hand the caller a tensor that shares memory with an input or a weight."""
    producer = {v.name: n for n in graph.nodes for v in n.outputs}
    out: set[str] = set()
    stack = [v.name for v in graph.outputs]
    while stack:
        name = stack.pop()
        if name in out:
            continue
        out.add(name)
        node = producer.get(name)
        if node is not None and node.inputs and lookup(node.op, node=node.name).view:
            stack.append(node.inputs[0].name)
    return out


def _copy_weight_outputs(graph: Graph) -> int:
    """Copy every graph output whose storage is a weight: the compiled module owns its weights, and
    a caller writing into a returned weight would change every later call's result."""
    from memplan.analysis.liveness import storage_roots
    roots = storage_roots(graph)
    kind = {v.name: v.kind for v in graph.values()}
    copied: set[str] = set()
    for v in list(graph.outputs):
        if kind[roots[v.name]] == PARAM and v.name not in copied:
            copied.add(v.name)
            (copy,) = graph.add_node("aten.clone.default", (v,), {}, [v.type], name=f"{v.name}_copy",
                                     source=v.producer.source if v.producer else "",
                                     source_op="copy of a weight returned as an output")
            # the copy is the last node: only the graph outputs read it
            graph.replace_all_uses(v, copy, after=copy.producer)
    return len(copied)


_FILLS = {"aten.full_like.default": 1, "aten.full.default": 1, "aten.zeros_like.default": None,
          "aten.ones_like.default": None}


def _scalar_fills(graph: Graph, ctx) -> None:
    """A tensor filled with one number and read only by elementwise ops whose other operands give
    the result its shape (T5's ``minimum(buckets, full_like(buckets, 15))``) becomes a ``full`` of one element with the
    same number of dims (``[1, 1]``): the same values by broadcasting, no buffer of its size, and a
    constant the next pass folds. It keeps its dims, so type promotion (which ranks 0-dim tensors
    below dimensioned ones) and masks' rank checks see what they saw."""
    from memplan.ir.ops import OpKind
    from memplan.ir.types import TensorType

    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    made = 0
    for node in list(graph.nodes):
        if node.op not in _FILLS or len(node.outputs) != 1:
            continue
        (v,) = node.outputs
        pos = _FILLS[node.op]
        value = (node.args[pos] if len(node.args) > pos else None) if pos is not None else \
            (0 if node.op == "aten.zeros_like.default" else 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or v.name in outputs or not v.type.is_static:
            continue
        readers = users[v.name]
        if not readers or not all(
                r.subgraph is None and len(r.outputs) == 1 and lookup(r.op, node=r.name).kind in
                (OpKind.ELEMENTWISE, OpKind.BROADCAST) and not lookup(r.op, node=r.name).view
                and tuple(r.outputs[0].type.shape) == tuple(v.type.shape) and _shaped_without(r, v) for r in readers):
            continue
        ones = [1] * v.type.rank
        (scalar,) = graph.add_node("aten.full.default", (ones, value), {"dtype": v.type.torch_dtype},
                                   [TensorType(v.type.dtype, tuple(ones))], name=f"{v.name}_scalar", before=node,
                                   source=node.source, source_op=node.source_op or node.op)
        graph.replace_all_uses(v, scalar)
        graph.erase_node(node)
        made += 1
    if made:
        ctx.log.append(f"canonicalize: {made} tensors filled with one number are one-element fills read by "
                       "broadcasting")


def _shaped_without(reader, fill) -> bool:
    """Do ``reader``'s other tensor operands alone broadcast to its result's shape (so the result keeps
    its shape when ``fill`` shrinks to one element: not so for ``ne(fill, 0)``)?"""
    shapes = [tuple(u.type.shape) for u in reader.inputs if u is not fill]
    try:
        return bool(shapes) and tuple(torch.broadcast_shapes(*shapes)) == tuple(reader.outputs[0].type.shape)
    except (RuntimeError, TypeError):
        return False


def _lower_reshapes(graph: Graph, ctx) -> None:
    """Replace every ``aten.reshape.default`` by a view, or a contiguous copy plus a view."""
    if not any(n.op == "aten.reshape.default" for n in graph.nodes):
        return
    strides = eager_strides(graph)
    prefer = channels_last_consumers(graph)
    copies = 0
    for node in list(graph.nodes):
        if node.op != "aten.reshape.default":
            continue
        src, shape = node.args[0], node.args[1]
        layout = torch.empty_strided([int(d) for d in src.type.shape], strides[src.name], device="meta")
        try:
            layout.view(shape)
            node.op = "aten.view.default"
        except RuntimeError:  # the layout cannot be viewed: copy first
            dense = layout_copy(graph, node, channels_last=node.name in prefer)
            node.op, node.args = "aten.view.default", (dense[-1].outputs[0], shape)
            copies += 1
    if copies:
        ctx.log.append(f"canonicalize: {copies} reshapes of non-contiguous values copy first (clone + view)")
