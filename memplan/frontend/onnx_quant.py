"""Quantization: ``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear`` and the
integer kernels ``MatMulInteger``, ``ConvInteger``, ``QLinearMatMul``, ``QLinearConv``.

Quantized tensors are held in their own bytes in the arena: an int8 weight is one byte per
element. ``DequantizeLinear`` of a weight is therefore *not* folded at import time (folding
would store the float32 weight, four times the bytes): it stays a node, so the planner
dequantizes each weight just before its layer and frees the float copy after it.

Scales and zero points are per tensor (a scalar), per axis (a 1-D tensor along ``axis``) or
blocked (``block_size`` elements of ``axis`` share one). The integer kernels compute in int32,
as the spec says (products summed in int32). Rounding is half to even, results saturate at the
output type's range. The arithmetic follows onnx's reference (``onnx.reference``) step by step,
types included, so results are bit-exact.
"""
from __future__ import annotations

import torch

from memplan.frontend.onnx_cast import _float4_decode, convert, elem_type_of
from memplan.frontend.onnx_common import (FLOAT4E2M1, FLOAT8_TYPES, INT_RANGES, dtype_of, is_const, norm_axis,
                                          onnx_op, onnx_type_name, rank_of, shape_of, torch_dtype_of)

_INT_RANGES = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767), **INT_RANGES}
_QUANT_TYPES = frozenset(_INT_RANGES) | FLOAT8_TYPES - {24} | {FLOAT4E2M1}


def _param(b, p, x_shape, axis: int, block_size: int):
    """A scale or zero point shaped to broadcast against ``x`` (per tensor, per axis or blocked)."""
    shape = shape_of(p)
    if len(shape) == 0:
        return p
    n = 1
    for d in shape:
        n *= d
    if n == 1:
        return b.reshape(p, [])
    axis = norm_axis(axis, len(x_shape))  # (the default axis 1 needs no checking for a per-tensor scale)
    if not block_size:
        if len(shape) != 1 or shape[0] != x_shape[axis]:
            raise b.fail(f"a per-axis scale or zero point has shape {list(shape)}; axis {axis} of the input has "
                         f"{x_shape[axis]} elements")
        return b.reshape(p, [x_shape[axis] if i == axis else 1 for i in range(len(x_shape))])
    if block_size < 0:
        raise b.fail(f"block_size {block_size} must be positive")
    if len(shape) != len(x_shape) or any(s != d for i, (s, d) in enumerate(zip(shape, x_shape)) if i != axis) \
            or not (shape[axis] - 1) * block_size < x_shape[axis] <= shape[axis] * block_size:
        raise b.fail(f"a blocked scale or zero point has shape {list(shape)}: it must equal the input's "
                     f"{list(x_shape)} except along axis {axis}, where {x_shape[axis]} elements come in blocks of "
                     f"{block_size}")
    p = b.call("aten.repeat_interleave.self_int", p, block_size, axis)
    if shape_of(p)[axis] != x_shape[axis]:
        p = b.call("aten.slice.Tensor", p, axis, 0, x_shape[axis])
    return p


def _axis(b, x):
    return int(b.attr("axis", 1))


def claim_quantize(attrs, types, opset, ranks):
    if attrs.get("output_dtype") in (14, 15):
        return "complex output"
    return None


