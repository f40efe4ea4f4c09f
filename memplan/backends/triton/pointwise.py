"""The pointwise template: a fused elementwise region as one Triton kernel over its whole output.

The ``fuse`` pass makes a chain of elementwise and broadcast ops a ``memplan.loop`` over row tiles,
so that on the CPU only one tile of its intermediates is ever live. A Triton kernel needs no tiles
of memory at all: each program loads ``BLOCK`` elements of every input (through the input's real
strides; a dim the input broadcasts along contributes nothing to its address), runs the body in
registers, and stores the results through the outputs' planned strides. So the loop becomes *one*
launch over the loop's whole iteration space, whatever its trip count, and its scratch is 0. A
loop written over one of its inputs (``reuses``) stays correct: each element is loaded before the
same program stores over it, and no other program touches it.

Every body op is translated to a Triton expression (:data:`TRANSLATIONS`), computed in the op's
result dtype (float16 and bfloat16 in float32, rounded per op, as aten does on the CPU); an op
without a translation keeps the region on its per-trip PyTorch code, and the reason is logged.
"""
from __future__ import annotations

import math

from memplan.backends.triton.codegen import (FLOATS, POINTWISE_BLOCK, Arg, Kernel, KernelArgs, KernelNames,
                                             NotTranslatable, aligned_dims, comment_text, decompose, literal,
                                             node_comment, tl_dtype)
from memplan.ir.graph import Node, Value
from memplan.ir.regions import GROUP, LOOP, loop_spec


def compute_dtype(dtype: str) -> str:
    """The dtype an op computes in: its result's, float32 for the 16-bit floats (rounded after)."""
    return "f32" if dtype in ("f16", "bf16") else dtype


class Body:
    """The statements of a kernel body being built: each value's local name and dtype, casts made."""

    def __init__(self, names: KernelNames):
        self.names = names
        self.lines: list[str] = []
        self.env: dict[str, tuple[str, str]] = {}  # value name -> (local, dtype)
        self.casts: dict[tuple[str, str], str] = {}
        self.helpers: set[str] = set()

    def local(self, v: Value, dtype: str | None = None) -> str:
        """The local holding ``v``, converted to ``dtype`` if given (once, on a line of its own)."""
        name, have = self.env[v.name]
        if dtype is None or dtype == have:
            return name
        key = (v.name, dtype)
        if key not in self.casts:
            cast = self.names.unique(f"{name}_{dtype}")
            self.lines.append(f"{cast} = {name} != 0" if dtype == "bool" else f"{cast} = {name}.to({tl_dtype(dtype)})")
            self.casts[key] = cast
        return self.casts[key]

    def compute(self, node: Node) -> str:
        """Translate body ``node`` into a statement of its own; the local now holding its result."""
        expr = translate(node, self)
        out = node.outputs[0]
        local = self.names(out)
        self.lines.append(f"{local} = {expr}  # {comment_text(node.op)}")
        self.env[out.name] = (local, out.type.dtype)
        return local

    def let(self, expr: str, hint: str) -> str:
        """A new local holding ``expr`` (for an operand a translation uses more than once)."""
        name = self.names.unique(hint)
        self.lines.append(f"{name} = {expr}")
        return name


class _Op:
    """One body node as its translation sees it: operands (in the compute dtype by default), options."""

    def __init__(self, node: Node, body: Body):
        self.node, self.body = node, body
        self.rdt = node.outputs[0].type.dtype
        self.cdt = compute_dtype(self.rdt)

    def get(self, pos: int, key: str, default=None):
        """Argument ``pos`` (or keyword ``key``; ``default`` if absent)."""
        args = self.node.args
        return args[pos] if len(args) > pos else self.node.kwargs.get(key, default)

    def arg(self, pos: int, key: str = "", cast: bool = True) -> str:
        """Operand ``pos`` as source: a value's local (in the compute dtype unless ``cast`` is False) or a literal."""
        a = self.get(pos, key)
        if isinstance(a, Value):
            return self.body.local(a, self.cdt if cast else None)
        return literal(a)

    def is_bool(self, pos: int) -> bool:
        a = self.get(pos, "")
        return isinstance(a, Value) and a.type.dtype == "bool"

    def arithmetic(self) -> None:
        """Refuse an arithmetic op on booleans (aten gives them logical meanings)."""
        if self.rdt == "bool":
            raise NotTranslatable(f"{self.node.op} on booleans")

    def floating(self) -> None:
        if self.cdt not in FLOATS:
            raise NotTranslatable(f"{self.node.op} with an integer result")

    def helper(self, name: str) -> str:
        self.body.helpers.add(name)
        return name


