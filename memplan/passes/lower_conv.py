"""Pass ``lower_conv``: convolutions as im2col + GEMM, so their workspace is planned.

A oneDNN convolution reorders its input and weights into blocked layouts on
every call: up to 9.5 MiB of scratch for one of ResNet-50's 512×512×3×3
convolutions. Scratch comes on top of the static arena, so it sets the
planned peak of CNNs. Written as

    cols = im2col(x)                  # [Cin·kh·kw, Hout·Wout], an arena buffer
    y    = addmm(bias, W.view(Cout, -1), cols).view(1, Cout, Hout, Wout)

the workspace (``cols``; nothing at all for a 1×1, stride-1 convolution) is an
ordinary buffer the allocator packs into the arena next to dead buffers, and
the kernels need no scratch of their own.

Mode ``options["conv_lowering"]``: ``"never"``; ``"always"`` (every eligible
convolution); ``"auto"`` (default): first every convolution whose workspace is
no larger than its measured oneDNN scratch, then, largest scratch first, each
further one as long as the planned peak (heuristic order, greedy arena) goes
down. Eligible: 2-D, batch 1, not transposed, one group, weights a contiguous
param. Early 3×3 layers run slower lowered (im2col is memory bound), so
``"auto"`` only lowers them when the peak needs it.
"""
from __future__ import annotations

import math

import torch

from memplan.ir.graph import PARAM, Graph, Node
from memplan.ir.types import TensorType
from memplan.passes.manager import register_pass

CONV = "aten.convolution.default"


def _eligible(node: Node, graph: Graph) -> bool:
    if node.op != CONV or len(node.args) < 9:
        return False
    x, w, _b, _stride, _padding, dilation, transposed, _out_pad, groups = node.args[:9]
    if transposed or groups != 1 or x.type.rank != 4 or x.type.shape[0] != 1 or not x.type.is_static:
        return False
    if w.kind != PARAM or w.name not in graph.weights or not graph.weights[w.name].is_contiguous():
        return False
    return all(isinstance(d, int) for d in dilation)


def _pointwise(node: Node) -> bool:
    x, w, _b, stride, padding, dilation = node.args[:6]
    return tuple(w.type.shape[2:]) == (1, 1) and list(stride) == [1, 1] and list(padding) == [0, 0] \
        and x.type.is_static


def workspace_bytes(node: Node) -> int:
    """Bytes of the column buffer the lowered form needs (0 for 1×1, stride-1 convolutions)."""
    if _pointwise(node):
        return 0
    x, w, y = node.args[0], node.args[1], node.outputs[0]
    cin, kh, kw = w.type.shape[1:]
    return cin * kh * kw * math.prod(y.type.shape[2:]) * x.type.torch_dtype.itemsize


def lower_one(graph: Graph, node: Node, strides: dict) -> list[Node]:
    """The nodes that replace ``node`` (its output value is kept, now produced by a view)."""
    x, w, b, stride, padding, dilation = node.args[:6]
    y = node.outputs[0]
    cout, cin, kh, kw = w.type.shape
    hw = math.prod(y.type.shape[2:])
    dt = x.type.dtype
    start = len(graph.nodes)
    common = dict(source=node.source, source_op=node.source_op or node.op)
    viewable = _pointwise(node) and _viewable(x, strides, [cin, hw])
    if viewable:
        (cols,) = graph.add_node("aten.view.default", (x, [cin, hw]), {}, [TensorType(dt, (cin, hw))],
                                 name=f"{node.name}_cols", **common)
    else:
        (cols3,) = graph.add_node("aten.im2col.default", (x, [kh, kw], list(dilation), list(padding), list(stride)),
                                  {}, [TensorType(dt, (1, cin * kh * kw, hw))], name=f"{node.name}_im2col", **common)
        (cols,) = graph.add_node("aten.view.default", (cols3, [cin * kh * kw, hw]), {},
                                 [TensorType(dt, (cin * kh * kw, hw))], name=f"{node.name}_cols", **common)
    (w2,) = graph.add_node("aten.view.default", (w, [cout, cin * kh * kw]), {}, [TensorType(dt, (cout, cin * kh * kw))],
                           name=f"{node.name}_w", **common)
    if b is not None:
        (b2,) = graph.add_node("aten.view.default", (b, [cout, 1]), {}, [TensorType(b.type.dtype, (cout, 1))],
                               name=f"{node.name}_b", **common)
        (y2,) = graph.add_node("aten.addmm.default", (b2, w2, cols), {}, [TensorType(dt, (cout, hw))],
                               name=f"{node.name}_gemm", **common)
    else:
        (y2,) = graph.add_node("aten.mm.default", (w2, cols), {}, [TensorType(dt, (cout, hw))],
                               name=f"{node.name}_gemm", **common)
    new = graph.nodes[start:]
    del graph.nodes[start:]
    final = Node(node.name, "aten.view.default", (y2, list(y.type.shape)), {}, (y,), node.source,
                 node.source_op or node.op)
    y.producer = final
    return new + [final]


