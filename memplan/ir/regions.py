"""Region ops: nodes that hold a body graph with explicit boundary values.

``memplan.group`` is a fused kernel: its body runs once on the node's inputs
(``body.inputs[i]`` is ``node.args[i]``) and its outputs are the body's
outputs. The body's intermediates never occupy a storage: they are the
group's declared scratch (``Node.scratch``).

``memplan.loop`` is a tiled loop over ``trips`` iterations. Per input, how it
is sliced for one trip: ``["full"]`` (the whole tensor every trip) or
``["slice", dim, step, size]`` (trip ``t`` reads ``[t*step, t*step + size)``
of ``dim``: ``step == size`` tiles without overlap, ``size > step`` carries a
halo, as a convolution's window needs; pad the input first where the edges
need it). Per output, how the trips' results combine: ``["concat", dim]``
(trip ``t`` writes its tile at ``[t*n, (t+1)*n)`` of ``dim``, ``n`` the body
output's size there), ``["sum"]`` (the trips' results are added) or ``["last"]``
(the last trip's result). A recurrence carries state: an input ``["carry", j]``
is the argument on the first trip and body output ``j`` of the trip before on
every later one (output ``j`` then combines as ``["last"]``: the final state,
held in one buffer that every trip reads and overwrites). The body is typed
for one trip::

    %y: f32[8, 16] = memplan.loop(%x, %w, trips=4, inputs=[["slice", 0, 2, 2], ["full"]],
                                  outputs=[["concat", 0]]) graph body(%xt: f32[2, 16], %w: f32[16]) {
      %m: f32[2, 16] = aten.mul.Tensor(%xt, %w)
      return %m
    }

A loop writes each trip's result into the output buffer it is given (a slot,
or its own buffer): only one trip's intermediates are live at a time.
:func:`check_region` type-checks a region node against its body;
:func:`region_types` gives the output types the body and combine imply.
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.errors import IRVerificationError
from memplan.ir.graph import Node, Value
from memplan.ir.opdef import OpKind, register_op
from memplan.ir.types import TensorType

GROUP = "memplan.group"
LOOP = "memplan.loop"
REGION_OPS = frozenset({GROUP, LOOP})
COMBINES = ("concat", "sum", "last")


@dataclass(frozen=True)
class Slicing:
    """How a loop input is cut for one trip: ``kind`` ``full``, ``slice`` (``dim``, ``step``, ``size``)
    or ``carry`` (``dim`` holds the body output that feeds it from the second trip on)."""

    kind: str
    dim: int = 0
    step: int = 0
    size: int = 0


@dataclass(frozen=True)
class Combine:
    """How a loop output gathers the trips: ``kind`` ``concat`` (along ``dim``), ``sum`` or ``last``."""

    kind: str
    dim: int = 0


@dataclass(frozen=True)
class LoopSpec:
    trips: int
    inputs: tuple[Slicing, ...]
    outputs: tuple[Combine, ...]


def _fail(node: Node, message: str):
    raise IRVerificationError(f"node {node.name} ({node.op}): {message}")


def _int(node, value, what) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(node, f"{what} must be an integer, got {value!r:.40}")
    return value


def loop_spec(node: Node) -> LoopSpec:
    """The trip count and per-input / per-output specs of a loop node, checked for form."""
    unknown = set(node.kwargs) - {"trips", "inputs", "outputs"}
    if unknown:
        _fail(node, f"unknown loop argument {sorted(unknown)[0]!r:.40}; a loop takes trips, inputs, outputs")
    trips = _int(node, node.kwargs.get("trips"), "trips")
    if trips < 1:
        _fail(node, f"trips must be at least 1, got {trips}")
    inputs, outputs = node.kwargs.get("inputs"), node.kwargs.get("outputs")
    if not isinstance(inputs, (list, tuple)) or len(inputs) != len(node.args):
        _fail(node, f"inputs must give one slicing per argument ({len(node.args)}), got {inputs!r:.60}")
    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(node.outputs):
        _fail(node, f"outputs must give one combine per output ({len(node.outputs)}), got {outputs!r:.60}")
    slicings = []
    for i, spec in enumerate(inputs):
        if not isinstance(spec, (list, tuple)) or not spec or spec[0] not in ("full", "slice", "carry"):
            _fail(node, f"input {i}: slicing must be ['full'], ['slice', dim, step, size] or ['carry', output], "
                        f"got {spec!r:.60}")
        if spec[0] == "carry":
            if len(spec) != 2:
                _fail(node, f"input {i}: ['carry', output] has two entries, got {spec!r:.60}")
            j = _int(node, spec[1], f"input {i} carry")
            if not 0 <= j < len(outputs):
                _fail(node, f"input {i}: carried from output {j}, but the loop has {len(outputs)} outputs")
            slicings.append(Slicing("carry", j))
            continue
        if spec[0] == "full":
            if len(spec) != 1:
                _fail(node, f"input {i}: ['full'] takes no numbers, got {spec!r:.60}")
            slicings.append(Slicing("full"))
            continue
        if len(spec) != 4:
            _fail(node, f"input {i}: ['slice', dim, step, size] has four entries, got {spec!r:.60}")
        dim, step, size = (_int(node, x, f"input {i} slicing") for x in spec[1:])
        if step < 0 or size < 1:
            _fail(node, f"input {i}: slice step must be >= 0 and size >= 1, got step {step}, size {size}")
        slicings.append(Slicing("slice", dim, step, size))
    combines = []
    for j, spec in enumerate(outputs):
        if not isinstance(spec, (list, tuple)) or not spec or spec[0] not in COMBINES:
            _fail(node, f"output {j}: combine must be ['concat', dim], ['sum'] or ['last'], got {spec!r:.60}")
        if spec[0] == "concat":
            if len(spec) != 2:
                _fail(node, f"output {j}: ['concat', dim] has two entries, got {spec!r:.60}")
            combines.append(Combine("concat", _int(node, spec[1], f"output {j} concat dim")))
        else:
            if len(spec) != 1:
                _fail(node, f"output {j}: [{spec[0]!r}] takes no numbers, got {spec!r:.60}")
            combines.append(Combine(spec[0]))
    carried = [s.dim for s in slicings if s.kind == "carry"]
    for j in carried:
        if carried.count(j) > 1:
            _fail(node, f"output {j} carries into two inputs; one state is one input")
        if combines[j].kind != "last":
            _fail(node, f"output {j} is carried into the next trip, so its combine is ['last'] (the final state), "
                        f"got {combines[j].kind!r}")
    return LoopSpec(trips, tuple(slicings), tuple(combines))


def _norm_dim(node, dim: int, rank: int, what: str) -> int:
    if not -rank <= dim < rank:
        _fail(node, f"{what}: dim {dim} is out of range for rank {rank}")
    return dim % rank


def tile_type(node: Node, value: Value, slicing: Slicing, trips: int) -> TensorType:
    """The type of one trip's slice of ``value``."""
    t = value.type
    if slicing.kind in ("full", "carry"):
        return t
    d = _norm_dim(node, slicing.dim, t.rank, f"input %{value.name}")
    extent = t.shape[d]
    if isinstance(extent, int) and (trips - 1) * slicing.step + slicing.size > extent:
        _fail(node, f"input %{value.name}: trip {trips - 1} reads [{(trips - 1) * slicing.step}, "
                    f"{(trips - 1) * slicing.step + slicing.size}) of dim {d}, which has {extent}")
    shape = list(t.shape)
    shape[d] = slicing.size
    return TensorType(t.dtype, tuple(shape), t.space)