def _with_alpha(o: _Op, symbol: str) -> str:
    """``a + b`` / ``a - b``, or with ``alpha``: ``a + alpha * b``."""
    o.arithmetic()
    alpha = o.get(2, "alpha", 1)
    if isinstance(alpha, Value):
        raise NotTranslatable("alpha given as a tensor")
    b = o.arg(1) if alpha == 1 else f"{literal(alpha)} * {o.arg(1)}"
    return f"{o.arg(0)} {symbol} {b}"


def _mul(o: _Op) -> str:
    o.arithmetic()
    return f"{o.arg(0)} * {o.arg(1)}"


def _rsub(o: _Op) -> str:
    # rsub(x, y, alpha) = y - alpha * x
    o.arithmetic()
    x, y = o.arg(0), o.arg(1)
    alpha = o.get(2, "alpha", 1)
    return f"{y} - {x}" if alpha == 1 else f"{y} - {literal(alpha)} * {x}"


def _div(o: _Op) -> str:
    if o.get(2, "rounding_mode") is not None:
        raise NotTranslatable(f"division with rounding_mode={comment_text(o.get(2, 'rounding_mode'))}")
    o.floating()
    return f"{o.arg(0)} / {o.arg(1)}"


def _math(fn: str):
    def translate(o: _Op) -> str:
        o.floating()
        return f"tl.{fn}({o.arg(0)})"
    return translate


def _tanh(o: _Op) -> str:
    o.floating()
    return f"{o.helper('_tanh')}({o.arg(0)})"


def _gelu(o: _Op) -> str:
    o.floating()
    x = o.arg(0)
    approximate = o.get(1, "approximate", "none")
    if approximate == "none":  # x * Phi(x)
        return f"0.5 * {x} * (1.0 + tl.erf({x} * {literal(1 / math.sqrt(2))}))"
    if approximate == "tanh":
        inner = o.body.let(f"{literal(math.sqrt(2 / math.pi))} * ({x} + 0.044715 * {x} * {x} * {x})",
                           f"{x}_inner")
        return f"0.5 * {x} * (1.0 + {o.helper('_tanh')}({inner}))"
    raise NotTranslatable(f"gelu approximate={comment_text(approximate)}")


def _pow(o: _Op) -> str:
    exponent = o.get(1, "exponent")
    if isinstance(exponent, Value) or not isinstance(o.get(0, "self"), Value):
        raise NotTranslatable(f"{o.node.op}: only a tensor to a scalar power")
    o.arithmetic()
    x = o.arg(0)
    if float(exponent).is_integer() and 1 <= abs(exponent) <= 8:
        product = " * ".join([x] * int(abs(exponent)))
        if exponent > 0:
            return product
        o.floating()
        return f"1.0 / ({product})" if abs(exponent) > 1 else f"1.0 / {x}"
    o.floating()
    if exponent == 0.5:
        return f"tl.sqrt({x})"
    if exponent == -0.5:
        return f"tl.rsqrt({x})"
    if float(exponent).is_integer():
        raise NotTranslatable(f"pow by the integer {exponent}")
    # x ** e = 2 ** (e * log2 x): nan for x < 0, 0 or inf at x = 0, as aten's pow for a non-integer e
    return f"tl.exp2({literal(float(exponent))} * tl.log2({x}))"


def _below(x: str, bound: str) -> str:
    """``x`` raised to at least ``bound`` (nan stays nan, as in aten's clamp)."""
    return f"tl.where({x} < {bound}, {bound}, {x})"


def _above(x: str, bound: str) -> str:
    return f"tl.where({x} > {bound}, {bound}, {x})"


def _bound(o: _Op, b) -> str:
    return o.body.local(b, o.cdt) if isinstance(b, Value) else literal(b)


