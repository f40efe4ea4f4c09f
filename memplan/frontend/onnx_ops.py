"""The ONNX op table: one lowering per ONNX op type (default domain).

A lowering is ``fn(b, *inputs) -> output | tuple of outputs`` where ``b`` is
the :class:`~memplan.frontend.onnx_common.NodeBuilder` of the ONNX node and each
input is an IR :class:`~memplan.ir.graph.Value`, a constant ``torch.Tensor``
or ``None`` (an omitted optional input). Lowerings emit aten ops through
``b.call`` (which folds them when every tensor argument is constant) and read
shape-deciding inputs with ``b.const`` / ``b.ints``.

``claim`` is an optional predicate ``(attrs, input_elem_types, opset) ->
reason or None``: the variants an op lowers correctly; the conformance
backend claims a model only if every node passes it. Lowerings register into
:data:`~memplan.frontend.onnx_common.ONNX_OPS` with ``@onnx_op``. This module
holds the elementwise, shape and indexing ops and :func:`lower_node`, and
imports the rest of the table: :mod:`memplan.frontend.onnx_nn` (the
neural-network ops: conv, pooling, normalization, resize, ...) and
:mod:`memplan.frontend.onnx_composite`.
"""
from __future__ import annotations

import math

import torch

from memplan.errors import MemplanError, UnsupportedOpError
from memplan.frontend.onnx_common import (CLAIMED_ELEM_TYPES, ONNX_OPS, NodeBuilder, OnnxOp,  # noqa: F401
                                          attributes, check_node_types, dtype_of, is_const, norm_axis, onnx_elem_type,
                                          OnnxSequence, is_tensor_like,
                                          onnx_op, rank_of, shape_of, torch_dtype_of)


def supported_onnx_ops() -> list[str]:
    """Names of the ONNX op types memplan lowers (default domain)."""
    return sorted(ONNX_OPS)


def lower_node(importer, node) -> None:
    """Lower one ONNX node into ``importer.graph``, binding its outputs in ``importer.env``."""
    where = f"node {node.name!r}" if node.name else f"node producing {list(node.output)}"
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedOpError(f"ONNX op {node.domain}::{node.op_type} ({where}) is not supported: memplan "
                                 f"lowers the default ONNX domain only ({len(ONNX_OPS)} ops)",
                                 op=f"{node.domain}::{node.op_type}", node=node.name)
    _check_attribute_types(node, importer.opset, where)
    op = ONNX_OPS.get(node.op_type)
    if op is None:
        from memplan.frontend.onnx_functions import has_function
        if has_function(node.op_type, importer.opset):  # defined by a function of other ops: lowered through it
            _lower_through_function(importer, node)
            return
        ops = supported_onnx_ops()
        raise UnsupportedOpError(f"ONNX op {node.op_type} ({where}) is not supported; memplan lowers {len(ops)} "
                                 f"ONNX ops: {', '.join(ops)}", op=f"onnx::{node.op_type}", node=node.name)
    attrs = attributes(node)
    inputs = []
    for name in node.input:
        if not name:
            inputs.append(None)
        elif name not in importer.env:
            raise MemplanError(f"ONNX node {node.name!r} ({node.op_type}) reads {name!r}, which no earlier node, "
                               "input or initializer defines (the graph is not topologically sorted)")
        else:
            inputs.append(importer.env[name])
    b = NodeBuilder(importer, node, attrs)
    try:
        result = op.lower(b, *inputs)
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, OverflowError) as exc:
        # an attribute of the wrong type or out of range (axis="one", NaN scales): the file's fault
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise b.fail(f"cannot lower it with these attributes and inputs ({type(exc).__name__}: {text})") from None
    results = list(result) if isinstance(result, (tuple, list)) and not isinstance(result, OnnxSequence) else [result]
    for i, name in enumerate(node.output):
        if not name:
            continue
        if i >= len(results) or results[i] is None:
            raise b.fail(f"output {i} ({name!r}) is not supported")
        if isinstance(results[i], OnnxSequence):
            for item in results[i]:
                if is_const(item):
                    importer.keep_alive.append(item)
        importer.env[name] = results[i]
        _record_elem_type(importer, name, results[i], b.out_elem_types.get(i))
        if is_const(results[i]):
            importer.const_names.setdefault(id(results[i]), name)  # a param made of it takes the ONNX name
            importer.keep_alive.append(results[i])
    _rename_outputs(b, node, results)
    check_node_types(importer, node, results)


def _record_elem_type(importer, name: str, value, given: int | None = None) -> None:
    """The ONNX element type ``name`` holds: what the lowering says (a cast to a carried type), else
    what ONNX type inference says, else its torch dtype's. A sequence or an empty optional has none
    (its elements are typed as they are made)."""
    if not is_tensor_like(value):
        return
    known = importer.onnx_types.get(name)
    if given is not None:
        importer.elem_types[name] = given
    elif known is not None and known[0]:
        importer.elem_types[name] = known[0]
    else:
        importer.elem_types[name] = onnx_elem_type(dtype_of(value))


