"""Modelled time of a graph on a target: the roofline cost of each kernel plus its launch.

Each kernel takes ``max(flops / peak FLOP/s, bytes moved / bandwidth) + launch overhead``
(:meth:`~memplan.target.HardwareSpec.roofline_seconds`): it reads its inputs and writes its outputs
once. Views cost nothing. A region costs what its backend makes of it:

- one kernel (``one_kernel_regions`` backends, Triton): the body's flops, and the bytes of the
  region's boundary only; its intermediates stay in registers;
- a loop run step by step (the PyTorch backend): every body kernel once per trip, each on one tile,
  plus the copy of each trip's results into the output buffers.

Passes use it to choose between plans of equal peak (a fusion that saves traffic on a GPU, a loop
whose launches cost time on the CPU); the Plan reports it.
"""
from __future__ import annotations

from memplan.ir.graph import Graph, Node
from memplan.ir.ops import lookup
from memplan.ir.regions import GROUP


def _kernel_seconds(node: Node, target) -> float:
    opdef = lookup(node.op, node=node.name)
    if opdef.view:
        return 0.0
    dtype = node.outputs[0].type.torch_dtype if node.outputs else None
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return target.roofline_seconds(opdef.flop_count(node), opdef.bytes_moved(node), name)


def node_seconds(node: Node, target, one_kernel_regions: bool = False) -> float:
    """Modelled seconds of one step of a graph."""
    if node.subgraph is None:
        return _kernel_seconds(node, target)
    body = node.subgraph
    trips = 1 if node.op == GROUP else int(node.kwargs.get("trips", 1))
    if one_kernel_regions:
        flops = trips * sum(lookup(n.op, node=n.name).flop_count(n) for n in body.nodes if n.subgraph is None)
        moved = sum(v.nbytes for v in dict.fromkeys(node.inputs)) + sum(v.nbytes for v in node.outputs)
        return target.roofline_seconds(flops, moved)
    per_trip = sum(node_seconds(n, target) for n in body.nodes)
    copies = 0.0 if node.op == GROUP else sum(target.roofline_seconds(0, 2 * v.nbytes) for v in body.outputs)
    return trips * (per_trip + copies)


def modelled_seconds(graph: Graph, target, one_kernel_regions: bool = False) -> float:
    """Modelled seconds of running ``graph`` once on ``target`` (see the module docstring)."""
    return sum(node_seconds(n, target, one_kernel_regions) for n in graph.nodes)