def _clamp(o: _Op, lo_key: str = "min", hi_key: str = "max", lo_default=None, hi_default=None) -> str:
    o.arithmetic()
    x = o.arg(0)
    lo, hi = o.get(1, lo_key, lo_default), o.get(2, hi_key, hi_default)
    if lo is not None and hi is not None:
        x = o.body.let(_below(x, _bound(o, lo)), f"{x}_low")
    elif lo is not None:
        return _below(x, _bound(o, lo))
    return _above(x, _bound(o, hi)) if hi is not None else x


def _clamp_min(o: _Op) -> str:
    o.arithmetic()
    return _below(o.arg(0), _bound(o, o.get(1, "min")))


def _clamp_max(o: _Op) -> str:
    o.arithmetic()
    return _above(o.arg(0), _bound(o, o.get(1, "max")))


def _minmax(fn: str):
    def translate(o: _Op) -> str:
        o.arithmetic()
        nan = ", propagate_nan=tl.PropagateNan.ALL" if o.cdt in FLOATS else ""
        return f"tl.{fn}({o.arg(0)}, {o.arg(1)}{nan})"
    return translate


def _compare(symbol: str):
    def translate(o: _Op) -> str:
        return f"{o.arg(0, cast=False)} {symbol} {o.arg(1, cast=False)}"
    return translate


def _truth(o: _Op, pos: int) -> str:
    """Operand ``pos`` as a boolean (``!= 0`` unless it is one)."""
    a = o.arg(pos, cast=False)
    return a if o.is_bool(pos) else f"({a} != 0)"


def _logical(symbol: str):
    def translate(o: _Op) -> str:
        return f"{_truth(o, 0)} {symbol} {_truth(o, 1)}"
    return translate


def _bitwise(symbol: str):
    def translate(o: _Op) -> str:
        if o.cdt in FLOATS:
            raise NotTranslatable(f"{o.node.op} on floats")
        return f"{o.arg(0)} {symbol} {o.arg(1)}"
    return translate


def _where(o: _Op) -> str:
    return f"tl.where({_truth(o, 0)}, {o.arg(1)}, {o.arg(2)})"


def _masked_fill(o: _Op) -> str:
    return f"tl.where({_truth(o, 1)}, {o.arg(2)}, {o.arg(0)})"


def _convert(o: _Op) -> str:
    extra = set(o.node.kwargs) - {"dtype", "memory_format", "layout", "device", "non_blocking"}
    if extra or len(o.node.args) > 1:
        raise NotTranslatable(f"{o.node.op} with arguments beyond dtype")
    # to bool: nonzero; to an integer: truncated toward zero (Triton's and aten's float -> int)
    return _truth(o, 0) if o.rdt == "bool" else o.arg(0)


def _hardsigmoid(o: _Op, x: str) -> str:
    """relu6(x + 3) / 6, as aten computes it."""
    o.floating()
    shifted = o.body.let(f"{x} + 3.0", f"{x}_shifted")
    clamped = o.body.let(_above(_below(shifted, "0.0"), "6.0"), f"{x}_clamped")
    return f"{clamped} / 6.0"


def _hardswish(o: _Op) -> str:
    o.floating()
    x = o.arg(0)
    return f"{x} * {o.body.let(_hardsigmoid(o, x), f'{x}_gate')}"


def _unary(template: str, floating: bool = True):
    def translate(o: _Op) -> str:
        o.arithmetic()
        if floating:
            o.floating()
        return template.format(x=o.arg(0))
    return translate


def _leaky_relu(o: _Op) -> str:
    o.floating()
    x, slope = o.arg(0), o.get(1, "negative_slope", 0.01)
    return f"tl.where({x} > 0, {x}, {x} * {literal(slope)})"


def _addcmul(o: _Op) -> str:
    o.arithmetic()
    value = o.get(3, "value", 1)
    product = f"{o.arg(1)} * {o.arg(2)}"
    return f"{o.arg(0)} + {product}" if value == 1 else f"{o.arg(0)} + {literal(value)} * ({product})"


