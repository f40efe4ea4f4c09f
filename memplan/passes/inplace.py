"""Pass ``inplace``: an elementwise op writes its result over an input that dies with it.

``y = relu(conv(x))``: run functionally, the convolution's output and the
relu's are live at once, twice the bytes eager PyTorch needs with
``ReLU(inplace=True)``. Captured graphs are functional (torch.export
functionalises ``relu_``; ONNX has no in-place ops), so memplan decides it
again, statically: node ``n`` may overwrite input ``x`` when

- ``n`` is elementwise or broadcast (each output element depends only on the
  input elements at the same index: aten's ``out=`` kernels allow ``out`` to
  be exactly an input), has one output, and is not a copy (``clone``,
  ``_to_copy``: those exist to get a buffer of their own); or ``n`` is an op
  listed in ``OpDef.inplace_args`` and ``x`` one of the inputs listed
  there (a convolution plus residual adds into the residual's buffer);
- the output has ``x``'s type and the layout eager gives it equals ``x``'s,
  which is dense;
- ``x``'s storage (its root, through views and earlier in-place writes) was
  produced by a node, holds no graph output, every other node that reads it
  (besides the views and in-place writes that make up that storage) is an
  ancestor of ``n``, and ``n`` reads no other alias of it.

The last condition holds in every order (every other reader has run before
``n`` overwrites the bytes), so scheduling, allocation and the lower bounds
stay order-independent: the
output simply becomes another alias of the input's storage
(:func:`~memplan.analysis.liveness.storage_roots`). The node records it as
``Node.reuses``, printed ``reuses(%x)`` in the IR; the backend writes with
``out=x``; :func:`~memplan.passes.verify_plan.verify_plan` rejects a plan that
reads a value after it was overwritten. Option ``inplace=False`` turns it off.
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.ir.graph import NODE, Graph, Node, Value, iter_values
from memplan.ir.ops import OpKind, lookup
from memplan.ir.regions import LOOP, lockstep_inputs
from memplan.analysis.strides import eager_strides
from memplan.ir.types import is_dense
from memplan.analysis.liveness import storage_roots
from memplan.passes.registry import register_pass

_KINDS = (OpKind.ELEMENTWISE, OpKind.BROADCAST)
_COPIES = {"clone", "_to_copy", "to", "lift_fresh_copy", "copy"}


def _candidate(node: Node) -> bool:
    if node.op == LOOP:
        return node.reuses is None and bool(lockstep_inputs(node))
    if len(node.outputs) != 1 or node.subgraph is not None or node.reuses is not None:
        return False
    if lookup(node.op, node=node.name).inplace_args:
        return True
    opdef = lookup(node.op, node=node.name)
    short = node.op.split(".")[1] if node.op.startswith("aten.") else node.op
    return opdef.kind in _KINDS and not opdef.view and short not in _COPIES


def _overwritable(node: Node) -> list[Value]:
    """The inputs ``node`` may write over: any of an elementwise op's, the listed ones of others, a
    loop's lockstep inputs (:func:`~memplan.ir.regions.lockstep_inputs`)."""
    if node.op == LOOP:
        return list(dict.fromkeys(node.args[i] for i in lockstep_inputs(node)))
    listed = lookup(node.op, node=node.name).inplace_args
    if listed:
        return [node.args[i] for i in listed if isinstance(node.args[i], Value)]
    return list(dict.fromkeys(node.inputs))


