"""The IR verifier: types, SSA, acyclicity, op support and shapes."""
from __future__ import annotations

from memplan.errors import IRVerificationError, UnsupportedOpError
from memplan.ir.graph import Graph, Value
from memplan.ir.ops import infer_types, lookup
from memplan.ir.regions import LOOP, REGION_OPS, check_region, lockstep_inputs


def verify(graph: Graph, *, check_shapes: bool = True) -> None:
    """Raise :class:`IRVerificationError` naming the first node that breaks an invariant.

    Checks: every value is defined once (SSA) before it is used (so the node
    list is a topological order and the graph is acyclic), every op is in the
    registry, every output's type matches shape/dtype inference (for
    static shapes), and outputs are defined values. Sub-graphs are verified
    recursively.
    """
    defined: dict[str, Value] = {}

    def define(v: Value, where: str):
        if not isinstance(v, Value):
            raise IRVerificationError(f"{where}: {v!r} is not a Value")
        if v.name in defined:
            raise IRVerificationError(f"graph {graph.name}: value %{v.name} is defined twice ({where})")
        defined[v.name] = v

    for v in graph.inputs:
        define(v, "graph input")
    for v in graph.params:
        define(v, "param")
    for node in graph.nodes:
        where = f"graph {graph.name}, node {node.name} ({node.op})"
        for v in node.inputs:
            if defined.get(v.name) is not v:
                raise IRVerificationError(
                    f"{where}: reads %{v.name} before it is defined (not SSA, or a cycle)")
        try:
            opdef = lookup(node.op, node=node.name, source=node.source)
        except UnsupportedOpError as exc:
            raise IRVerificationError(f"{where}: {exc}") from None
        if opdef.view and not (node.args and isinstance(node.args[0], Value)):
            raise IRVerificationError(f"{where}: a view takes the tensor it views as its first positional argument "
                                      "(its storage is that tensor's)")
        for v in node.outputs:
            if v.producer is not node:
                raise IRVerificationError(f"{where}: output %{v.name} does not name this node as producer")
            define(v, where)
        if node.reuses is not None:
            _check_reuse(node, where)
        if node.subgraph is not None or node.op in REGION_OPS:
            check_region(node)
            _check_fresh_results(node)
            verify(node.subgraph, check_shapes=check_shapes)
        elif check_shapes and all(v.type.is_static for v in node.inputs):
            try:
                expected = infer_types(node)
            except Exception as exc:  # the op rejected its inputs: that is the finding
                raise IRVerificationError(f"{where}: shape inference failed: {str(exc).splitlines()[0]}") from None
            got = [v.type for v in node.outputs]
            if len(expected) != len(got) or not all(e.same_tensor(g) for e, g in zip(expected, got)):
                raise IRVerificationError(
                    f"{where}: outputs typed {', '.join(map(str, got))} but the op gives "
                    f"{', '.join(map(str, expected))}")
    for v in graph.outputs:
        if defined.get(v.name) is not v:
            raise IRVerificationError(f"graph {graph.name}: output %{v.name} is not defined")


def _check_reuse(node, where: str) -> None:
    """An in-place node overwrites an input of its own with exactly as many bytes of the same type."""
    reused = next((v for v in node.inputs if v is node.reuses), None)
    if reused is None:
        raise IRVerificationError(f"{where}: reuses %{node.reuses.name}, which it does not read")
    if node.op == LOOP:
        positions = [i for i, a in enumerate(node.args) if a is reused]
        if len(positions) != 1 or positions[0] not in lockstep_inputs(node):
            raise IRVerificationError(f"{where}: a loop writes in place only over an input it reads in lockstep "
                                      "with its one output (sliced ['slice', d, s, s] along the dim the output "
                                      "concatenates on, s its tile there, of the output's type), and reads "
                                      "nowhere else")
    elif len(node.outputs) != 1 or node.subgraph is not None or lookup(node.op).view:
        raise IRVerificationError(f"{where}: only a single-output, non-view op can write in place")
    if reused.kind != "node":
        raise IRVerificationError(f"{where}: writes in place over %{reused.name}, a graph {reused.kind}: "
                                  "inputs and weights are never overwritten")
    out = node.outputs[0]
    if out.type != reused.type:
        raise IRVerificationError(f"{where}: output %{out.name} ({out.type}) cannot reuse "
                                  f"%{reused.name} ({reused.type}): types differ")


def _check_fresh_results(node) -> None:
    """A region's results are new values: no body output is a body input or a view of one (or an
    in-place write over one), which the region's output buffer would then alias."""
    body = node.subgraph
    root = {v.name: v.name for v in body.inputs}
    for n in body.nodes:
        base = n.reuses if n.reuses is not None else None
        if base is None and n.inputs:
            try:
                if lookup(n.op).view:
                    base = n.inputs[0]
            except UnsupportedOpError:  # reported by the body's own type check
                base = None
        for out in n.outputs:
            root[out.name] = root.get(base.name, base.name) if base is not None else out.name
    inputs = {v.name for v in body.inputs}
    for v in body.outputs:
        if root.get(v.name, v.name) in inputs:
            raise IRVerificationError(f"node {node.name} ({node.op}): body output %{v.name} is (a view of) body "
                                      f"input %{root[v.name]}; a region's results are new values (copy it in the body)")