@onnx_op("QuantizeLinear", claim=claim_quantize)
def lower_quantize_linear(b, x, scale, zero_point=None):
    axis, block = _axis(b, x), int(b.attr("block_size", 0))
    to = b.attr("output_dtype", 0) or 0
    if zero_point is not None:
        zp_type = elem_type_of(b, 2, zero_point)
        if to and to != zp_type:
            raise b.fail(f"output_dtype {onnx_type_name(to)} differs from the zero point's type "
                         f"{onnx_type_name(zp_type)}")
        to = zp_type
    to = to or 2  # uint8
    if to not in _QUANT_TYPES:
        raise b.fail(f"{onnx_type_name(to)} is not a quantized type")
    b.out_elem_types[0] = to
    s = _param(b, scale, shape_of(x), axis, block)
    precision = b.attr("precision", 0)
    if precision:
        dt = torch_dtype_of(precision, f"precision of node {b.name!r}")
        x, s = b.cast(x, dt), b.cast(s, dt)
    q = b.call("aten.div.Tensor", x, s)
    if to in _INT_RANGES:
        lo, hi = _INT_RANGES[to]
        # round half to even, add the zero point, saturate: in float64 (exact for every int16 zero point), so a
        # value past the int32 range saturates as the spec says rather than wrapping
        r = b.call("aten.round.default", b.cast(q, torch.float64))
        if zero_point is not None:
            r = b.call("aten.add.Tensor", r, b.cast(_param(b, zero_point, shape_of(x), axis, block), torch.float64))
        return b.cast(b.call("aten.clamp.default", r, lo, hi), torch_dtype_of(to, "QuantizeLinear output"))
    if to == FLOAT4E2M1:
        if zero_point is not None:
            q = b.call("aten.add.Tensor", q, _float4_decode(b, _param(b, zero_point, shape_of(x), axis, block)))
        return convert(b, q, 1, to)
    return convert(b, q, 1, to, saturate=bool(b.attr("saturate", 1)))


@onnx_op("DequantizeLinear")
def lower_dequantize_linear(b, x, scale, zero_point=None):
    if is_const(x):
        b.fold = False  # a quantized weight stays quantized in memory; it is dequantized where it is read
    axis, block = _axis(b, x), int(b.attr("block_size", 0))
    xt = elem_type_of(b, 0, x)
    if xt == FLOAT4E2M1:
        dx = _float4_decode(b, x)
    else:
        dx = b.cast(x, torch.float32)
    if zero_point is not None and xt not in FLOAT8_TYPES and xt != FLOAT4E2M1:
        zp = _param(b, zero_point, shape_of(x), axis, block)
        if dtype_of(zp) in (torch.int32, torch.int64, torch.uint32, torch.uint64):
            dx = b.cast(dx, torch.float64)  # numpy: float32 - int32 is float64
        dx = b.call("aten.sub.Tensor", dx, b.cast(zp, dtype_of(dx)))
    y = b.call("aten.mul.Tensor", dx, _param(b, scale, shape_of(x), axis, block))
    out = b.attr("output_dtype", 0)
    return b.cast(y, torch_dtype_of(out, "DequantizeLinear output") if out else dtype_of(scale))


@onnx_op("DynamicQuantizeLinear")
def lower_dynamic_quantize_linear(b, x):
    zero = torch.tensor(0.0, dtype=torch.float32)
    maxx = b.call("aten.maximum.default", b.call("aten.amax.default", x, list(range(rank_of(x)))), zero)
    minx = b.call("aten.minimum.default", b.call("aten.amin.default", x, list(range(rank_of(x)))), zero)
    span = b.call("aten.sub.Tensor", maxx, minx)
    span = b.call("aten.where.self", b.call("aten.eq.Tensor", maxx, minx), torch.tensor(1.0), span)
    scale = b.call("aten.div.Tensor", span, torch.tensor(255.0))
    zp = b.call("aten.clamp.default", b.call("aten.sub.Tensor", zero, b.call("aten.div.Tensor", minx, scale)), 0, 255)
    zpi = b.call("aten.round.default", zp)
    y = b.call("aten.add.Tensor", b.call("aten.round.default", b.call("aten.div.Tensor", x, scale)), zpi)
    y = b.cast(b.call("aten.clamp.default", y, 0, 255), torch.uint8)
    return y, b.cast(scale, dtype_of(x)), b.cast(zpi, torch.uint8)


# ---------------------------------------------------------------- integer kernels
def _minus_zero_point(b, x, zp, *, per_row_axis: int | None = None):
    """``x`` in int32 less its zero point (a scalar, or per output channel along ``per_row_axis``)."""
    x = b.cast(x, torch.int32)
    if zp is None:
        return x
    zp = b.cast(zp, torch.int32)
    if rank_of(zp) == 1 and shape_of(zp)[0] > 1 and per_row_axis is not None:
        zp = b.reshape(zp, [shape_of(zp)[0] if i == per_row_axis else 1 for i in range(rank_of(x))])
    elif rank_of(zp) >= 1 and shape_of(zp) == (1,):
        zp = b.reshape(zp, [])
    return b.call("aten.sub.Tensor", x, zp)