def _check_attribute_types(node, opset: int, where: str) -> None:
    """Every attribute the ONNX schema declares has the declared type (``layout="1"``, a float
    ``hidden_size``: the file is wrong, as onnx.checker says)."""
    import onnx
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return
    for a in node.attribute:
        declared = schema.attributes.get(a.name)
        if declared is None or a.ref_attr_name:
            continue
        want = int(declared.type)
        if want != int(a.type) and want != int(onnx.AttributeProto.UNDEFINED):
            got = onnx.AttributeProto.AttributeType.Name(a.type)
            raise UnsupportedOpError(
                f"ONNX op {node.op_type} ({where}): attribute {a.name!r} is {got}, the op's schema declares "
                f"{onnx.AttributeProto.AttributeType.Name(want)}", op=f"onnx::{node.op_type}", node=node.name)


def _lower_through_function(importer, node) -> None:
    from memplan.frontend.onnx_functions import lower_function_op
    inputs = [importer.env[n] if n else None for n in node.input]
    results = lower_function_op(importer, node, inputs)
    if results is None:
        raise UnsupportedOpError(f"ONNX op {node.op_type} (node {node.name!r}): its schema's function body is not "
                                 "defined for this opset", op=f"onnx::{node.op_type}", node=node.name)
    for i, name in enumerate(node.output):
        if not name:
            continue
        if i >= len(results) or results[i] is None:
            raise UnsupportedOpError(f"ONNX op {node.op_type} (node {node.name!r}): its function body does not "
                                     f"produce output {i} ({name!r})", op=f"onnx::{node.op_type}", node=node.name)
        importer.env[name] = results[i]
        _record_elem_type(importer, name, results[i])


def _rename_outputs(b: NodeBuilder, node, results) -> None:
    """Give the IR value of each ONNX output the ONNX name, when it is free (readable IR)."""
    graph = b.graph
    for name, r in zip(node.output, results):
        if not name or not is_tensor_like(r) or is_const(r) or r.producer is None or r.producer not in b.created:
            continue
        want = "".join(c if (c.isalnum() or c == "_") else "_" for c in name) or "v"
        if want[0].isdigit():
            want = "v" + want
        if want == r.name or want in graph._names:
            continue
        graph._names.add(want)
        if r.producer.name == r.name:
            r.producer.name = want
        r.name = want


# ---------------------------------------------------------------- helpers
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _t(elem_types, i):
    return elem_types[i] if i < len(elem_types) else None


def claim_float_inputs(attrs, types, opset, ranks):
    t = _t(types, 0)
    if t is not None and t not in (1, 10, 11, 16):
        return "float inputs only"
    return None


def claim_not_bf16(attrs, types, opset, ranks):
    return "bfloat16 differs" if 16 in types else None


# ---------------------------------------------------------------- elementwise
_UNARY = {
    "Abs": "aten.abs.default", "Acos": "aten.acos.default", "Acosh": "aten.acosh.default",
    "Asin": "aten.asin.default", "Asinh": "aten.asinh.default", "Atan": "aten.atan.default",
    "Atanh": "aten.atanh.default", "Ceil": "aten.ceil.default", "Cos": "aten.cos.default",
    "Cosh": "aten.cosh.default", "Erf": "aten.erf.default", "Exp": "aten.exp.default",
    "Floor": "aten.floor.default", "Log": "aten.log.default", "Neg": "aten.neg.default",
    "Reciprocal": "aten.reciprocal.default", "Relu": "aten.relu.default", "Round": "aten.round.default",
    "Sigmoid": "aten.sigmoid.default", "Sign": "aten.sign.default", "Sin": "aten.sin.default",
    "Sinh": "aten.sinh.default", "Sqrt": "aten.sqrt.default", "Tan": "aten.tan.default",
    "Tanh": "aten.tanh.default", "Not": "aten.logical_not.default", "IsNaN": "aten.isnan.default",
    "Mish": "aten.mish.default", "BitwiseNot": "aten.bitwise_not.default", "HardSwish": "aten.hardswish.default",
}


def _unary(aten_op):
    def lower(b, x):
        return b.call(aten_op, x)
    return lower


for _name, _aten in _UNARY.items():
    onnx_op(_name)(_unary(_aten))


_BINARY = {
    "Add": "aten.add.Tensor", "Sub": "aten.sub.Tensor", "Mul": "aten.mul.Tensor",
    "Equal": "aten.eq.Tensor", "Greater": "aten.gt.Tensor", "Less": "aten.lt.Tensor",
    "GreaterOrEqual": "aten.ge.Tensor", "LessOrEqual": "aten.le.Tensor", "And": "aten.logical_and.default",
    "Or": "aten.logical_or.default", "Xor": "aten.logical_xor.default", "BitwiseAnd": "aten.bitwise_and.Tensor",
    "BitwiseOr": "aten.bitwise_or.Tensor", "BitwiseXor": "aten.bitwise_xor.Tensor",
}


def _binary(aten_op):
    def lower(b, x, y):
        return b.call(aten_op, x, y)
    return lower


for _name, _aten in _BINARY.items():
    onnx_op(_name)(_binary(_aten))


@onnx_op("Div")
def lower_div(b, x, y):
    if dtype_of(x).is_floating_point:
        return b.call("aten.div.Tensor", x, y)
    return b.call("aten.div.Tensor_mode", x, y, rounding_mode="trunc")


