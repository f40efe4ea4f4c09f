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
from dataclasses import dataclass
from typing import Literal

import torch

from memplan.ir.graph import PARAM, Graph, Node
from memplan.ir.types import TensorType
from memplan.passes.registry import register_pass

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
    """Lower ``node`` in ``graph``: insert the column buffer and GEMM nodes just before it, and make
    ``node`` itself the view of the GEMM's result (same name, same output value: its readers are
    unchanged). Returns the inserted nodes (:func:`restore` undoes the lowering)."""
    x, w, b, stride, padding, dilation = node.args[:6]
    y = node.outputs[0]
    cout, cin, kh, kw = w.type.shape
    hw = math.prod(y.type.shape[2:])
    dt = x.type.dtype
    common = dict(source=node.source, source_op=node.source_op or node.op, before=node)
    inserted = []

    def add(op, args, t, name):
        (out,) = graph.add_node(op, args, {}, [t], name=f"{node.name}_{name}", **common)
        inserted.append(out.producer)
        return out

    if _pointwise(node) and _viewable(x, strides, [cin, hw]):
        cols = add("aten.view.default", (x, [cin, hw]), TensorType(dt, (cin, hw)), "cols")
    else:
        cols3 = add("aten.im2col.default", (x, [kh, kw], list(dilation), list(padding), list(stride)),
                    TensorType(dt, (1, cin * kh * kw, hw)), "im2col")
        cols = add("aten.view.default", (cols3, [cin * kh * kw, hw]), TensorType(dt, (cin * kh * kw, hw)), "cols")
    w2 = add("aten.view.default", (w, [cout, cin * kh * kw]), TensorType(dt, (cout, cin * kh * kw)), "w")
    if b is not None:
        b2 = add("aten.view.default", (b, [cout, 1]), TensorType(b.type.dtype, (cout, 1)), "b")
        y2 = add("aten.addmm.default", (b2, w2, cols), TensorType(dt, (cout, hw)), "gemm")
    else:
        y2 = add("aten.mm.default", (w2, cols), TensorType(dt, (cout, hw)), "gemm")
    node.source_op = node.source_op or node.op
    node.op, node.args, node.kwargs = "aten.view.default", (y2, list(y.type.shape)), {}
    return inserted


def restore(graph: Graph, node: Node, inserted: list[Node], saved: tuple) -> None:
    """Undo :func:`lower_one`: ``node`` gets back ``saved`` (its op, args, kwargs and source_op
    before the lowering) and the inserted nodes go."""
    node.op, node.args, node.kwargs, node.source_op = saved
    for n in reversed(inserted):  # readers first
        graph.erase_node(n)


def _viewable(x, strides, shape) -> bool:
    layout = torch.empty_strided([int(d) for d in x.type.shape], strides[x.name], device="meta")
    try:
        layout.view(shape)
        return True
    except RuntimeError:
        return False


def slotted_scratch(graph: Graph, options: dict) -> tuple[dict[str, int], dict[str, str]]:
    """Measured scratch of each node with its results in slots wherever the PyTorch kernels can write
    into given buffers, and those allocation kinds."""
    from memplan.analysis.planning import OWN, SLOT, storage_kinds
    from memplan.backends.pytorch import PyTorchBackend

    backend = PyTorchBackend()
    kinds = storage_kinds(graph, backend.writes_into)
    return backend.scratch(graph, {v for v, k in kinds.items() if k in (SLOT, OWN)}, options), kinds


def planned_peak(graph: Graph, options: dict) -> int:
    """Quick planned peak: best heuristic order, greedy storage, measured scratch."""
    from memplan.analysis.planning import schedule_problem
    from memplan.passes.allocate import quick_planned_peak
    from memplan.solvers.scheduling import solve_schedule

    temps, kinds = slotted_scratch(graph, options)
    result = solve_schedule(schedule_problem(graph, temps), method="heuristic")
    order = [graph.nodes[i].name for i in result.order]
    return quick_planned_peak(graph, order, temps, kinds)[0]


@dataclass(frozen=True)
class LowerConvOptions:
    """Options of ``lower_conv``."""

    conv_lowering: Literal["auto", "always", "never"] = "auto"  # im2col + GEMM: where it plans lower, always, never
    measure_scratch: bool = True
    scratch_measure_cap: int | None = None


@register_pass("lower_conv", options=LowerConvOptions, produces=("kernels",))
def lower_conv(graph: Graph, ctx) -> Graph:
    """Lower convolutions to im2col + GEMM where that lowers the planned peak (see module docstring)."""
    from memplan.analysis.strides import eager_strides

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
            lower_one(graph, node, strides)
            lowered.append(node.name)
    else:
        scratch, _kinds = slotted_scratch(graph, ctx.options)
        rest = []
        for node in candidates:  # never worse: the workspace replaces at least as much scratch
            if workspace_bytes(node) <= scratch.get(node.name, 0):
                lower_one(graph, node, strides)
                lowered.append(node.name)
            else:
                rest.append(node)
        if rest and ctx.options.get("measure_scratch", True):
            best = planned_peak(graph, ctx.options)
            for node in sorted(rest, key=lambda n: -scratch.get(n.name, 0)):
                saved = (node.op, node.args, node.kwargs, node.source_op)
                inserted = lower_one(graph, node, strides)
                trial = planned_peak(graph, ctx.options)
                if trial < best:
                    best = trial
                    lowered.append(node.name)
                else:
                    restore(graph, node, inserted, saved)
                    break
    if lowered:
        ctx.log.append(f"lower_conv: {len(lowered)} of {len(candidates)} convolutions run as im2col + GEMM "
                       "(workspace planned in the arena)")
    return graph
