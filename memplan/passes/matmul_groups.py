"""A matrix product with its elementwise epilogue as one region, for backends that run a region as one kernel.

TVM's lattice calls a matmul *out-elementwise-fusable*: an elementwise consumer of its result
(bias, activation, residual add, a gate's product) can be computed on each output tile while it is
still in registers. On a ``one_kernel_regions`` backend (Triton) such a region is one launch: the
product's tiles are accumulated, the epilogue runs on them, and only the results read outside are
stored; the product itself never takes memory unless someone else reads it. Inductor on the CPU
calls an extern GEMM and runs the epilogue as a kernel of its own; memplan's Triton backend does
both in one.

A group: an ``aten.mm`` or ``aten.addmm`` of 2-D operands with static shapes, then optionally views
of its result to ``[*lead, N]`` (the rows split, as ``nn.Linear`` on a batch gives them), then the
elementwise and broadcast nodes of that shape that read the group, walking forward in graph order
(:func:`memplan.passes.fusable.why_not_pointwise` decides who may join); a node joins only when
none of its other inputs is computed from the group outside it (no cycle), and every input
broadcasts to the epilogue's shape. A product with no epilogue stays an aten call.
"""
from __future__ import annotations

import math

from memplan.ir.graph import Graph, Node
from memplan.passes.fusable import epilogue_of

MATMULS = frozenset({"aten.mm.default", "aten.addmm.default"})
_FLOATS = frozenset({"f32", "f16", "bf16"})



def _row_view(node: Node, rows: int, cols: int) -> bool:
    """Is ``node`` a view of a row-major ``[rows, cols]`` value as ``[*lead, cols]`` (the rows split)?"""
    if node.op not in ("aten.view.default", "aten._unsafe_view.default", "aten.unsqueeze.default"):
        return False
    shape = [int(d) for d in node.outputs[0].type.shape]
    return bool(shape) and shape[-1] == cols and math.prod(shape[:-1]) == rows


def matmul_anchor(node: Node) -> str | None:
    """Why ``node`` cannot anchor a matmul group (None: it can)."""
    if node.op not in MATMULS:
        return "not a matrix product"
    a, b = (node.args[0], node.args[1]) if node.op == "aten.mm.default" else (node.args[1], node.args[2])
    if a.type.rank != 2 or b.type.rank != 2 or not all(v.type.is_static for v in node.inputs):
        return "operands not 2-D with static shapes"
    if node.outputs[0].type.dtype not in _FLOATS or any(v.type.dtype != node.outputs[0].type.dtype for v in node.inputs):
        return "not a floating-point product of one dtype"
    if node.op == "aten.addmm.default":
        extra = {k: v for k, v in node.kwargs.items() if k in ("beta", "alpha")}
        if len(node.args) > 3 or any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in extra.values()):
            return "addmm with beta/alpha not plain numbers"
    return None


def find_matmul_groups(graph: Graph, explain: dict[str, str] | None = None,
                       claimed: set[str] | None = None) -> list[list[Node]]:
    """Groups (the product, its views, its epilogue, in graph order) of matrix products with an
    elementwise epilogue; ``claimed``: names of nodes already in a region (they never join)."""
    explain = {} if explain is None else explain
    claimed = set() if claimed is None else claimed
    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    groups = []
    for mm in graph.nodes:
        if mm.name in claimed or matmul_anchor(mm) is not None:
            continue
        rows, cols = (int(d) for d in mm.outputs[0].type.shape)
        members = [mm]
        current = mm.outputs[0]
        while True:  # the views splitting the rows: only this group reads the product through them
            readers = users[current.name]
            if len(readers) != 1 or current.name in outputs or not _row_view(readers[0], rows, cols) \
                    or readers[0].name in claimed:
                break
            members.append(readers[0])
            current = readers[0].outputs[0]
        shape = tuple(int(d) for d in current.type.shape)
        epilogue = epilogue_of(graph, members, (shape,), claimed, position)
        if not epilogue:
            explain.setdefault(mm.name, "a matrix product with no elementwise epilogue (it stays an aten call)")
            continue
        group = members + epilogue
        claimed.update(n.name for n in group)
        groups.append(group)
    return groups