@onnx_op("Pow")
def lower_pow(b, x, y):
    return b.cast(b.call("aten.pow.Tensor_Tensor", x, y), dtype_of(x))


@onnx_op("Mod")
def lower_mod(b, x, y):
    if b.attr("fmod", 0):
        return b.call("aten.fmod.Tensor", x, y)
    return b.call("aten.remainder.Tensor", x, y)


@onnx_op("BitShift")
def lower_bitshift(b, x, y):
    direction = b.attr("direction")
    if direction == "LEFT":
        return b.call("aten.bitwise_left_shift.Tensor", x, y)
    if direction == "RIGHT":
        return b.call("aten.bitwise_right_shift.Tensor", x, y)
    raise b.fail(f"direction {direction!r} is not LEFT or RIGHT")


def _variadic(aten_op):
    def lower(b, *xs):
        acc = xs[0]
        for x in xs[1:]:
            acc = b.call(aten_op, acc, x)
        return acc
    return lower


onnx_op("Max")(_variadic("aten.maximum.default"))
onnx_op("Min")(_variadic("aten.minimum.default"))
onnx_op("Sum")(_variadic("aten.add.Tensor"))


@onnx_op("Mean")
def lower_mean(b, *xs):
    total = _variadic("aten.add.Tensor")(b, *xs)
    return b.call("aten.div.Tensor", total, torch.tensor(float(len(xs)), dtype=dtype_of(xs[0])))


@onnx_op("Where")
def lower_where(b, c, x, y):
    return b.call("aten.where.self", c, x, y)


@onnx_op("IsInf")
def lower_isinf(b, x):
    neg, pos = b.attr("detect_negative", 1), b.attr("detect_positive", 1)
    inf = b.call("aten.isinf.default", x)
    if neg and pos:
        return inf
    if not neg and not pos:
        return b.call("aten.logical_and.default", inf, torch.tensor(False))
    zero = torch.tensor(0, dtype=dtype_of(x))
    side = b.call("aten.gt.Tensor", x, zero) if pos else b.call("aten.lt.Tensor", x, zero)
    return b.call("aten.logical_and.default", inf, side)


def _scalar(value, like) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype_of(like))


@onnx_op("LeakyRelu")
def lower_leaky_relu(b, x):
    return b.call("aten.leaky_relu.default", x, float(b.attr("alpha", 0.01)))


@onnx_op("Elu")
def lower_elu(b, x):
    return b.call("aten.elu.default", x, float(b.attr("alpha", 1.0)))


@onnx_op("Selu")
def lower_selu(b, x):
    alpha = float(b.attr("alpha", 1.67326319217681884765625))
    gamma = float(b.attr("gamma", 1.05070102214813232421875))
    return b.call("aten.elu.default", x, alpha, gamma)


@onnx_op("Celu")
def lower_celu(b, x):
    return b.call("aten.celu.default", x, float(b.attr("alpha", 1.0)))


@onnx_op("HardSigmoid")
def lower_hard_sigmoid(b, x):
    alpha, beta = float(b.attr("alpha", 0.2)), float(b.attr("beta", 0.5))
    y = b.call("aten.add.Tensor", b.call("aten.mul.Tensor", x, _scalar(alpha, x)), _scalar(beta, x))
    return b.call("aten.clamp.default", y, 0.0, 1.0)


@onnx_op("Softplus")
def lower_softplus(b, x):
    return b.call("aten.softplus.default", x)


@onnx_op("Softsign")
def lower_softsign(b, x):
    denom = b.call("aten.add.Tensor", b.call("aten.abs.default", x), _scalar(1, x))
    return b.call("aten.div.Tensor", x, denom)


@onnx_op("Gelu")
def lower_gelu(b, x):
    approx = b.attr("approximate", "none")
    if approx not in ("none", "tanh"):
        raise b.fail(f"approximate={approx!r} is not supported (none, tanh)")
    return b.call("aten.gelu.default", x, approximate=approx)


@onnx_op("ThresholdedRelu")
def lower_thresholded_relu(b, x):
    alpha = float(b.attr("alpha", 1.0))
    return b.call("aten.where.self", b.call("aten.gt.Tensor", x, _scalar(alpha, x)), x, _scalar(0, x))


@onnx_op("Shrink")
def lower_shrink(b, x):
    bias, lambd = float(b.attr("bias", 0.0)), float(b.attr("lambd", 0.5))
    dt = dtype_of(x)
    lo = b.call("aten.lt.Tensor", x, torch.tensor(-lambd).to(dt))
    hi = b.call("aten.gt.Tensor", x, torch.tensor(lambd).to(dt))
    plus = b.call("aten.add.Tensor", x, torch.tensor(bias).to(dt))
    minus = b.call("aten.sub.Tensor", x, torch.tensor(bias).to(dt))
    return b.call("aten.where.self", lo, plus, b.call("aten.where.self", hi, minus, torch.tensor(0, dtype=dt)))


@onnx_op("Swish")
def lower_swish(b, x):
    alpha = float(b.attr("alpha", 1.0))
    ax = x if alpha == 1.0 else b.call("aten.mul.Tensor", x, _scalar(alpha, x))
    return b.call("aten.mul.Tensor", x, b.call("aten.sigmoid.default", ax))


