"""Layout rewrites: insert the copies a view or a graph output needs when a pass changed a layout.

:func:`layout_copy` and :func:`copy_to_layout` place their nodes in the graph
through its rewrite API and return them. The strides they reason about come
from the analysis :mod:`memplan.analysis.strides`.
"""
from __future__ import annotations

import torch

from memplan.ir.graph import Graph, Node
from memplan.backends.pytorch_ops import MKLDNN_CONVS
from memplan.ir.types import TensorType

PLAIN_VIEWS = {"aten.view.default", "aten._unsafe_view.default"}


def erase_nodes(graph: Graph, nodes) -> None:
    """Take ``nodes`` out of ``graph`` at once (:meth:`Graph.erase_nodes`)."""
    graph.erase_nodes(nodes)


def channels_last_consumers(graph: Graph) -> frozenset[str]:
    """Names of the nodes whose one output is read only as the input of oneDNN convolutions."""
    users = graph.users()
    return frozenset(n.name for n in graph.nodes if len(n.outputs) == 1 and users.get(n.outputs[0].name)
                     and all(r.op in MKLDNN_CONVS and r.args[0] is n.outputs[0] for r in users[n.outputs[0].name]))


def channels_last_order(view) -> list[int] | None:
    """The dims of ``view``'s input from outermost to innermost in a dense layout that ``view``
    turns into a channels-last 4-D result, or None if there is none (or it is the contiguous one)."""
    src, out = view.args[0], view.outputs[0]
    if out.type.rank != 4 or not (src.type.is_static and out.type.is_static):
        return None
    n, c, h, w = (int(d) for d in out.type.shape)
    target = torch.empty_strided((n, c, h, w), (h * w * c, 1, w * c, c), device="meta")
    try:
        laid = target.view([int(d) for d in src.type.shape])
    except RuntimeError:
        return None
    # size-1 dims have no stride worth the name: keep them outermost, in order
    order = sorted(range(src.type.rank), key=lambda d: (src.type.shape[d] != 1, -laid.stride(d), d))
    return None if order == sorted(order) else order  # None too where plain contiguous already serves


def layout_copy(graph: Graph, view, channels_last: bool = False, src=None, *, before: Node | None = None) -> list:
    """Insert into ``graph``, just ``before`` a node (default: ``view``), the nodes that copy ``src``
    (default: the input of ``view``, a view or reshape its input's layout cannot serve) into a dense
    buffer ``view`` can serve, and return them (the last one's output is the copy): contiguous, or
    with ``channels_last``, laid out so that the 4-D result of ``view`` comes out channels-last
    where such a layout exists (a permute, a contiguous copy, the inverse permute). A oneDNN
    convolution reading the result then needs no reorder of its input on every call. ``view``
    still reads ``src``: the caller points it at the copy."""
    src = view.args[0] if src is None else src
    before = view if before is None else before
    order = channels_last_order(view) if channels_last else None
    where = {"source": view.source, "source_op": view.source_op}
    contiguous = {"memory_format": torch.contiguous_format}
    if order is None:
        (dense,) = graph.add_node("aten.clone.default", (src,), contiguous, [src.type],
                                  name=f"{view.name}_contiguous", before=before, **where)
        return [dense.producer]
    shape = [src.type.shape[d] for d in order]
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    (ordered,) = graph.add_node("aten.permute.default", (src, order), {}, [TensorType(src.type.dtype, shape)],
                                name=f"{view.name}_order", before=before, **where)
    (dense,) = graph.add_node("aten.clone.default", (ordered,), contiguous, [ordered.type],
                              name=f"{view.name}_channels_last", before=before, **where)
    (laid,) = graph.add_node("aten.permute.default", (dense, inverse), {}, [src.type], name=f"{view.name}_laid_out",
                             before=before, **where)
    return [ordered.producer, dense.producer, laid.producer]


def copy_to_layout(graph: Graph, value, strides, *, name: str, before: Node | None = None,
                   after: Node | None = None) -> list:
    """Insert into ``graph`` (just ``before`` / ``after`` a node; default: at the end) the nodes that
    copy ``value`` into a fresh buffer whose strides are ``strides`` where those lay the value out
    densely (a permuted contiguous layout, as eager gives most results), else dense in the same
    order of dims, and return them (the last one's output is the copy): a permute into that order,
    a contiguous copy, the inverse permute. Readers of ``value`` still read it."""
    shape = [int(d) for d in value.type.shape]
    order = sorted(range(len(shape)), key=lambda d: (shape[d] != 1, -strides[d], d))
    place = {"before": before, "after": after}
    where = {"source": value.producer.source if value.producer else "",
             "source_op": value.producer.source_op if value.producer else ""}
    contiguous = {"memory_format": torch.contiguous_format}
    if order == sorted(order):
        (copy,) = graph.add_node("aten.clone.default", (value,), contiguous, [value.type], name=name, **place, **where)
        return [copy.producer]
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    nodes = []
    (ordered,) = graph.add_node("aten.permute.default", (value, order), {},
                                [TensorType(value.type.dtype, [shape[d] for d in order])], name=f"{name}_order",
                                **place, **where)
    nodes.append(ordered.producer)
    (dense,) = graph.add_node("aten.clone.default", (ordered,), contiguous, [ordered.type], name=f"{name}_copy",
                              after=nodes[-1], **where)
    nodes.append(dense.producer)
    (laid,) = graph.add_node("aten.permute.default", (dense, inverse), {}, [value.type], name=name,
                             after=nodes[-1], **where)
    nodes.append(laid.producer)
    return nodes