# aten op (packet name) -> its translation; the overloads of a packet share one
TRANSLATIONS = {
    "add": lambda o: _with_alpha(o, "+"),
    "sub": lambda o: _with_alpha(o, "-"),
    "rsub": _rsub,
    "mul": _mul,
    "div": _div,
    "true_divide": _div,
    "neg": _unary("-{x}", floating=False),
    "abs": _unary("tl.abs({x})", floating=False),
    "square": _unary("{x} * {x}", floating=False),
    "reciprocal": _unary("1.0 / {x}"),
    "exp": _math("exp"), "exp2": _math("exp2"), "log": _math("log"), "log2": _math("log2"),
    "sqrt": _math("sqrt"), "rsqrt": _math("rsqrt"), "sin": _math("sin"), "cos": _math("cos"),
    "erf": _math("erf"), "floor": _math("floor"), "ceil": _math("ceil"), "sigmoid": _math("sigmoid"),
    "tanh": _tanh,
    "gelu": _gelu,
    "silu": _unary("{x} * tl.sigmoid({x})"),
    "relu": _unary("tl.where({x} < 0, 0, {x})", floating=False),
    "leaky_relu": _leaky_relu,
    "hardsigmoid": lambda o: _hardsigmoid(o, o.arg(0)),
    "hardswish": _hardswish,
    "pow": _pow,
    "clamp": _clamp,
    "clamp_min": _clamp_min,
    "clamp_max": _clamp_max,
    "hardtanh": lambda o: _clamp(o, "min_val", "max_val", -1.0, 1.0),
    "minimum": _minmax("minimum"),
    "maximum": _minmax("maximum"),
    "addcmul": _addcmul,
    "where": _where,
    "masked_fill": _masked_fill,
    "eq": _compare("=="), "ne": _compare("!="), "lt": _compare("<"), "le": _compare("<="),
    "gt": _compare(">"), "ge": _compare(">="),
    "isnan": lambda o: f"{o.arg(0, cast=False)} != {o.arg(0, cast=False)}",
    "logical_not": lambda o: f"{o.arg(0, cast=False)} == 0",
    "logical_and": _logical("&"), "logical_or": _logical("|"), "logical_xor": _logical("^"),
    "bitwise_and": _bitwise("&"), "bitwise_or": _bitwise("|"), "bitwise_xor": _bitwise("^"),
    "bitwise_not": lambda o: f"{o.arg(0)} == 0" if o.rdt == "bool" else f"~{o.arg(0)}",
    "clone": _convert,
    "_to_copy": _convert,
}


def translate(node: Node, body: Body) -> str:
    """The Triton expression of one body node (its operands already in ``body``)."""
    parts = node.op.split(".")
    if len(parts) != 3 or parts[0] != "aten" or parts[1] not in TRANSLATIONS:
        raise NotTranslatable(f"{comment_text(node.op)} has no Triton translation")
    if len(node.outputs) != 1:
        raise NotTranslatable(f"{comment_text(node.op)} has {len(node.outputs)} results")
    o = _Op(node, body)
    tl_dtype(o.rdt)
    expr = TRANSLATIONS[parts[1]](o)
    return expr if o.cdt == o.rdt else f"({expr}).to({tl_dtype(o.rdt)})"


CAT = "aten.cat.default"


def _concat_operands(body) -> set[str]:
    """Names of the body inputs and nodes that only feed concatenations (``cat`` operands and the
    elementwise nodes making them, :mod:`memplan.passes.concat_inputs`): the kernel evaluates them
    per operand, at the operand's own index, inside the ``cat``."""
    readers: dict[str, list[Node]] = {}
    for m in body.nodes:
        for v in m.inputs:
            readers.setdefault(v.name, []).append(m)
    outputs = {v.name for v in body.outputs}
    shifted: set[str] = set()
    for m in reversed(body.nodes):  # a node is shifted when every reader is a cat or shifted
        names = [v.name for v in m.outputs]
        if m.op != CAT and all(readers.get(n) and n not in outputs and all(
                r.op == CAT or r.name in shifted for r in readers[n]) for n in names):
            shifted.add(m.name)
    for v in body.inputs:
        if readers.get(v.name) and v.name not in outputs and all(r.op == CAT or r.name in shifted
                                                                 for r in readers[v.name]):
            shifted.add(v.name)
    return shifted


