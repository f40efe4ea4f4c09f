"""A concatenation read only by a pointwise region joins it, for backends that run a region as one kernel.

Llama's rotary embedding computes ``q * cos + rotate_half(q) * sin`` with ``rotate_half(q) =
cat([-q[..., h:], q[..., :h]], -1)``: the ``neg`` and the ``cat`` are a launch each and a buffer
each before the elementwise chain reads the result once. A kernel can read a concatenation where
it lies: element ``i`` along the concatenated dim comes from the operand whose range holds ``i``,
at ``i`` minus that range's start (Inductor's pointwise kernels index a ``cat`` so). So on a
``one_kernel_regions`` backend a ``cat`` whose only reader is an elementwise region, concatenating
along a dim the region does not tile, moves into the region's body, with the elementwise node that
makes each of its operands where that node has no other reader (``neg``); their inputs become the
region's inputs. The region reads the slices of ``q`` through their strides and writes the rotated
result: one launch for what was three.
"""
from __future__ import annotations

from memplan.ir.graph import Graph, Node, Value, map_values
from memplan.ir.regions import LOOP, loop_spec
from memplan.ir.types import TensorType
from memplan.passes.fusable import why_not_pointwise

CAT = "aten.cat.default"


def _slicing(v: Value, tile_dim: int, rank: int, extent: int, rows: int):
    """How a new region input ``v`` is cut per trip (the region tiles dim ``tile_dim`` of ``rank``
    dims, ``extent`` long, ``rows`` per trip), or None where ``v`` is neither tiled nor broadcast."""
    k = tile_dim - (rank - v.type.rank)
    if k < 0 or int(v.type.shape[k]) == 1:
        return ["full"], v.type
    if int(v.type.shape[k]) != extent:
        return None
    shape = list(v.type.shape)
    shape[k] = rows
    return ["slice", k, rows, rows], TensorType(v.type.dtype, tuple(shape))


def _tile(v: Value, tile_dim: int, rank: int, rows: int) -> TensorType:
    """The type of one trip's tile of body-made ``v`` (its dim standing for ``tile_dim`` cut to ``rows``)."""
    k = tile_dim - (rank - v.type.rank)
    if k < 0 or int(v.type.shape[k]) == 1:
        return v.type
    shape = list(v.type.shape)
    shape[k] = rows
    return TensorType(v.type.dtype, tuple(shape))


def absorb_concats(graph: Graph, loop: Node) -> int:
    """Move each ``cat`` read only by elementwise region ``loop`` (a ``memplan.loop`` of ``fuse``)
    into its body, with the single-reader elementwise producers of its operands; return how many."""
    if loop.op != LOOP or loop.subgraph is None or len(loop.outputs) < 1:
        return 0
    spec = loop_spec(loop)
    dims = {c.dim for c in spec.outputs if c.kind == "concat"}
    if len(dims) != 1 or len(spec.outputs) != len(loop.outputs) or any(c.kind != "concat" for c in spec.outputs):
        return 0
    shape = [int(d) for d in loop.outputs[0].type.shape]
    rank = len(shape)
    (tile_dim,) = dims
    tile_dim %= rank
    extent, rows = shape[tile_dim], shape[tile_dim] // spec.trips
    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    body = loop.subgraph
    moved = 0
    for outer, inner, slicing in list(zip(loop.args, body.inputs, loop.kwargs["inputs"])):
        cat = outer.producer
        if cat is None or cat.op != CAT or len(users[outer.name]) != 1 or outer.name in outputs \
                or outer.type.rank != rank or not outer.type.is_static:
            continue
        operands = cat.args[0]
        dim = (cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)) % rank
        if dim == tile_dim or not isinstance(operands, (list, tuple)) or len(operands) < 2 or \
                any(not isinstance(u, Value) or u.type.rank != rank or u.type.dtype != outer.type.dtype
                    for u in operands):
            continue
        taken = []  # the elementwise producers of operands that move in with the cat
        for u in operands:
            q = u.producer
            if q is not None and len(users[u.name]) == 1 and u.name not in outputs and why_not_pointwise(q) is None \
                    and all(tuple(w.type.shape) == tuple(u.type.shape) for w in q.inputs):
                taken.append(q)
        leaves = list(dict.fromkeys(
            [w for q in taken for w in q.inputs] + [u for u in operands if u.producer not in taken]))
        cuts = [_slicing(w, tile_dim, rank, extent, rows) for w in leaves]
        if any(c is None for c in cuts):
            continue
        env = {}
        args, slicings = list(loop.args), list(loop.kwargs["inputs"])
        for w, (cut, tile_type) in zip(leaves, cuts):
            env[w.name] = body.add_input(w.name, tile_type)
            args.append(w)
            slicings.append(cut)
        made = []
        for q in taken:
            clone = body.make_node(q.op, map_values(q.args, lambda v: env[v.name]),
                                   map_values(q.kwargs, lambda v: env[v.name]),
                                   [_tile(q.outputs[0], tile_dim, rank, rows)], name=q.name, source=q.source,
                                   source_op=q.source_op)
            env[q.outputs[0].name] = clone.outputs[0]
            made.append(clone)
        node = body.make_node(CAT, ([env[u.name] for u in operands], dim), {}, [inner.type], name=cat.name,
                              source=cat.source, source_op=cat.source_op)
        made.append(node)
        body.nodes[:0] = made
        body.replace_all_uses(inner, node.outputs[0])
        position = body.inputs.index(inner)
        del body.inputs[position], args[position], slicings[position]
        loop.args, loop.kwargs = tuple(args), dict(loop.kwargs, inputs=slicings)
        loop.source_op = " + ".join([*(q.source_op or q.op.split(".")[1] for q in taken), "cat", loop.source_op])
        graph.erase_nodes([cat, *taken])
        users = graph.users()
        moved += 1
    return moved
