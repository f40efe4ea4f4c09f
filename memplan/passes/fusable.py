"""Which nodes may join a fused region: the lowest rung of TVM's lattice (elementwise and broadcast ops).

Shared by ``fuse`` (elementwise chains), the reduction groups (a row reduction's prologue) and
``attention`` (a mask recomputed per query block): one rule, one place.
"""
from __future__ import annotations

from memplan.ir.graph import Graph, Node
from memplan.ir.ops import OpKind, lookup

_KINDS = (OpKind.ELEMENTWISE, OpKind.BROADCAST)
_COPIES = {"clone", "_to_copy", "to", "lift_fresh_copy", "copy", "contiguous"}
RANDOM_OPS = ("rand", "bernoulli", "dropout", "normal", "uniform", "multinomial", "poisson", "exponential")
_NOT_TRAILING = {"prelu", "_prelu_kernel"}  # broadcast along dim 1, not by trailing alignment


def is_conversion(node: Node) -> bool:
    """Is ``node`` an ``aten._to_copy`` that only changes the dtype (an elementwise cast: T5's
    position buckets go float and back), not the layout or the device?"""
    if node.op != "aten._to_copy.default" or len(node.args) != 1 or set(node.kwargs) - {"dtype", "layout", "device"}:
        return False
    if str(node.kwargs.get("layout", "torch.strided")) != "torch.strided" or str(node.kwargs.get("device", "cpu")) != "cpu":
        return False
    return "dtype" in node.kwargs and node.outputs[0].type.dtype != node.inputs[0].type.dtype


def why_not_pointwise(node: Node) -> str | None:
    """Why ``node`` cannot be a member of an elementwise region (None: it can)."""
    if node.subgraph is not None or len(node.outputs) != 1 or node.reuses is not None:
        return "not a single-output plain op"
    opdef = lookup(node.op, node=node.name)
    short = node.op.split(".")[1] if node.op.startswith("aten.") else node.op
    if opdef.kind not in _KINDS:
        return f"{opdef.kind.value} op (only elementwise and broadcast ops fuse)"
    if opdef.view or (short in _COPIES and not is_conversion(node)):
        return "a view or a copy"
    if short in _NOT_TRAILING:
        return "its operands broadcast along dim 1, not by trailing alignment"
    if any(word in short for word in RANDOM_OPS):
        return "a random op"
    if not node.outputs[0].type.is_static or not all(v.type.is_static for v in node.inputs):
        return "symbolic shapes"
    return None


def broadcasts_to(v, shape) -> bool:
    """Does value ``v`` broadcast to ``shape`` (trailing dims aligned, each of its extent or 1)?"""
    vs = [int(d) for d in v.type.shape]
    lead = len(shape) - len(vs)
    return lead >= 0 and all(e in (1, int(shape[k + lead])) for k, e in enumerate(vs))


def epilogue_of(graph: Graph, members: list[Node], shapes: tuple, claimed: set[str], position: dict[str, int],
                window: int = 64) -> list[Node]:
    """The elementwise nodes after the last of ``members`` that compute from them, in graph order,
    searching ``window`` nodes on: a node joins when :func:`why_not_pointwise` accepts it, it is not
    ``claimed``, its result has one of ``shapes``, every input broadcasts to ``shapes[0]``, and none
    of its inputs is computed from the group outside it (a cycle). The epilogue of a matrix product
    and of a row statistic."""
    made = {v.name for m in members for v in m.outputs}
    tainted: set[str] = set()  # values computed from the group outside it
    epilogue = []
    start = max(position[m.name] for m in members) + 1
    for node in graph.nodes[start:start + window]:
        reads = {v.name for v in node.inputs}
        if not reads & (made | tainted):
            continue
        joins = (node.name not in claimed and not reads & tainted and why_not_pointwise(node) is None
                 and tuple(int(d) for d in node.outputs[0].type.shape) in shapes
                 and all(broadcasts_to(v, shapes[0]) for v in node.inputs))
        if joins:
            epilogue.append(node)
            made.update(v.name for v in node.outputs)
        else:
            tainted.update(v.name for v in node.outputs)
    return epilogue
