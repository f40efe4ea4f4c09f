"""Control flow: ``Scan`` and ``Loop`` as ``memplan.loop`` regions, ``If`` by its condition.

- **Scan** (opset 9+): one loop whose trips each read a slice of every scan input (along its
  ``scan_input_axes``, reversed where ``scan_input_directions`` says), carry the state variables
  from trip to trip, and write each scan output's slice (along ``scan_output_axes``).
- **Loop** with a trip count known at import time (a constant, or a graph input memplan binds):
  one loop whose trips carry the loop-carried values and stack the scan outputs along a new
  first axis. Its body is planned once and runs every trip in the same memory. The iteration
  number is a sliced ``arange``. The condition must stay true in the body (a constant, or the
  input condition passed on): a loop that stops on a value it computes has a data-dependent
  trip count, which memplan refuses. A body that needs the iteration number as a constant (a
  ``Slice`` starting at it) is unrolled instead, one copy of the body per trip.
- **If** with a condition known at import time lowers the branch it takes, inline. A condition
  computed from the data is refused (both branches would have to be planned).

A body reads the enclosing graph's values by name; those become inputs of the loop (read whole).
"""
from __future__ import annotations

import torch

from memplan.frontend.onnx_common import (NeedsConstantError, dtype_of, is_const, is_tensor_like, norm_axis, onnx_op, rank_of, shape_of,
                                          tensor_from_proto)
from memplan.frontend.onnx_loops import build_loop, inner_scope


def lower_subgraph(bb, graph, inputs: list) -> list:
    """Lower ONNX ``graph`` (a body) with node builder ``bb``'s importer, its inputs bound to
    ``inputs``; return its outputs (values or constants)."""
    imp = bb.importer
    if len(inputs) != len(graph.input):
        raise bb.fail(f"its body takes {len(graph.input)} inputs, {len(inputs)} are given")
    for vi, v in zip(graph.input, inputs):
        imp.env[vi.name] = v
        if vi.type.HasField("tensor_type"):
            imp.elem_types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        imp.env[init.name] = tensor_from_proto(init, f"initializer {init.name!r} of a body")
    for node in graph.node:
        imp.lower_node(imp, node)
    missing = [o.name for o in graph.output if o.name not in imp.env]
    if missing:
        raise bb.fail(f"its body does not produce {missing[0]!r}")
    return [imp.env[o.name] for o in graph.output]


def _body(b, name: str):
    a = b.attr(name)
    if a is None or not hasattr(a, "g"):
        raise b.fail(f"attribute {name} (a graph) is missing")
    return a.g


def _squeeze(bb, x, axis):
    shape = list(shape_of(x))
    del shape[axis]
    return bb.reshape(x, shape)


def _unsqueeze(bb, x, axis):
    if is_const(x):
        return x.unsqueeze(axis)
    shape = list(shape_of(x))
    shape.insert(axis, 1)
    return bb.reshape(x, shape)


def claim_scan(attrs, types, opset, ranks):
    return "opset-8 Scan (a batch axis, sequence_lens)" if opset < 9 else None


def claim_loop(attrs, types, opset, ranks):
    if not types or types[0] is None:
        return "no trip count"
    body = attrs.get("body")
    if body is not None and hasattr(body, "g"):
        g = body.g
        cond_in, cond_out = g.input[1].name if len(g.input) > 1 else None, g.output[0].name if g.output else None
        made = {o: n for n in g.node for o in n.output}
        node = made.get(cond_out)
        if cond_out != cond_in and not (node is not None and (node.op_type == "Constant" or (
                node.op_type == "Identity" and node.input[0] == cond_in))):
            return "the body computes the loop condition (a data-dependent trip count)"
    return None