def region_types(node: Node) -> list[TensorType]:
    """The output types a region node's body (and, for a loop, the combines) give."""
    body = node.subgraph
    if body is None:
        _fail(node, "a region node holds a body graph")
    if node.op == GROUP:
        return [v.type for v in body.outputs]
    spec = loop_spec(node)
    out = []
    for v, combine in zip(body.outputs, spec.outputs):
        if combine.kind in ("sum", "last"):
            out.append(v.type)
            continue
        d = _norm_dim(node, combine.dim, v.type.rank, f"body output %{v.name}")
        shape = list(v.type.shape)
        shape[d] = shape[d] * spec.trips
        out.append(TensorType(v.type.dtype, tuple(shape), v.type.space))
    return out


def check_region(node: Node) -> None:
    """Type-check a region node against its body: boundary inputs (through their slicing), outputs
    (through their combine); raise :class:`IRVerificationError` naming what differs."""
    body = node.subgraph
    if body is None:
        _fail(node, "a region node holds a body graph")
    if node.kwargs and node.op == GROUP:
        _fail(node, f"a group takes no keyword arguments, got {sorted(node.kwargs)[0]!r:.40}")
    args = list(node.args)
    if not all(isinstance(a, Value) for a in args):
        _fail(node, "every argument of a region node is a value (its boundary inputs)")
    if len(body.inputs) != len(args):
        _fail(node, f"the body takes {len(body.inputs)} inputs, the node passes {len(args)}")
    if len(body.outputs) != len(node.outputs):
        _fail(node, f"the body returns {len(body.outputs)} values, the node has {len(node.outputs)} outputs")
    if body.params:
        _fail(node, "a body reads weights through its inputs, it declares no params")
    slicings = loop_spec(node).inputs if node.op == LOOP else [Slicing("full")] * len(args)
    if node.op == LOOP and not any((s.kind == "slice" and s.step >= 1) or s.kind == "carry" for s in slicings):
        _fail(node, "a loop tiles at least one input (a slice with step >= 1) or carries a state: otherwise every "
                    "trip computes the same thing")
    if node.op == LOOP:
        for i, s in enumerate(slicings):
            if s.kind == "carry" and not args[i].type.same_tensor(body.outputs[s.dim].type):
                _fail(node, f"input {i} (%{args[i].name}, {args[i].type}) is carried from body output "
                            f"%{body.outputs[s.dim].name}, typed {body.outputs[s.dim].type}: a state keeps its type")
    trips = loop_spec(node).trips if node.op == LOOP else 1
    for a, b, slicing in zip(args, body.inputs, slicings):
        want = tile_type(node, a, slicing, trips)
        if not want.same_tensor(b.type):
            _fail(node, f"body input %{b.name} is typed {b.type}, but %{a.name} sliced as {slicing.kind} gives {want}")
    for v, t in zip(node.outputs, region_types(node)):
        if not v.type.same_tensor(t):
            _fail(node, f"output %{v.name} is typed {v.type}, but the body and its combine give {t}")