@onnx_op("PRelu")
def lower_prelu(b, x, slope):
    xs, ss = shape_of(x), shape_of(slope)
    if len(ss) == 1 and len(xs) > 2 and ss[0] == xs[1] and ss[0] != xs[-1]:
        slope = b.reshape(slope, [ss[0]] + [1] * (len(xs) - 2))  # opset < 7: one slope per channel
    neg = b.call("aten.lt.Tensor", x, _scalar(0, x))
    return b.call("aten.where.self", neg, b.call("aten.mul.Tensor", x, slope), x)


@onnx_op("Clip")
def lower_clip(b, x, lo=None, hi=None):
    if b.opset < 11 or "min" in b.attrs or "max" in b.attrs:
        lo_v, hi_v = b.attr("min"), b.attr("max")
        lo = None if lo_v is None else _scalar(lo_v, x)
        hi = None if hi_v is None else _scalar(hi_v, x)
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None:
        # ONNX: min(max(x, lo), hi) — when lo > hi every element becomes hi
        return b.call("aten.minimum.default", b.call("aten.maximum.default", x, lo), hi)
    if lo is not None:
        return b.call("aten.maximum.default", x, lo)
    return b.call("aten.minimum.default", x, hi)


@onnx_op("Identity")
def lower_identity(b, x):
    return x


def claim_dropout(attrs, types, opset, ranks):
    return "training mode" if len(types) > 2 else None


@onnx_op("Dropout", claim=claim_dropout)
def lower_dropout(b, x, ratio=None, training_mode=None):
    if training_mode is not None and bool(b.scalar(training_mode, "training_mode")):
        raise b.fail("training_mode=True is random; memplan plans inference graphs")
    if b.attr("is_test", 1) == 0 and b.opset < 7:
        raise b.fail("is_test=0 is random; memplan plans inference graphs")
    mask_dtype = torch.bool
    if len(b.node.output) > 1 and b.node.output[1]:
        return x, b.full(shape_of(x), True, mask_dtype)
    return x


