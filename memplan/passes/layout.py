"""Strides eager PyTorch gives each value, found by running the graph on fake tensors.

The IR types carry shapes, not strides, but later view ops in a captured
graph rely on the strides eager produced (``permute`` then ``view`` only works
on the layout the exporter saw). A planned slot must therefore have those
strides. ``FakeTensorMode`` reproduces the CPU kernels' output strides without
computing anything (meta kernels alone do not: fused attention differs).
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from memplan.ir.graph import Graph, map_values
from memplan.ir.custom_ops import MKLDNN_CONVS
from memplan.ir.ops import flatten_outputs, lookup
from memplan.ir.types import TensorType


PLAIN_VIEWS = {"aten.view.default", "aten._unsafe_view.default"}


def eager_strides(graph: Graph, *, repair_views: bool = False) -> dict[str, tuple[int, ...]]:
    """value name -> strides of that value when the graph runs eagerly on the CPU.

    ``repair_views``: a ``view`` whose input's layout cannot serve it (a pass changed that
    layout) gets a copy of its input inserted before it, in ``graph`` itself
    (:func:`layout_copy`).
    """
    prefer = channels_last_consumers(graph) if repair_views else frozenset()
    strides: dict[str, tuple[int, ...]] = {}
    nodes = []
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        env = {}
        for v in graph.inputs:
            env[v.name] = torch.empty(tuple(int(d) for d in v.type.shape), dtype=v.type.torch_dtype)
        for v in graph.params:
            data = graph.weights.get(v.name)
            env[v.name] = (mode.from_tensor(data) if data is not None else
                           torch.empty(tuple(int(d) for d in v.type.shape), dtype=v.type.torch_dtype))

        def run(node):
            args = map_values(node.args, lambda v: env[v.name])
            kwargs = map_values(node.kwargs, lambda v: env[v.name])
            results = flatten_outputs(lookup(node.op, node=node.name).impl(*args, **kwargs))
            for v, t in zip(node.outputs, results):
                env[v.name] = t

        for node in list(graph.nodes):
            try:
                run(node)
            except (RuntimeError, ValueError):
                if not (repair_views and node.op in PLAIN_VIEWS):
                    raise
                copies = layout_copy(graph, node, node.name in prefer)
                for copy in copies:
                    run(copy)
                nodes.extend(copies)
                node.args = (copies[-1].outputs[0], *node.args[1:])
                run(node)
            nodes.append(node)
    graph.nodes = nodes
    for name, t in env.items():
        strides[name] = tuple(t.stride())
    return strides


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


def layout_copy(graph: Graph, view, channels_last: bool = False, src=None) -> list:
    """The nodes (not yet in ``graph.nodes``) that copy ``src`` (default: the input of ``view``, a
    view or reshape its input's layout cannot serve) into a dense buffer ``view`` can serve:
    contiguous, or with ``channels_last``, laid out so that the 4-D result of ``view`` comes out
    channels-last where such a layout exists (a permute, a contiguous copy, the inverse permute).
    A oneDNN convolution reading the result then needs no reorder of its input on every call."""
    src = view.args[0] if src is None else src
    order = channels_last_order(view) if channels_last else None
    where = {"source": view.source, "source_op": view.source_op}
    contiguous = {"memory_format": torch.contiguous_format}
    if order is None:
        (dense,) = graph.add_node("aten.clone.default", (src,), contiguous, [src.type],
                                  name=f"{view.name}_contiguous", **where)
        return [graph.nodes.pop()]
    shape = [src.type.shape[d] for d in order]
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    (ordered,) = graph.add_node("aten.permute.default", (src, order), {}, [TensorType(src.type.dtype, shape)],
                                name=f"{view.name}_order", **where)
    (dense,) = graph.add_node("aten.clone.default", (ordered,), contiguous, [ordered.type],
                              name=f"{view.name}_channels_last", **where)
    graph.add_node("aten.permute.default", (dense, inverse), {}, [src.type], name=f"{view.name}_laid_out", **where)
    copies = graph.nodes[-3:]
    del graph.nodes[-3:]
    return copies


def is_dense(shape, strides) -> bool:
    """True when ``strides`` lay ``shape`` out on exactly ``numel`` elements (a permuted contiguous layout)."""
    dims = sorted((s, d) for d, s in zip(shape, strides) if d != 1)
    expected = 1
    for s, d in dims:
        if s != expected:
            return False
        expected *= d
    return True


def contiguous_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= max(int(d), 1)
    return tuple(reversed(out))


def slot_strides(shape, eager: tuple[int, ...] | None) -> tuple[int, ...]:
    """The strides a planned slot gets: eager's where they lay the value out densely, else contiguous."""
    shape = [int(d) for d in shape]
    if eager is None or any(d == 0 for d in shape) or not is_dense(shape, eager):
        return contiguous_strides(shape)
    return tuple(eager)


def same_layout(shape, a, b) -> bool:
    """True when strides ``a`` and ``b`` address ``shape`` alike (strides of size-1 dims do not matter)."""
    if a is None or b is None:
        return a == b
    return all(x == y for d, x, y in zip(shape, a, b) if int(d) != 1)


def copy_to_layout(graph: Graph, value, strides, *, name: str) -> list:
    """The nodes (not yet in ``graph.nodes``) that copy ``value`` into a fresh buffer whose strides
    are ``strides`` where those lay the value out densely (a permuted contiguous layout, as eager
    gives most results), else dense in the same order of dims: a permute into that order, a
    contiguous copy, the inverse permute."""
    shape = [int(d) for d in value.type.shape]
    order = sorted(range(len(shape)), key=lambda d: (shape[d] != 1, -strides[d], d))
    where = {"source": value.producer.source if value.producer else "",
             "source_op": value.producer.source_op if value.producer else ""}
    contiguous = {"memory_format": torch.contiguous_format}
    if order == sorted(order):
        graph.add_node("aten.clone.default", (value,), contiguous, [value.type], name=name, **where)
        return [graph.nodes.pop()]
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    (ordered,) = graph.add_node("aten.permute.default", (value, order), {},
                                [TensorType(value.type.dtype, [shape[d] for d in order])], name=f"{name}_order", **where)
    (dense,) = graph.add_node("aten.clone.default", (ordered,), contiguous, [ordered.type], name=f"{name}_copy", **where)
    graph.add_node("aten.permute.default", (dense, inverse), {}, [value.type], name=name, **where)
    nodes = graph.nodes[-3:]
    del graph.nodes[-3:]
    return nodes
