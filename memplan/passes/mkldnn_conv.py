"""Pass ``mkldnn_conv``: 2-D convolutions run by oneDNN in channels-last layout, relu fused.

On this CPU, ``aten.convolution`` on NCHW tensors reorders its input into a
blocked layout on every call (scratch as large as the input: 12 MiB for one
VGG layer at 224×224) and its ``out=`` form computes into a temporary and
copies (as large again). In channels-last layout oneDNN reads and writes the
tensors as they are, and ``mkldnn._convolution_pointwise_`` writes into a
given buffer; with weights prepacked once for the planned input size
(:mod:`memplan.backends.mkldnn`) a convolution needs no scratch at all and
runs faster. Measured on this host (64→64 channels, 3×3, 224×224): scratch
24.6 MiB → 0.01 MiB, 107 → 70 ms.

The pass rewrites every eligible ``aten.convolution`` (2-D, not transposed,
float32, static shapes, weights a param) into ``memplan.mkldnn_conv2d`` and
folds a ``relu`` that is its output's only reader into it. A 1-D convolution
(speech encoders' front ends) is first lifted to a 2-D one over a height of 1
(``unsqueeze``, the weight as ``[O, I, 1, K]``, ``squeeze``): aten's 1-D
convolution has no copy-free ``out=`` form and allocates twice its output
inside (measured: 6.1 MB for a 3 MB result), the channels-last oneDNN one
writes into its slot with 12 KB of scratch and runs 1.5-2x faster. A
convolution whose input is not channels-last reads a channels-last copy
(oneDNN would otherwise reorder it inside, as scratch, and its functional form
would return a layout the plan does not expect), and an op whose CPU kernel
refuses a layout that is neither contiguous nor channels-last
(``native_group_norm``) reads a contiguous copy. The op's output is
channels-last, and layouts propagate: elementwise ops, pooling and
concatenation keep it (the strides are found as eager finds them,
:func:`~memplan.analysis.strides.eager_strides`). A ``view`` the new layout
cannot serve becomes a contiguous copy plus a view, and a graph output whose
layout changed is copied back to the layout eager returns, so callers see no
difference. Option ``conv_kernel``: ``"mkldnn"`` (default where oneDNN is
available) or ``"aten"`` (leave convolutions alone; ``lower_conv`` then
decides about them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from memplan.backends.pytorch_ops import MKLDNN_CONV2D, MKLDNN_CONV2D_ADD, MKLDNN_CONVS
from memplan.ir.graph import INPUT, NODE, PARAM, Graph, Node, Value
from memplan.ir.types import TensorType
from memplan.analysis.strides import FakeRun, cache_strides, eager_strides, same_layout
from memplan.passes.layout import (PLAIN_VIEWS, channels_last_consumers, channels_last_order, copy_to_layout,
                                   erase_nodes, layout_copy)
from memplan.passes.registry import register_pass

CONV = "aten.convolution.default"
_RELU = {"aten.relu.default", "aten.clamp_min.default"}
ADD = "aten.add.Tensor"


def available() -> bool:
    """True when this torch build can run oneDNN convolutions on the CPU."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")


def _eligible(node: Node, graph: Graph) -> bool:
    if node.op != CONV or len(node.args) < 9 or node.kwargs:
        return False
    x, w, _b, _stride, _padding, dilation, transposed, out_pad, _groups = node.args[:9]
    if transposed or any(out_pad) or x.type.rank != 4 or not x.type.is_static:
        return False
    if x.type.dtype != "f32" or w.type.dtype != "f32" or w.kind != PARAM or w.name not in graph.weights:
        return False
    return all(isinstance(d, int) for d in dilation)


def _liftable(node: Node, graph: Graph) -> bool:
    """A 1-D convolution :func:`_lift_1d` can run as a 2-D oneDNN one."""
    if node.op != CONV or len(node.args) < 9 or node.kwargs:
        return False
    x, w, _b, stride, padding, dilation, transposed, out_pad, _groups = node.args[:9]
    return not (transposed or any(out_pad) or x.type.rank != 3 or not x.type.is_static or x.type.dtype != "f32"
                or w.type.dtype != "f32" or w.kind != PARAM or w.name not in graph.weights or len(stride) != 1
                or len(padding) != 1 or len(dilation) != 1
                or not all(isinstance(d, int) for d in (*stride, *padding, *dilation)))