# ---------------------------------------------------------------- constants and shapes
@onnx_op("Constant")
def lower_constant(b):
    a = b.attrs
    if "value" in a:
        return a["value"]
    if "value_float" in a:
        return torch.tensor(float(a["value_float"]), dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor([float(v) for v in a["value_floats"]], dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(int(a["value_int"]), dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor([int(v) for v in a["value_ints"]], dtype=torch.int64)
    raise b.fail(f"attribute {', '.join(a) or '(none)'} is not supported (sparse or string constants)")


@onnx_op("Shape")
def lower_shape(b, x):
    dims = list(shape_of(x))
    r = len(dims)
    start = b.attr("start", 0)
    end = b.attr("end", r)
    start = min(max(start + r if start < 0 else start, 0), r)
    end = min(max(end + r if end < 0 else end, 0), r)
    return torch.tensor(dims[start:end], dtype=torch.int64)


@onnx_op("Size")
def lower_size(b, x):
    return torch.tensor(math.prod(shape_of(x)), dtype=torch.int64)


@onnx_op("ConstantOfShape")
def lower_constant_of_shape(b, shape):
    dims = b.ints(shape, "shape")
    value = b.attr("value")
    if value is None:
        return b.full(dims, 0.0, torch.float32)
    return b.full(dims, value.reshape(-1)[0].item(), value.dtype)


@onnx_op("Range")
def lower_range(b, start, limit, delta):
    s, l, d = (b.const(v, what) for v, what in ((start, "start"), (limit, "limit"), (delta, "delta")))
    if d.item() == 0:
        raise b.fail("delta is 0")
    count = max(int(math.ceil((l.item() - s.item()) / d.item())), 0)
    b.check_size([count], torch.float64, "the range")
    wide = torch.float64 if s.dtype.is_floating_point else torch.int64
    out = s.reshape(()).to(wide) + torch.arange(count, dtype=wide) * d.reshape(()).to(wide)
    return out.to(s.dtype)


@onnx_op("EyeLike")
def lower_eye_like(b, x):
    n, m = shape_of(x)
    k = b.attr("k", 0)
    dt = torch_dtype_of(b.attr("dtype"), "EyeLike dtype") if b.attr("dtype") is not None else dtype_of(x)
    b.check_size([n, m], dt, "the identity matrix")
    out = torch.zeros((n, m), dtype=dt)
    for i in range(n):
        if 0 <= i + k < m:
            out[i, i + k] = 1
    return out


# ---------------------------------------------------------------- shape manipulation
@onnx_op("Reshape")
def lower_reshape(b, x, shape=None):
    target = b.ints(shape, "shape") if shape is not None else list(b.attr("shape"))
    dims = list(shape_of(x))
    allowzero = b.attr("allowzero", 0)
    out = []
    for i, s in enumerate(target):
        out.append(dims[i] if (s == 0 and not allowzero) else s)
    if -1 in out:
        known = math.prod(s for s in out if s != -1)
        total = math.prod(dims)
        out[out.index(-1)] = total // known if known else 0
    return b.reshape(x, out)


@onnx_op("Flatten")
def lower_flatten(b, x):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", 1), len(dims), inclusive=True)
    return b.reshape(x, [math.prod(dims[:axis]), math.prod(dims[axis:])])


@onnx_op("Transpose")
def lower_transpose(b, x):
    r = rank_of(x)
    perm = b.attr("perm") or list(range(r - 1, -1, -1))
    if list(perm) == list(range(r)):
        return x
    return b.call("aten.permute.default", x, [int(p) for p in perm])


def _axes_arg(b, axes_input, attr="axes"):
    if attr in b.attrs:
        return list(b.attrs[attr])
    if axes_input is not None:
        return b.ints(axes_input, "axes")
    return None


@onnx_op("Squeeze")
def lower_squeeze(b, x, axes=None):
    dims = list(shape_of(x))
    ax = _axes_arg(b, axes)
    if ax is None:
        ax = [i for i, d in enumerate(dims) if d == 1]
    ax = {norm_axis(a, len(dims)) for a in ax}
    for a in ax:
        if dims[a] != 1:
            raise b.fail(f"cannot squeeze axis {a} of size {dims[a]}")
    return b.reshape(x, [d for i, d in enumerate(dims) if i not in ax])


@onnx_op("Unsqueeze")
def lower_unsqueeze(b, x, axes=None):
    dims = list(shape_of(x))
    ax = _axes_arg(b, axes)
    r = len(dims) + len(ax)
    ax = sorted(norm_axis(a, r) for a in ax)
    out = []
    it = iter(dims)
    for i in range(r):
        out.append(1 if i in ax else next(it))
    return b.reshape(x, out)


@onnx_op("Concat")
def lower_concat(b, *xs):
    xs = [x for x in xs if x is not None]
    axis = norm_axis(b.attr("axis"), rank_of(xs[0]))
    nonempty = [x for x in xs if shape_of(x)[axis] != 0] or xs[:1]
    if len(nonempty) == 1:
        return nonempty[0]
    return b.call("aten.cat.default", nonempty, axis)


@onnx_op("Split")
def lower_split(b, x, split=None):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", 0), len(dims))
    n_out = len(b.node.output)
    if split is not None:
        sizes = b.ints(split, "split")
    elif "split" in b.attrs:
        sizes = list(b.attrs["split"])
    else:
        n = b.attr("num_outputs", n_out)
        chunk = -(-dims[axis] // n)
        sizes = [min(chunk, max(dims[axis] - chunk * i, 0)) for i in range(n)]
    outs = b.call("aten.split_with_sizes.default", x, sizes, axis)
    return outs if isinstance(outs, tuple) else (outs,)


def _slice_axis(b, x, axis, start, end, step):
    dim = shape_of(x)[axis]
    if step == 0:
        raise b.fail("slice step 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    idx = range(start, end, step)
    if len(idx) == dim and step == 1:
        return x
    if step > 0:
        return b.call("aten.slice.Tensor", x, axis, start, start + max(len(idx) - 1, 0) * step + 1
                      if len(idx) else start, step)
    if len(idx) == 0:
        return b.call("aten.slice.Tensor", x, axis, 0, 0, 1)
    lo, hi = idx[-1], idx[0] + 1
    y = b.call("aten.slice.Tensor", x, axis, lo, hi, -step) if (lo, hi, -step) != (0, dim, 1) else x
    return b.call("aten.flip.default", y, [axis])


@onnx_op("Slice")
def lower_slice(b, x, starts=None, ends=None, axes=None, steps=None):
    r = rank_of(x)
    if b.opset < 10 or "starts" in b.attrs:
        st, en = list(b.attrs["starts"]), list(b.attrs["ends"])
        ax = list(b.attr("axes", range(len(st))))
        sp = [1] * len(st)
    else:
        st, en = b.ints(starts, "starts"), b.ints(ends, "ends")
        ax = b.ints(axes, "axes") if axes is not None else list(range(len(st)))
        sp = b.ints(steps, "steps") if steps is not None else [1] * len(st)
    y = x
    for a, s, e, p in zip(ax, st, en, sp):
        y = _slice_axis(b, y, norm_axis(a, r), s, e, p)
    return y


def _normalize_indices(b, idx, dim):
    """Indices with negative entries wrapped (folded when the indices are constant)."""
    if is_const(idx):
        idx = idx.to(torch.int64)
        return torch.where(idx < 0, idx + dim, idx)
    neg = b.call("aten.lt.Tensor", idx, torch.tensor(0, dtype=dtype_of(idx)))
    wrapped = b.call("aten.add.Tensor", idx, torch.tensor(dim, dtype=dtype_of(idx)))
    return b.cast(b.call("aten.where.self", neg, wrapped, idx), torch.int64)


@onnx_op("Gather")
def lower_gather(b, x, indices):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", 0), len(dims))
    idx = _normalize_indices(b, indices, dims[axis])
    ishape = shape_of(idx)
    if len(ishape) == 0 and is_const(idx):
        return b.call("aten.select.int", x, axis, int(idx))
    flat = b.reshape(idx, [math.prod(ishape)])
    y = b.call("aten.index_select.default", x, axis, flat)
    return b.reshape(y, list(dims[:axis]) + list(ishape) + list(dims[axis + 1:]))


@onnx_op("GatherElements")
def lower_gather_elements(b, x, indices):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", 0), len(dims))
    return b.call("aten.gather.default", x, axis, _normalize_indices(b, indices, dims[axis]))


@onnx_op("GatherND")
def lower_gather_nd(b, x, indices):
    dims = shape_of(x)
    ishape = shape_of(indices)
    bd = b.attr("batch_dims", 0)
    k = ishape[-1]
    index_list = []
    batch_shape = ishape[:bd]
    mid = ishape[bd:-1]
    for i in range(bd):
        ar = torch.arange(dims[i]).reshape([dims[i] if j == i else 1 for j in range(bd)] + [1] * len(mid))
        index_list.append(ar)
    for j in range(k):
        comp = b.call("aten.select.int", indices, len(ishape) - 1, j)
        index_list.append(_normalize_indices(b, comp, dims[bd + j]))
    y = b.call("aten.index.Tensor", x, index_list)
    want = list(batch_shape) + list(mid) + list(dims[bd + k:])
    return b.reshape(y, want)


@onnx_op("ScatterElements", "Scatter")
def lower_scatter_elements(b, x, indices, updates):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", 0), len(dims))
    idx = _normalize_indices(b, indices, dims[axis])
    reduction = b.attr("reduction", "none")
    if reduction == "none":
        return b.call("aten.scatter.src", x, axis, idx, updates)
    table = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
    if reduction not in table:
        raise b.fail(f"reduction={reduction!r} is not supported")
    return b.call("aten.scatter_reduce.two", x, axis, idx, updates, table[reduction])


@onnx_op("ScatterND")
def lower_scatter_nd(b, x, indices, updates):
    dims = list(shape_of(x))
    ishape = list(shape_of(indices))
    k = ishape[-1]
    n = math.prod(ishape[:-1])
    rest = math.prod(dims[k:])
    strides = [math.prod(dims[i + 1:k]) for i in range(k)]
    idx = _normalize_nd(b, indices, dims[:k])
    lin = b.call("aten.sum.dim_IntList", b.call("aten.mul.Tensor", idx, torch.tensor(strides)), [-1])
    lin = b.reshape(lin, [n, 1])
    lin = b.call("aten.expand.default", lin, [n, rest])
    data2 = b.reshape(x, [math.prod(dims[:k]), rest])
    upd2 = b.reshape(updates, [n, rest])
    reduction = b.attr("reduction", "none")
    if reduction == "none":
        out = b.call("aten.scatter.src", data2, 0, lin, upd2)
    else:
        table = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
        if reduction not in table:
            raise b.fail(f"reduction={reduction!r} is not supported")
        out = b.call("aten.scatter_reduce.two", data2, 0, lin, upd2, table[reduction])
    return b.reshape(out, dims)


def _normalize_nd(b, indices, dims):
    bound = torch.tensor(dims, dtype=torch.int64)
    if is_const(indices):
        idx = indices.to(torch.int64)
        return torch.where(idx < 0, idx + bound, idx)
    idx = b.cast(indices, torch.int64)
    neg = b.call("aten.lt.Tensor", idx, torch.tensor(0))
    return b.call("aten.where.self", neg, b.call("aten.add.Tensor", idx, bound), idx)


@onnx_op("Expand")
def lower_expand(b, x, shape):
    target = b.ints(shape, "shape")
    dims = list(shape_of(x))
    r = max(len(dims), len(target))
    a = [1] * (r - len(dims)) + dims
    t = [1] * (r - len(target)) + target
    out = []
    for i, (da, dt) in enumerate(zip(a, t)):
        if da != dt and da != 1 and dt != 1:
            raise b.fail(f"cannot broadcast shape {dims} to {target} (axis {i})")
        out.append(dt if da == 1 else da)
    if out == dims:
        return x
    if len(a) != len(dims):
        x = b.reshape(x, a)
    return b.call("aten.expand.default", x, out)


@onnx_op("Tile")
def lower_tile(b, x, repeats):
    reps = b.ints(repeats, "repeats")
    if all(r == 1 for r in reps):
        return x
    return b.call("aten.repeat.default", x, reps)


def _pad_indices(mode, dim, before, after):
    idx = []
    for i in range(-before, dim + after):
        if mode == "edge":
            j = min(max(i, 0), dim - 1)
        elif mode == "wrap":
            j = i % dim
        else:  # reflect
            period = 2 * (dim - 1) if dim > 1 else 1
            j = i % period if period else 0
            if j >= dim:
                j = period - j
        idx.append(j)
    return torch.tensor(idx, dtype=torch.int64)


@onnx_op("Pad")
def lower_pad(b, x, pads=None, value=None, axes=None):
    r = rank_of(x)
    mode = b.attr("mode", "constant")
    if pads is None and "pads" in b.attrs:
        pad_list = list(b.attrs["pads"])
        fill = float(b.attr("value", 0.0))
    else:
        pad_list = b.ints(pads, "pads")
        fill = b.scalar(value, "constant_value") if value is not None else 0
    ax = b.ints(axes, "axes") if axes is not None else list(range(r))
    ax = [norm_axis(a, r) for a in ax]
    n = len(ax)
    before = {a: pad_list[i] for i, a in enumerate(ax)}
    after = {a: pad_list[i + n] for i, a in enumerate(ax)}
    if mode == "constant":
        torch_pads = []
        for a in range(r - 1, -1, -1):
            torch_pads += [before.get(a, 0), after.get(a, 0)]
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        if all(p == 0 for p in torch_pads):
            return x
        fill = bool(fill) if dtype_of(x) == torch.bool else (
            float(fill) if dtype_of(x).is_floating_point else int(fill))
        if isinstance(fill, float) and not math.isfinite(fill):
            # no inf/nan literals in emitted code: pad with 0, then select the fill from a constant
            b.check_size(shape_of(x), torch.bool, "the padding mask")
            mask = torch.nn.functional.pad(torch.zeros(shape_of(x), dtype=torch.bool), torch_pads, value=True)
            y = b.call("aten.constant_pad_nd.default", x, torch_pads, 0.0)
            return b.call("aten.where.self", mask, torch.tensor(fill, dtype=dtype_of(x)), y)
        return b.call("aten.constant_pad_nd.default", x, torch_pads, fill)
    if mode not in ("edge", "reflect", "wrap"):
        raise b.fail(f"mode={mode!r} is not supported (constant, reflect, edge, wrap)")
    y = x
    for a in ax:
        if before[a] == 0 and after[a] == 0:
            continue
        idx = _pad_indices(mode, shape_of(y)[a], before[a], after[a])
        y = b.call("aten.index_select.default", y, a, idx)
    return y


# ---------------------------------------------------------------- reductions
def _reduce_axes(b, x, axes_input):
    r = rank_of(x)
    ax = _axes_arg(b, axes_input)
    if not ax:
        if b.attr("noop_with_empty_axes", 0):
            return None
        ax = list(range(r))
    return sorted({norm_axis(a, r) for a in ax})


_REDUCE_IDENTITY = {"ReduceSum": 0, "ReduceMean": math.nan, "ReduceProd": 1, "ReduceMax": -math.inf,
                    "ReduceMin": math.inf, "ReduceL1": 0, "ReduceL2": 0, "ReduceLogSum": -math.inf,
                    "ReduceLogSumExp": -math.inf, "ReduceSumSquare": 0}


@onnx_op(*_REDUCE_IDENTITY)
def lower_reduce(b, x, axes=None):
    ax = _reduce_axes(b, x, axes)
    op = b.op_type
    if ax is None:
        return x
    keep = bool(b.attr("keepdims", 1))
    dims = shape_of(x)
    if any(dims[a] == 0 for a in ax):
        out = [1 if i in ax else d for i, d in enumerate(dims)] if keep else \
            [d for i, d in enumerate(dims) if i not in ax]
        ident = _REDUCE_IDENTITY[op]
        dt = dtype_of(x)
        if dt == torch.bool:
            ident = {"ReduceMax": False, "ReduceMin": True}.get(op, bool(ident))
        elif not dt.is_floating_point and not math.isfinite(ident):
            ident = torch.iinfo(dt).min if ident < 0 else torch.iinfo(dt).max
        return b.full(out, ident, dt)
    if op == "ReduceSum":
        return b.call("aten.sum.dim_IntList", x, ax, keep)
    if op == "ReduceMean":
        return b.call("aten.mean.dim", x, ax, keep)
    if op == "ReduceMax":
        return b.call("aten.amax.default", x, ax, keep)
    if op == "ReduceMin":
        return b.call("aten.amin.default", x, ax, keep)
    if op == "ReduceProd":
        y = x
        for a in sorted(ax, reverse=True):
            y = b.call("aten.prod.dim_int", y, a, keep)
        return y
    if op == "ReduceL1":
        return b.call("aten.sum.dim_IntList", b.call("aten.abs.default", x), ax, keep)
    if op == "ReduceL2":
        return b.call("aten.sqrt.default", b.call("aten.sum.dim_IntList", b.call("aten.mul.Tensor", x, x), ax, keep))
    if op == "ReduceSumSquare":
        return b.call("aten.sum.dim_IntList", b.call("aten.mul.Tensor", x, x), ax, keep)
    if op == "ReduceLogSum":
        return b.call("aten.log.default", b.call("aten.sum.dim_IntList", x, ax, keep))
    if op == "ReduceLogSumExp":
        return b.call("aten.logsumexp.default", x, ax, keep)
    raise b.fail("unknown reduction")


def _arg_reduce(b, x):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", 0), len(dims))
    keep = bool(b.attr("keepdims", 1))
    op = "aten.argmax.default" if b.op_type == "ArgMax" else "aten.argmin.default"
    if b.attr("select_last_index", 0):
        flipped = b.call("aten.flip.default", x, [axis])
        idx = b.call(op, flipped, axis, keep)
        return b.call("aten.sub.Tensor", torch.tensor(dims[axis] - 1, dtype=torch.int64), idx)
    return b.call(op, x, axis, keep)


onnx_op("ArgMax", "ArgMin")(_arg_reduce)


def _scan_axis(b, x, axis_input, op, pad_value):
    axis = norm_axis(int(b.scalar(axis_input, "axis")), rank_of(x))
    y = x
    if b.attr("reverse", 0):
        y = b.call("aten.flip.default", y, [axis])
    y = b.call(op, y, axis, dtype=dtype_of(x))
    if b.attr("exclusive", 0):
        r = rank_of(x)
        pads = [0, 0] * (r - 1 - axis) + [1, -1]
        y = b.call("aten.constant_pad_nd.default", y, pads, pad_value)
    if b.attr("reverse", 0):
        y = b.call("aten.flip.default", y, [axis])
    return y


@onnx_op("CumSum")
def lower_cumsum(b, x, axis):
    return _scan_axis(b, x, axis, "aten.cumsum.default", 0)


@onnx_op("CumProd")
def lower_cumprod(b, x, axis):
    return _scan_axis(b, x, axis, "aten.cumprod.default", 1)


# ---------------------------------------------------------------- linear algebra and indexing
def claim_matmul(attrs, types, opset, ranks):
    # aten accumulates float16 products in float32; the ONNX reference (numpy) rounds as it goes
    return "float16 accumulation differs from the reference" if 10 in types else None


@onnx_op("MatMul", claim=claim_matmul)
def lower_matmul(b, x, y):
    return b.call("aten.matmul.default", x, y)


@onnx_op("Gemm")
def lower_gemm(b, a, w, c=None):
    alpha, beta = float(b.attr("alpha", 1.0)), float(b.attr("beta", 1.0))
    if b.attr("transA", 0):
        a = b.call("aten.permute.default", a, [1, 0])
    if b.attr("transB", 0):
        w = b.call("aten.permute.default", w, [1, 0])
    if c is None or beta == 0.0:
        y = b.call("aten.mm.default", a, w)
        return y if alpha == 1.0 else b.call("aten.mul.Tensor", y, _scalar(alpha, y))
    return b.call("aten.addmm.default", c, a, w, beta=beta, alpha=alpha)


@onnx_op("Einsum")
def lower_einsum(b, *xs):
    return b.call("aten.einsum.default", b.attr("equation").replace(" ", ""), list(xs))


@onnx_op("TopK")
def lower_topk(b, x, k):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", -1), len(dims))
    kk = int(b.scalar(k, "K"))
    largest = bool(b.attr("largest", 1))
    # stable order for ties (lower index first): sort, then take the first k
    values, indices = b.call("aten.sort.stable", x, stable=True, dim=axis, descending=largest)
    if kk == dims[axis]:
        return values, indices
    return (b.call("aten.slice.Tensor", values, axis, 0, kk, 1),
            b.call("aten.slice.Tensor", indices, axis, 0, kk, 1))


@onnx_op("Trilu")
def lower_trilu(b, x, k=None):
    kk = int(b.scalar(k, "k")) if k is not None else 0
    op = "aten.triu.default" if b.attr("upper", 1) else "aten.tril.default"
    return b.call(op, x, kk)


@onnx_op("OneHot")
def lower_one_hot(b, indices, depth, values):
    d = int(b.scalar(depth, "depth"))
    r = rank_of(indices) + 1
    axis = norm_axis(b.attr("axis", -1), r)
    idx = b.cast(indices, torch.int64) if not dtype_of(indices).is_floating_point else \
        b.cast(b.call("aten.trunc.default", indices), torch.int64)
    idx = _normalize_indices(b, idx, d)
    shape = list(shape_of(idx))
    idx = b.reshape(idx, shape[:axis] + [1] + shape[axis:])
    ar = torch.arange(d).reshape([d if i == axis else 1 for i in range(r)])
    hot = b.call("aten.eq.Tensor", idx, ar)
    vals = b.const(values, "values") if is_const(values) else values
    off = b.call("aten.select.int", vals, 0, 0)
    on = b.call("aten.select.int", vals, 0, 1)
    return b.call("aten.where.self", hot, on, off)


@onnx_op("Hardmax")
def lower_hardmax(b, x):
    dims = shape_of(x)
    axis = norm_axis(b.attr("axis", -1 if b.opset >= 13 else 1), len(dims))
    if b.opset < 13:
        flat = b.reshape(x, [math.prod(dims[:axis]), math.prod(dims[axis:])])
        return b.reshape(_hardmax_axis(b, flat, 1), dims)
    return _hardmax_axis(b, x, axis)


def _hardmax_axis(b, x, axis):
    dims = shape_of(x)
    idx = b.call("aten.argmax.default", x, axis, True)
    ar = torch.arange(dims[axis]).reshape([dims[axis] if i == axis else 1 for i in range(len(dims))])
    hot = b.call("aten.eq.Tensor", idx, ar)
    return b.cast(hot, dtype_of(x))


# the rest of the table: the neural-network and composite lowerings register themselves on import
import memplan.frontend.onnx_nn  # noqa: E402,F401
import memplan.frontend.onnx_composite  # noqa: E402,F401
import memplan.frontend.onnx_cast  # noqa: E402,F401
import memplan.frontend.onnx_quant  # noqa: E402,F401
import memplan.frontend.onnx_loops  # noqa: E402,F401
import memplan.frontend.onnx_control  # noqa: E402,F401
import memplan.frontend.onnx_sequences  # noqa: E402,F401
import memplan.frontend.onnx_signal  # noqa: E402,F401

__all__ = ["ONNX_OPS", "OnnxOp", "onnx_op", "lower_node", "supported_onnx_ops", "UnsupportedOpError"]