def lockstep_inputs(node: Node) -> list[int]:
    """Positions of the inputs a loop reads in lockstep with its one output: sliced without overlap
    (``["slice", d, s, s]``) along the dim the output concatenates on, with the body output's tile
    ``s`` there, and of the output's type. Trip ``t`` reads that input's tile ``t`` whole before it
    writes the output's tile ``t`` (the body's results are new values, copied in after it ran), and
    no other trip reads that tile: the output may be written over such an input."""
    if node.op != LOOP or len(node.outputs) != 1 or node.subgraph is None:
        return []
    spec = loop_spec(node)
    combine, out, body_out = spec.outputs[0], node.outputs[0], node.subgraph.outputs[0]
    if combine.kind != "concat":
        return []
    d = combine.dim % max(out.type.rank, 1)
    tile = body_out.type.shape[d]
    found = []
    for i, (arg, s) in enumerate(zip(node.args, spec.inputs)):
        if (s.kind == "slice" and s.step == s.size == tile and isinstance(arg, Value)
                and s.dim % max(arg.type.rank, 1) == d and arg.type.same_tensor(out.type)):
            found.append(i)
    return found


def _not_callable(*args, **kwargs):
    raise TypeError("a region op runs its body graph: use memplan.ir.interpret.run_node, or a backend")


register_op(GROUP, OpKind.OPAQUE, _not_callable)
register_op(LOOP, OpKind.OPAQUE, _not_callable)