def _concat(cat: Node, body: Body, args, outer_of: dict, shape: tuple, idx: dict) -> None:
    """``aten.cat`` in a pointwise kernel: element ``i`` along the concatenated dim comes from the
    operand whose range holds ``i``, loaded (or computed from loads) at ``i`` minus the range's start,
    masked to that range; the operands nest in ``tl.where`` by range."""
    operands = cat.args[0]
    rank = len(shape)
    dim = (cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)) % rank
    if dim not in idx:
        raise NotTranslatable("a concatenation along a dim of extent 1")
    i = idx[dim]
    pieces, start = [], 0
    for u in operands:
        size = int(u.type.shape[dim])
        at = i if start == 0 else f"({i} - {start})"
        inside = f"{i} < {start + size}" if start == 0 else f"({i} >= {start}) & ({i} < {start + size})"
        pieces.append((f"{i} < {start + size}", _operand(u, body, args, outer_of, shape, idx, dim, size, at, inside)))
        start += size
    expr = pieces[-1][1]
    for below, value in reversed(pieces[:-1]):
        expr = f"tl.where({below}, {value}, {expr})"
    out = cat.outputs[0]
    local = body.names(out)
    body.lines.append(f"{local} = {expr}  # {comment_text(cat.op)}: each range from its operand")
    body.env[out.name] = (local, out.type.dtype)


def _operand(u: Value, body: Body, args, outer_of: dict, shape: tuple, idx: dict, dim: int, size: int, at: str,
             inside: str) -> str:
    """The local holding operand ``u`` of a concatenation at index ``at`` along ``dim`` (valid where
    ``inside``): a body input loaded there, or an elementwise node computed from such loads."""
    if u.name in body.env:
        raise NotTranslatable(f"concatenation operand %{comment_text(u.name)} is read at two indices")
    if u.name in outer_of:
        outer = outer_of[u.name]
        local = body.names(u)
        piece = list(shape)
        piece[dim] = size
        spans = aligned_dims(outer, tuple(piece), [d for d in idx])
        where = args.address(outer, local, [(at if d == dim else idx[d], k, d) for d, k in spans.items()])
        body.lines.append(f"{local} = tl.load({where}, mask=mask & ({inside}), other=0)" if spans
                          else f"{local} = tl.load({where})")
        body.env[u.name] = (local, u.type.dtype)
        return local
    node = u.producer
    if node is None or len(node.outputs) != 1:
        raise NotTranslatable(f"concatenation operand %{comment_text(u.name)} is not computed elementwise")
    for w in dict.fromkeys(node.inputs):
        _operand(w, body, args, outer_of, shape, idx, dim, size, at, inside)
    return body.compute(node)