def _lift_1d(graph: Graph) -> int:
    """Rewrite each 1-D convolution oneDNN can run (float32, static, not transposed, weights a
    param) as a 2-D one over a height of 1: ``unsqueeze(x, 2)``, the convolution with its weight
    lifted to ``[O, I, 1, K]`` (a new param, shared by the convolutions reading the same weight),
    then ``squeeze(y, 2)`` in the place of the original node, which keeps its output and readers.
    aten's 1-D convolution has no copy-free ``out=`` form (its result would be kernel-owned, never
    in the arena); the 2-D oneDNN one writes into its slot. Returns how many were lifted."""
    lifted: dict[str, Value] = {}
    count = 0
    for node in list(graph.nodes):
        if not _liftable(node, graph):
            continue
        x, w, b, stride, padding, dilation, transposed, out_pad, groups = node.args[:9]
        y = node.outputs[0]
        if w.name not in lifted:
            o, i, k = w.type.shape
            lifted[w.name] = graph.add_param(f"{w.name}_2d", TensorType(w.type.dtype, (o, i, 1, k)),
                                             graph.weights[w.name].unsqueeze(2))
        n, c, length = x.type.shape
        where = {"source": node.source, "source_op": node.source_op}
        (x4,) = graph.add_node("aten.unsqueeze.default", (x, 2), {}, [TensorType(x.type.dtype, (n, c, 1, length))],
                               name=f"{node.name}_2d_input", before=node, **where)
        (y4,) = graph.add_node(CONV, (x4, lifted[w.name], b, [1, stride[0]], [0, padding[0]], [1, dilation[0]],
                                      False, [0, 0], groups),
                               {}, [TensorType(y.type.dtype, (y.type.shape[0], y.type.shape[1], 1, y.type.shape[2]))],
                               name=f"{node.name}_2d", before=node, **where)
        node.op, node.args, node.kwargs = "aten.squeeze.dim", (y4, 2), {}
        count += 1
    return count


def _sole_reader(v, users: dict, outputs: set[str]) -> Node | None:
    readers = users[v.name]
    return readers[0] if v.name not in outputs and len(readers) == 1 else None


def _fusable_relu(v, users: dict, outputs: set[str]) -> Node | None:
    """The relu that is the only reader of ``v``, if any."""
    r = _sole_reader(v, users, outputs)
    if r is None or r.op not in _RELU or r.kwargs or r.args[0] is not v:
        return None
    if r.op == "aten.clamp_min.default" and (len(r.args) != 2 or r.args[1] != 0):
        return None
    return r


def _fusable_add(v, users: dict, outputs: set[str]):
    """(the add that is the only reader of ``v``, its other operand) for ``v + other`` of one type."""
    a = _sole_reader(v, users, outputs)
    if a is None or a.op != ADD or a.kwargs or len(a.args) != 2:
        return None, None
    other = a.args[1] if a.args[0] is v else a.args[0]
    if not isinstance(other, Value) or other is v or other.type != v.type or other.kind == PARAM:
        return None, None  # a weight as the residual may be the prepacked (opaque) one
    return a, other