@onnx_op("Scan", claim=claim_scan)
def lower_scan(b, *inputs):
    if b.opset < 9:
        raise b.fail("opset-8 Scan (a batch axis and sequence_lens) is not supported")
    graph = _body(b, "body")
    m = int(b.attr("num_scan_inputs"))
    n = len(inputs) - m
    states, scans = list(inputs[:n]), list(inputs[n:])
    k = len(graph.output) - n
    if m < 1 or k < 0:
        raise b.fail(f"num_scan_inputs {m} does not fit {len(inputs)} inputs and {len(graph.output)} body outputs")
    lists = {"scan_input_axes": m, "scan_input_directions": m, "scan_output_axes": k, "scan_output_directions": k}
    for name, want in lists.items():
        given = b.attr(name)
        if given is not None and len(given) != want:
            raise b.fail(f"{name} lists {len(given)} values; the node has {want} scan "
                         f"{'inputs' if 'input' in name else 'outputs'}")
    in_axes = [norm_axis(a, rank_of(x)) for a, x in zip(b.attr("scan_input_axes", [0] * m), scans)]
    in_dirs = list(b.attr("scan_input_directions", [0] * m))
    out_axes_raw = list(b.attr("scan_output_axes", [0] * k))
    out_dirs = list(b.attr("scan_output_directions", [0] * k))
    lengths = {shape_of(x)[a] for x, a in zip(scans, in_axes)}
    if len(lengths) != 1:
        raise b.fail(f"its scan inputs differ in length ({sorted(lengths)})")
    (trips,) = lengths
    if trips < 1:
        raise b.fail("a scan over zero iterations is not supported")
    prepared = []
    for x, a, d in zip(scans, in_axes, in_dirs):
        prepared.append(b.call("aten.flip.default", x, [a]) if d else x)
    out_axes = []

    def body(bb, *tiles):
        state_t, scan_t = list(tiles[:n]), list(tiles[n:n + m])
        scan_t = [_squeeze(bb, t, a) for t, a in zip(scan_t, in_axes)]
        outs = lower_subgraph(bb, graph, state_t + scan_t)
        new_states, scan_outs = outs[:n], outs[n:]
        for j, (y, a) in enumerate(zip(scan_outs, out_axes_raw)):
            out_axes.append(norm_axis(a, rank_of(y) + 1))
        return list(new_states) + [_unsqueeze(bb, y, a) for y, a in zip(scan_outs, out_axes)]

    # the combines depend on the body's output ranks: build with concat along the raw axes, fixed below
    slicings = [["carry", j] for j in range(n)] + [["slice", a, 1, 1] for a in in_axes]
    combines = [["last"]] * n + [["concat", a] for a in out_axes_raw]
    outs = build_loop(b, trips, states + prepared, slicings, body, combines, what="scan")
    loop = outs[0].producer
    loop.kwargs["outputs"] = [["last"]] * n + [["concat", a] for a in out_axes]
    results = list(outs[:n])
    for y, a, d in zip(outs[n:], out_axes, out_dirs):
        results.append(b.call("aten.flip.default", y, [a]) if d else y)
    return tuple(results)


@onnx_op("Loop", claim=claim_loop)
def lower_loop(b, trip_count=None, cond=None, *initial):
    graph = _body(b, "body")
    if trip_count is None:
        raise b.fail("a Loop without a trip count runs until a condition it computes turns false: its trip count "
                     "depends on the data")
    if is_tensor_like(trip_count) and dtype_of(trip_count) != torch.int64:
        raise b.fail(f"the trip count is {dtype_of(trip_count)}; ONNX's is int64")
    trips = int(b.scalar(trip_count, "trip count"))
    if cond is not None and not bool(b.scalar(cond, "condition")):
        trips = 0
    n = len(initial)
    k = len(graph.output) - 1 - n
    if trips < 1:
        if k == 0:
            return tuple(initial)  # the loop-carried values as they came in
        raise b.fail("a Loop that runs zero times with scan outputs (empty tensors) is not supported")
    if trips > 1 << 20:
        raise b.fail(f"trip count {trips} is more than memplan plans (2**20)")
    true = torch.tensor(True)
    iterations = torch.arange(trips, dtype=torch.int64)

    def body(bb, it, *state):
        outs = lower_subgraph(bb, graph, [bb.reshape(it, []), true] + list(state))
        cond_out = outs[0]
        if not is_const(cond_out) or not bool(cond_out.reshape(-1)[0]):
            raise bb.fail("its body computes the loop condition from the data: the trip count depends on the data")
        return list(outs[1:1 + n]) + [_unsqueeze(bb, y, 0) for y in outs[1 + n:]]

    slicings = [["slice", 0, 1, 1]] + [["carry", j] for j in range(n)]
    if any(not is_tensor_like(v) for v in initial):  # a carried sequence or optional: unrolled
        return _unrolled_loop(b, graph, trips, list(initial), n)
    try:
        outs = build_loop(b, trips, [iterations] + list(initial), slicings, body,
                          [["last"]] * n + [["concat", 0]] * k, what="loop")
    except NeedsConstantError:
        return _unrolled_loop(b, graph, trips, list(initial), n)
    return tuple(outs)


MAX_UNROLLED_NODES = 20000  # trips x body nodes an unrolled Loop may make


def _unrolled_loop(b, graph, trips: int, state: list, n: int):
    """The Loop unrolled, trip by trip, its iteration number a constant in each copy of the body."""
    if trips * max(len(graph.node), 1) > MAX_UNROLLED_NODES:
        raise b.fail(f"its body needs the iteration number as a constant, so it would be unrolled: {trips} trips of "
                     f"{len(graph.node)} nodes is more than memplan unrolls ({MAX_UNROLLED_NODES} nodes)")
    scans: list[list] = []
    for t in range(trips):
        with inner_scope(b.importer):
            outs = lower_subgraph(b, graph, [torch.tensor(t, dtype=torch.int64), torch.tensor(True)] + state)
        if not is_const(outs[0]) or not bool(outs[0].reshape(-1)[0]):
            raise b.fail("its body computes the loop condition from the data: the trip count depends on the data")
        state = list(outs[1:1 + n])
        scans.append([_unsqueeze(b, y, 0) for y in outs[1 + n:]])
    stacked = [b.call("aten.cat.default", [trip[j] for trip in scans], 0) for j in range(len(scans[0]))]
    return tuple(state + stacked)


@onnx_op("If")
def lower_if(b, cond):
    taken = "then_branch" if bool(b.scalar(cond, "condition")) else "else_branch"
    graph = _body(b, taken)
    with inner_scope(b.importer):  # the branch's names stay inside it
        outs = lower_subgraph(b, graph, [])
    return tuple(outs)


__all__ = ["lower_subgraph"]