def _viewable(x, strides, shape) -> bool:
    layout = torch.empty_strided([int(d) for d in x.type.shape], strides[x.name], device="meta")
    try:
        layout.view(shape)
        return True
    except RuntimeError:
        return False


def _replace(graph: Graph, node: Node, replacement: list[Node]) -> None:
    i = graph.nodes.index(node)
    graph.nodes[i:i + 1] = replacement


def _restore(graph: Graph, node: Node, replacement: list[Node]) -> None:
    i = graph.nodes.index(replacement[0])
    graph.nodes[i:i + len(replacement)] = [node]
    node.outputs[0].producer = node


def planned_peak(graph: Graph, options: dict) -> int:
    """Quick planned peak: best heuristic order, greedy arena, measured scratch."""
    from memplan.passes.allocate import quick_planned_peak
    from memplan.passes.schedule import schedule_problem
    from memplan.passes.scratch import step_scratch
    from memplan.solvers.scheduling import solve_schedule

    temps = step_scratch(graph, options)
    result = solve_schedule(schedule_problem(graph, temps), method="heuristic")
    return quick_planned_peak(graph, [graph.nodes[i].name for i in result.order], temps)[0]


@register_pass("lower_conv", kind="graph")
def lower_conv(graph: Graph, ctx) -> Graph:
    """Lower convolutions to im2col + GEMM where that lowers the planned peak (see module docstring)."""
    from memplan.passes.layout import eager_strides
    from memplan.passes.scratch import step_scratch

    mode = ctx.options.get("conv_lowering", "auto")
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"conv_lowering must be 'auto', 'always' or 'never', got {mode!r}")
    candidates = [n for n in graph.nodes if _eligible(n, graph)]
    if mode == "never" or not candidates:
        return graph
    strides = eager_strides(graph)
    lowered = []
    if mode == "always":
        for node in candidates:
            _replace(graph, node, lower_one(graph, node, strides))
            lowered.append(node.name)
    else:
        scratch = step_scratch(graph, ctx.options)
        rest = []
        for node in candidates:  # never worse: the workspace replaces at least as much scratch
            if workspace_bytes(node) <= scratch.get(node.name, 0):
                _replace(graph, node, lower_one(graph, node, strides))
                lowered.append(node.name)
            else:
                rest.append(node)
        if rest and ctx.options.get("measure_scratch", True):
            best = planned_peak(graph, ctx.options)
            for node in sorted(rest, key=lambda n: -scratch.get(n.name, 0)):
                replacement = lower_one(graph, node, strides)
                _replace(graph, node, replacement)
                trial = planned_peak(graph, ctx.options)
                if trial < best:
                    best = trial
                    lowered.append(node.name)
                else:
                    _restore(graph, node, replacement)
                    break
    if lowered:
        ctx.log.append(f"lower_conv: {len(lowered)} of {len(candidates)} convolutions run as im2col + GEMM "
                       "(workspace planned in the arena)")
    return graph