def rewrite_convolutions(graph: Graph) -> tuple[int, int, int]:
    """Rewrite eligible convolutions in place; return (convolutions, relus fused, adds fused)."""
    if any(n.op.startswith("aten.as_strided") for n in graph.nodes):
        return 0, 0, 0  # raw-stride views would read a changed layout wrongly
    if not any(_eligible(n, graph) or _liftable(n, graph) for n in graph.nodes):
        return 0, 0, 0
    before = eager_strides(graph)  # the layouts eager gives (graph outputs are returned in them)
    _lift_1d(graph)
    targets = [n for n in graph.nodes if _eligible(n, graph)]
    if not targets:
        return 0, 0, 0
    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    absorbed: dict[str, Node] = {}  # add/relu node name -> the convolution that absorbs it
    moved: dict[str, Node] = {}  # add node name -> the fused convolution that takes its place
    relus = adds = 0
    for node in targets:
        x, w, b, stride, padding, dilation, _t, _op, groups = node.args[:9]
        args = (x, w, b, list(stride), list(padding), list(dilation), groups)
        node.op = MKLDNN_CONV2D
        y = node.outputs[0]
        add, other = _fusable_add(y, users, outputs)
        if add is not None and add.name not in absorbed:  # conv + residual: oneDNN adds into the residual's buffer
            node.op = MKLDNN_CONV2D_ADD
            args = (*args, other)
            absorbed[add.name] = moved[add.name] = node
            node.source_op = f"{node.source_op} + {add.source_op or add.op}"
            y = add.outputs[0]
            adds += 1
        relu = _fusable_relu(y, users, outputs)
        if relu is not None:
            absorbed[relu.name] = node
            y = relu.outputs[0]
            node.source_op = f"{node.source_op} + {relu.source_op or relu.op}"
            relus += 1
        node.outputs = (y,)
        y.producer = node
        node.args = (*args, "relu" if relu is not None else "none")
    # a convolution that absorbed an add runs where the add ran (after the add's other operand exists)
    fused = set(moved.values())
    order = []
    for n in graph.nodes:
        if n.name in moved:
            order.append(moved[n.name])
        if n not in fused:
            order.append(n)
    graph.reorder(order)
    # the absorbed relus and adds go: their results are the convolutions' outputs now
    erase_nodes(graph, [n for n in graph.nodes if n.name in absorbed])
    _inputs_channels_last(graph)
    _relayout_copies(graph)
    _repair_layouts(graph, before)
    return len(targets), relus, adds


def _inputs_channels_last(graph: Graph) -> None:
    """Copy each graph input that convolutions read once into a channels-last buffer, just before
    the first of them. oneDNN would reorder an NCHW input inside the kernel, as scratch outside
    the arena on every call; as a planned copy it is a buffer of the arena, which packs it with
    whatever else is live then."""
    copies: dict[str, Value] = {}
    for n in list(graph.nodes):
        x = n.args[0] if n.op in MKLDNN_CONVS else None
        if x is not None and x.kind == INPUT and x.type.rank == 4:
            if x.name not in copies:
                (copies[x.name],) = graph.add_node(
                    "aten.clone.default", (x,), {"memory_format": torch.channels_last}, [x.type],
                    name=f"{x.name}_channels_last", source=n.source, source_op=n.source_op, before=n)
            n.args = (copies[x.name], *n.args[1:])  # only convolutions read the copy


def _relayout_copies(graph: Graph) -> None:
    """A contiguous copy whose one reader is a view that only convolutions read (how torch.export
    decomposes a reshape no layout can view, as in a channel shuffle) is laid out instead so that
    the view comes out channels-last (:func:`~memplan.passes.layout.layout_copy`)."""
    prefer = channels_last_consumers(graph)
    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    for n in list(graph.nodes):
        readers = users.get(n.outputs[0].name, []) if len(n.outputs) == 1 else []
        if (n.op == "aten.clone.default" and str(n.kwargs.get("memory_format")) == "torch.contiguous_format"
                and len(readers) == 1 and readers[0].name in prefer and readers[0].op in PLAIN_VIEWS
                and n.outputs[0].name not in outputs and channels_last_order(readers[0]) is not None):
            copies = layout_copy(graph, readers[0], channels_last=True, src=n.args[0], before=n)
            graph.replace_all_uses(n.outputs[0], copies[-1].outputs[0], after=n)
            graph.erase_node(n)