def reads_overwritten(node: Node, reused: str, roots: dict[str, str]) -> str | None:
    """The name of a value ``node`` reads from the storage it would overwrite through ``reused``,
    other than the reads an in-place kernel allows; None if there is none.

    An elementwise or broadcast op may read ``reused`` itself, in any argument: element ``i`` of
    every operand is read before element ``i`` of the result is written. Any other alias of the
    same storage (a view, a transposed copy of the pointer) is read at other indices. An op listed
    in ``OpDef.inplace_args`` (a convolution adding into its residual) reads its other operands
    across the whole tensor, so it may read the storage only once, at a listed argument position:
    ``conv(h) + h`` written into ``h`` would convolve the partially overwritten ``h``.
    """
    r = roots[reused]
    if node.op == LOOP:  # it may read the storage only as that one lockstep input
        hits = [v.name for v in node.inputs if roots[v.name] == r]
        return next((name for name in hits if name != reused), None) or (hits[1] if len(hits) > 1 else None)
    if lookup(node.op, node=node.name).inplace_args:
        allowed = set(lookup(node.op, node=node.name).inplace_args)
        hits = []
        for i, arg in enumerate(node.args):
            for v in iter_values(arg):
                if roots[v.name] == r:
                    hits.append((i, v.name))
        for v in iter_values(node.kwargs):
            if roots[v.name] == r:
                hits.append((None, v.name))
        bad = [name for i, name in hits if i not in allowed or name != reused]
        if bad:
            return bad[0]
        return hits[1][1] if len(hits) > 1 else None
    for v in node.inputs:
        if roots[v.name] == r and v.name != reused:
            return v.name
    return None


def mark_inplace(graph: Graph) -> list[Node]:
    """Set ``reuses`` on every node that may write over an input (see the module docstring);
    return those nodes, in graph order."""
    candidates = [n for n in graph.nodes if _candidate(n)]
    if not candidates:
        return []
    strides = eager_strides(graph)
    roots = storage_roots(graph)
    members: dict[str, list[str]] = {}
    for name, r in roots.items():
        members.setdefault(r, []).append(name)
    kind = {v.name: v.kind for v in graph.values()}
    producer = {v.name: n.name for n in graph.nodes for v in n.outputs}
    readers = {name: {n.name for n in nodes} for name, nodes in graph.users().items()}
    outputs = {v.name for v in graph.outputs}
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    anc: dict[str, int] = {}  # node -> bitset of its ancestors (bit i: graph.nodes[i])
    for n in graph.nodes:
        bits = 0
        for v in n.inputs:
            if v.name in producer:
                p = producer[v.name]
                bits |= anc[p] | (1 << index[p])
        anc[n.name] = bits
    # per storage root, kept up to date as roots merge (linear in the graph, not in chain length):
    # whether a graph output uses it, the nodes producing its values, and the other nodes reading it
    holds_output = {r: any(m in outputs for m in ms) for r, ms in members.items()}
    inside = {r: {producer[m] for m in ms if m in producer} for r, ms in members.items()}
    outside = {r: set().union(*(readers[m] for m in ms)) - inside[r] for r, ms in members.items()}
    marked = []
    for node in candidates:
        out = node.outputs[0]
        if out.name in outputs:
            continue
        for x in _overwritable(node):
            r = roots[x.name]
            if x.type != out.type or kind[r] != NODE or holds_output[r]:
                continue
            shape = [int(d) for d in x.type.shape] if x.type.is_static else None
            if shape is None or strides.get(x.name) != strides.get(out.name) or not is_dense(shape, strides[x.name]):
                continue
            if reads_overwritten(node, x.name, roots):
                continue  # it reads the bytes it would overwrite other than element by element
            if any(not (anc[node.name] >> index[u]) & 1 for u in outside[r] if u != node.name):
                continue  # some other reader may run after this node
            node.reuses = x
            gone = roots[out.name]
            for m in members.pop(gone):
                roots[m] = r
                members[r].append(m)
            holds_output[r] = holds_output[r] or holds_output.pop(gone)
            inside[r] |= inside.pop(gone)
            outside[r] = (outside[r] | outside.pop(gone)) - inside[r]
            marked.append(node)
            break
    return marked


@dataclass(frozen=True)
class InplaceOptions:
    """Options of ``inplace``."""

    inplace: bool = True  # let elementwise ops overwrite an input nobody else reads


@register_pass("inplace", options=InplaceOptions, produces=("inplace",))
def inplace(graph, ctx):
    """Let elementwise ops overwrite an input nobody else reads (``Node.reuses``)."""
    if ctx.options.get("inplace", True):
        marked = mark_inplace(graph)
        ctx.log.append(f"inplace: {len(marked)} of {len(graph.nodes)} nodes write over an input")
    return graph