def _keep_weights_quantized(b, *ws):
    if any(is_const(w) for w in ws):
        b.fold = False


@onnx_op("MatMulInteger")
def lower_matmul_integer(b, a, w, a_zero_point=None, w_zero_point=None):
    _keep_weights_quantized(b, w)
    A = _minus_zero_point(b, a, a_zero_point, per_row_axis=rank_of(a) - 2 if rank_of(a) >= 2 else None)
    B = _minus_zero_point(b, w, w_zero_point, per_row_axis=rank_of(w) - 1)
    return b.call("aten.matmul.default", A, B)


def _requantize(b, acc, scale, y_zero_point, out_dtype, lo, hi):
    """``acc * scale + y_zero_point`` rounded half to even, saturated, in ``out_dtype``."""
    d = b.call("aten.mul.Tensor", b.cast(acc, torch.float64), b.cast(scale, torch.float64))
    if y_zero_point is not None:
        d = b.call("aten.add.Tensor", d, b.cast(y_zero_point, torch.float64))
    return b.cast(b.call("aten.clamp.default", b.call("aten.round.default", d), lo, hi), out_dtype)


@onnx_op("QLinearMatMul")
def lower_qlinear_matmul(b, a, a_scale, a_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point):
    _keep_weights_quantized(b, w)
    A = _minus_zero_point(b, a, a_zero_point, per_row_axis=rank_of(a) - 2 if rank_of(a) >= 2 else None)
    B = _minus_zero_point(b, w, w_zero_point, per_row_axis=rank_of(w) - 1)
    acc = b.call("aten.matmul.default", A, B)
    # the reference: a_scale * b_scale / y_scale in the scales' type, then times the int32 result (float64)
    scale = b.call("aten.div.Tensor", b.call("aten.mul.Tensor", a_scale, _column_scale(b, w_scale, rank_of(acc))),
                   y_scale)
    out = dtype_of(y_zero_point) if y_zero_point is not None else dtype_of(a)
    lo, hi = (0, 255) if out == torch.uint8 else (-128, 127)
    return _requantize(b, acc, scale, y_zero_point, out, lo, hi)


def _column_scale(b, s, rank: int):
    """A per-column scale of a matmul's second operand, shaped against a rank-``rank`` result."""
    if rank_of(s) == 1 and shape_of(s)[0] > 1:
        return b.reshape(s, [shape_of(s)[0] if i == rank - 1 else 1 for i in range(rank)])
    return s


def _int_conv(b, X, W, bias=None):
    """The int32 convolution of ``X`` and ``W`` less their zero points (a padded 0 is the zero point,
    as the spec says). aten has no dilated int32 convolution: float64 sums those exactly."""
    from memplan.frontend.onnx_nn import conv_call
    dilated = any(d != 1 for d in b.attr("dilations", []))
    return conv_call(b, X, W, bias, dtype=torch.float64 if dilated else None)


@onnx_op("ConvInteger")
def lower_conv_integer(b, x, w, x_zero_point=None, w_zero_point=None):
    _keep_weights_quantized(b, w)
    X = _minus_zero_point(b, x, x_zero_point)
    W = _minus_zero_point(b, w, w_zero_point, per_row_axis=0)
    return _int_conv(b, X, W)


@onnx_op("QLinearConv")
def lower_qlinear_conv(b, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None):
    _keep_weights_quantized(b, w, bias)
    X = _minus_zero_point(b, x, x_zero_point)
    W = _minus_zero_point(b, w, w_zero_point, per_row_axis=0)
    acc = _int_conv(b, X, W, b.cast(bias, torch.int32) if bias is not None else None)
    ws = w_scale
    if rank_of(ws) == 1 and shape_of(ws)[0] > 1:
        ws = b.reshape(ws, [1, shape_of(ws)[0]] + [1] * (rank_of(acc) - 2))
    scale = b.call("aten.div.Tensor", b.call("aten.mul.Tensor", x_scale, ws), y_scale)
    out = dtype_of(y_zero_point) if y_zero_point is not None else dtype_of(x)
    lo, hi = (-128, 127) if out == torch.int8 else (0, 255)
    return _requantize(b, acc, scale, y_zero_point, out, lo, hi)


__all__: list[str] = []