def repair_view_layouts(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Give every plain ``view`` whose input's layout cannot serve it (a pass changed that layout) a
    copy of its input, inserted just before it (:func:`~memplan.passes.layout.layout_copy`; laid
    out so that the view comes out channels-last where only oneDNN convolutions read it). Returns
    the eager strides of the repaired graph (:func:`~memplan.analysis.strides.eager_strides`, which
    this run also caches): the graph runs on fake tensors once, each copy as it is inserted."""
    prefer = channels_last_consumers(graph)
    with FakeRun(graph) as run:
        for node in list(graph.nodes):
            layout = None
            if node.op in _DENSE_INPUT_OPS and not _dense_for_kernel(run.meta[node.args[0].name]):
                layout = torch.contiguous_format
            elif node.op in MKLDNN_CONVS and not _channels_last(run.meta[node.args[0].name]):
                # oneDNN would reorder it inside, as scratch, and its functional form would return
                # a contiguous result where the plan expects channels-last: copy it first instead
                layout = torch.channels_last
            if layout is not None:
                (dense,) = graph.add_node("aten.clone.default", (node.args[0],), {"memory_format": layout},
                                          [node.args[0].type], name=f"{node.name}_{_LAYOUT_NAMES[layout]}",
                                          before=node, source=node.source, source_op=node.source_op)
                run.run(dense.producer)
                node.args = (dense, *node.args[1:])
            try:
                run.run(node)
            except (RuntimeError, ValueError):
                if node.op not in PLAIN_VIEWS:
                    raise
                copies = layout_copy(graph, node, node.name in prefer)
                for copy in copies:
                    run.run(copy)
                node.args = (copies[-1].outputs[0], *node.args[1:])
                run.run(node)
    strides = run.strides()
    cache_strides(graph, strides)
    return strides


# ops whose CPU kernel refuses an input laid out neither contiguous nor channels-last (fake tensors
# accept it): a (N, C, L) result of a lifted 1-D convolution, channels-last, must be copied first
_DENSE_INPUT_OPS = {"aten.native_group_norm.default"}


_LAYOUT_NAMES = {torch.contiguous_format: "contiguous", torch.channels_last: "channels_last"}


def _laid_out(meta: tuple, *formats) -> bool:
    """Is a value of this (dtype, sizes, strides, offset) laid out in one of ``formats`` (channels-last
    formats counting only at the rank they are defined for)?"""
    _dtype, shape, strides, _offset = meta
    rank = {torch.channels_last: 4, torch.channels_last_3d: 5}
    probe = torch.empty_strided(shape, strides, device="meta")
    return any(rank.get(f, len(shape)) == len(shape) and probe.is_contiguous(memory_format=f) for f in formats)


def _channels_last(meta: tuple) -> bool:
    return _laid_out(meta, torch.channels_last)


def _dense_for_kernel(meta: tuple) -> bool:
    """Contiguous for its kernel: row-major, or channels-last in 4-D or 5-D (what
    ``suggest_memory_format`` accepts)."""
    return _laid_out(meta, torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def _repair_layouts(graph: Graph, before: dict) -> None:
    """Views the channels-last layout cannot serve copy first (:func:`repair_view_layouts`); graph
    outputs keep eager's layout: an output whose strides changed is copied into eager's
    (:func:`~memplan.passes.layout.copy_to_layout`, at the end of the graph)."""
    after = repair_view_layouts(graph)
    done: set[str] = set()
    for v in list(graph.outputs):
        shape = [int(d) for d in v.type.shape] if v.type.is_static else None
        if (v.name not in done and shape is not None and v.kind == NODE and before.get(v.name) is not None
                and not same_layout(shape, after.get(v.name), before[v.name])):
            done.add(v.name)
            nodes = copy_to_layout(graph, v, before[v.name], name=f"{v.name}_eager_layout")
            # only the graph outputs read the copy: no node runs after it
            graph.replace_all_uses(v, nodes[-1].outputs[0], after=nodes[-1])


@dataclass(frozen=True)
class MkldnnConvOptions:
    """Options of ``mkldnn_conv``."""

    conv_kernel: Literal["mkldnn", "aten"] = "mkldnn"  # oneDNN channels-last convolutions, or aten's


@register_pass("mkldnn_conv", options=MkldnnConvOptions, produces=("kernels",))
def mkldnn_conv(graph, ctx):
    """Run 1-D and 2-D convolutions by oneDNN in channels-last layout, relus fused (``memplan.mkldnn_conv2d``)."""
    kernel = ctx.options.get("conv_kernel", "mkldnn")
    if kernel not in ("mkldnn", "aten"):
        from memplan.errors import MemplanError
        raise MemplanError(f"option conv_kernel must be 'mkldnn' or 'aten', got {kernel!r}")
    if kernel == "mkldnn" and available():
        convs, relus, adds = rewrite_convolutions(graph)
        if convs:
            ctx.log.append(f"mkldnn_conv: {convs} convolutions run by oneDNN in channels-last layout, "
                           f"{adds} residual adds and {relus} relus fused")
    return graph