def iteration_space(node: Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the shape one launch covers: the region's output shape, the shape its body computes: one
    trip's tile); :class:`NotTranslatable` unless every output has that shape and every input is read
    in lockstep with it or broadcast over it."""
    if node.op not in (LOOP, GROUP) or node.subgraph is None:
        raise NotTranslatable("not a region")
    shapes = {tuple(int(d) for d in v.type.shape) for v in node.outputs}
    tiles = {tuple(int(d) for d in v.type.shape) for v in node.subgraph.outputs}
    if len(shapes) != 1 or len(tiles) != 1:
        raise NotTranslatable("its outputs differ in shape")
    (shape,), (tile,) = shapes, tiles
    if node.op == GROUP:
        return shape, tile
    spec = loop_spec(node)
    dims = {c.dim % len(shape) if shape else 0 for c in spec.outputs if c.kind == "concat"}
    if any(c.kind != "concat" for c in spec.outputs) or len(dims) != 1:
        raise NotTranslatable("its outputs are not concatenated tiles along one dim")
    (d,) = dims
    for v, s in zip(node.args, spec.inputs):
        lead = len(shape) - v.type.rank
        if s.kind == "full":
            if d - lead >= 0 and int(v.type.shape[d - lead]) != 1:
                raise NotTranslatable(f"input %{comment_text(v.name)} is read whole on every trip")
        elif s.dim % max(v.type.rank, 1) != d - lead or not s.step == s.size == tile[d]:
            raise NotTranslatable(f"input %{comment_text(v.name)} is not tiled in lockstep with the outputs")
    return shape, tile


def pointwise_kernel(node: Node, name: str, canonical: bool = False) -> Kernel:
    """The kernel of an elementwise region ``node`` (a ``memplan.loop`` or ``memplan.group``), named
    ``name``; :class:`NotTranslatable` says why not. ``canonical``: locals named ``v0``, ``v1``, ...
    rather than after the IR values (the text that says whether two regions share a kernel)."""
    for m in node.subgraph.nodes if node.subgraph is not None else ():
        parts = m.op.split(".")
        if m.op != CAT and (len(parts) != 3 or parts[0] != "aten" or parts[1] not in TRANSLATIONS):
            raise NotTranslatable(f"its body holds {comment_text(m.op)} (node {comment_text(m.name)}), which has no "
                                  "Triton translation")
    shape, tile = iteration_space(node)
    body_graph = node.subgraph
    n = math.prod(shape)
    if n == 0:
        raise NotTranslatable("it has no elements")
    dims = [d for d, e in enumerate(shape) if e != 1]
    names = KernelNames(canonical)
    size = {d: names.unique(f"size{d}") for d in dims[1:]}
    idx = {d: names.unique(f"i{d}") for d in dims}
    indices = decompose("offsets", dims, size, idx)
    body = Body(names)
    args = KernelArgs(names)
    loads = []
    outer_of = {inner.name: outer for outer, inner in zip(node.args, body_graph.inputs)}
    shifted = _concat_operands(body_graph)  # computed per operand of a concatenation, at its own index
    for outer, inner in zip(node.args, body_graph.inputs):
        if inner.name in shifted:
            continue
        local = names(inner)
        spans = aligned_dims(outer, shape, dims)
        aligned_dims(inner, tile, [])  # the body reads it broadcast to its tile too
        tl_dtype(inner.type.dtype)
        where = args.address(outer, local, [(idx[d], k, d) for d, k in spans.items()])
        loads.append(f"{local} = tl.load({where}, mask=mask)" if spans else f"{local} = tl.load({where})")
        body.env[inner.name] = (local, inner.type.dtype)
    for m in body_graph.nodes:
        if m.name in shifted:
            continue
        for v in m.outputs:
            aligned_dims(v, tile, [])
        if m.op == CAT:
            _concat(m, body, args, outer_of, shape, idx)
        else:
            body.compute(m)
    stores = []
    for out, result in zip(node.outputs, body_graph.outputs):
        where = args.address(out, names(out), [(idx[d], d) for d in dims])
        value = body.local(result, out.type.dtype)
        stores.append(f"tl.store({where}, {value}, mask=mask)" if dims else f"tl.store({where}, {value})")
    params = [", ".join(args.pointers), ", ".join(args.strides), ", ".join([*size.values(), "n_elements"]),
              "BLOCK: tl.constexpr"]
    statements = ["offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)", "mask = offsets < n_elements",
                  *indices, *loads, *body.lines, *stores]
    what = (f"memplan.loop %{node.name} ({loop_spec(node).trips} trips of {list(tile)})" if node.op == LOOP
            else f"memplan.group %{node.name}")
    summary = f"{what} as one launch over {node.outputs[0].type.dtype}{list(shape)}"
    covers = []
    if node.reuses is not None:
        covers.append(comment_text(f"in place: %{node.outputs[0].name} is written over %{node.reuses.name}, "
                                   "each element after it was read"))
    covers += [line for m in body_graph.nodes for line in node_comment(m)]
    launch = [args.tensors, args.stride_args, [Arg("int", n=shape[d]) for d in dims[1:]] + [Arg("int", n=n)],
              [Arg("const", name="BLOCK", n=POINTWISE_BLOCK)]]
    return Kernel(name, node, params, statements, -(-n // POINTWISE_BLOCK), launch, summary, covers, body.helpers)


TANH_HELPER = [
    "# tanh from exp, for every backend (Triton's interpreter has no libdevice): absolute error ~1e-7",
    "@triton.jit",
    "def _tanh(x):",
    "    e = tl.exp(-2.0 * tl.abs(x))",
    "    t = (1.0 - e) / (1.0 + e)",
    "    return tl.where(x < 0, -t, t)",
]
HELPER_SOURCE = {"_tanh": TANH_HELPER}
