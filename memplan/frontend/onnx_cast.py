"""Casts between every ONNX element type memplan holds: ``Cast``, ``CastLike``, ``BitCast``.

Plain types (float, int, bool) convert with ``aten._to_copy``. The narrow types need more:

- **8-bit floats** (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ) are torch dtypes; ONNX's ``saturate``
  (default 1) clamps to the type's largest finite value first (infinities included). With
  ``saturate=0`` an out-of-range value becomes NaN (E5M2: infinity), as the spec's table says;
  torch already does so for the FNUZ types and E5M2, and saturates E4M3FN, so E4M3FN values
  above 464 (where rounding passes 448) are made NaN first.
- **FLOAT8E8M0** (a power-of-two scale) is computed from the float32 bits with ONNX's three
  rounding modes (``up``, ``down``, ``nearest``), saturating at the largest exponent.
- **INT4, UINT4, INT2, UINT2** are held one value per byte (int8 or uint8). From an integer the
  higher bits are discarded (two's complement), as the spec says for every fixed-point type;
  from a float the value is truncated toward zero and one outside the type's range (NaN too)
  becomes 0, which is what onnx's reference (ml_dtypes) does where the spec leaves it undefined.
- **FLOAT4E2M1** is held as its 4-bit code in uint8: decoded arithmetically (sign, 2 exponent
  bits, 1 mantissa bit), encoded by rounding to the nearest of 0, 0.5, 1, 1.5, 2, 3, 4, 6 (ties
  to the even code), saturating at 6; NaN becomes a zero of the opposite sign, as in the reference (ml_dtypes).
"""
from __future__ import annotations

import torch

from memplan.frontend.onnx_common import (CARRIED_DTYPES, FLOAT4E2M1, FLOAT8_TYPES, INT_RANGES, ONNX_DTYPES,
                                          dtype_of, onnx_elem_type, onnx_op, onnx_type_name, torch_dtype_of)

FLOATS_ELEM = frozenset({1, 10, 11, 16})  # float, float16, double, bfloat16
FLOAT8_DTYPES = frozenset(ONNX_DTYPES[t] for t in FLOAT8_TYPES)
_F8_E4M3FN_OVERFLOW = 464.0  # above this, rounding to E4M3FN passes its largest value 448 (ties go to 448)


def elem_type_of(b, i: int, x) -> int:
    """The ONNX element type input ``i`` holds (known from the file, else from its torch dtype)."""
    t = b.elem_type(i)
    if t:
        return t
    return onnx_elem_type(dtype_of(x))


def convert(b, x, src: int, to: int, *, saturate: bool = True, round_mode: str = "up"):
    """``x``, holding ONNX element type ``src``, as element type ``to`` (held as memplan holds it)."""
    if src == to:
        return x
    if src == FLOAT4E2M1:
        x, src = _float4_decode(b, x), 1
    elif src in FLOAT8_TYPES and to not in FLOATS_ELEM:
        x, src = b.cast(x, torch.float32), 1  # aten converts 8-bit floats to other floats only
    if to in INT_RANGES:
        return _to_small_int(b, x, src, to)
    if to == FLOAT4E2M1:
        return _float4_encode(b, x)
    if to == 24:
        return _to_e8m0(b, x, saturate, round_mode)
    dtype = torch_dtype_of(to, "Cast target")
    if to in FLOAT8_TYPES:
        if not dtype_of(x).is_floating_point or dtype_of(x) in FLOAT8_DTYPES:
            x = b.cast(x, torch.float32)
        if saturate:
            big = float(torch.finfo(dtype).max)
            x = b.call("aten.clamp.default", x, -big, big)
        elif to == 17:
            over = b.call("aten.gt.Scalar", b.call("aten.abs.default", x), _F8_E4M3FN_OVERFLOW)
            nan = torch.tensor(float("nan"), dtype=dtype_of(x))
            x = b.call("aten.where.self", over, nan, x)
    return b.cast(x, dtype)


def _to_small_int(b, x, src: int, to: int):
    lo, hi = INT_RANGES[to]
    carrier = CARRIED_DTYPES[to]
    if dtype_of(x).is_floating_point:  # (8-bit and 4-bit floats arrive as float32)
        t = b.call("aten.trunc.default", x)
        inside = b.call("aten.logical_and.default", b.call("aten.ge.Scalar", t, lo), b.call("aten.le.Scalar", t, hi))
        t = b.call("aten.where.self", inside, t, torch.tensor(0.0, dtype=dtype_of(t)))
        return b.cast(t, carrier)
    if dtype_of(x) == torch.bool:
        return b.cast(x, carrier)
    mask = hi - lo  # 2**bits - 1
    wide = b.cast(x, torch.int64)
    if lo < 0:  # ((x + 2**(bits-1)) mod 2**bits) - 2**(bits-1): the low bits, sign-extended
        wide = b.call("aten.sub.Tensor", b.call("aten.bitwise_and.Scalar", b.call("aten.add.Tensor", wide, -lo), mask),
                      -lo)
    else:
        wide = b.call("aten.bitwise_and.Scalar", wide, mask)
    return b.cast(wide, carrier)


def _float4_decode(b, code):
    """FLOAT4E2M1 codes (uint8) as float32 values."""
    c = b.cast(code, torch.int32)
    e = b.cast(b.call("aten.bitwise_and.Scalar", b.call("aten.bitwise_right_shift.Tensor_Scalar", c, 1), 3),
               torch.float32)
    m = b.cast(b.call("aten.bitwise_and.Scalar", c, 1), torch.float32)
    normal = b.call("aten.mul.Tensor", b.call("aten.exp2.default", b.call("aten.sub.Tensor", e, 1.0)),
                    b.call("aten.add.Tensor", b.call("aten.mul.Tensor", m, 0.5), 1.0))
    sub = b.call("aten.mul.Tensor", m, 0.5)
    mag = b.call("aten.where.self", b.call("aten.eq.Scalar", e, 0.0), sub, normal)
    negative = b.call("aten.ne.Scalar", b.call("aten.bitwise_and.Scalar", c, 8), 0)
    return b.call("aten.where.self", negative, b.call("aten.neg.default", mag), mag)


# |x| thresholds between neighbouring FLOAT4E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6, and whether a tie
# rounds up (to the even code): code = the number of thresholds |x| passes
_F4_STEPS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def _float4_encode(b, x):
    """Float values as FLOAT4E2M1 codes (uint8): round to nearest even, saturate at 6."""
    x = b.cast(x, torch.float32)
    a = b.call("aten.abs.default", x)
    code = None
    for threshold, tie_up in _F4_STEPS:
        passed = b.call("aten.ge.Scalar" if tie_up else "aten.gt.Scalar", a, threshold)
        step = b.cast(passed, torch.uint8)
        code = step if code is None else b.call("aten.add.Tensor", code, step)
    negative = b.call("aten.lt.Scalar", b.call("aten.view.dtype", x, torch.int32), 0)  # the sign bit, -0 too
    code = b.call("aten.bitwise_or.Tensor", code,
                  b.call("aten.mul.Tensor", b.cast(negative, torch.uint8), torch.tensor(8, dtype=torch.uint8)))
    # NaN: the code of -0 for a positive NaN and of +0 for a negative one, as ml_dtypes (onnx's reference) gives
    nan_code = b.call("aten.mul.Tensor", b.cast(b.call("aten.logical_not.default", negative), torch.uint8),
                      torch.tensor(8, dtype=torch.uint8))
    return b.call("aten.where.self", b.call("aten.isnan.default", x), nan_code, code)


def _to_e8m0(b, x, saturate: bool, round_mode: str):
    """Float values as FLOAT8E8M0 (their float32 exponent, rounded as ``round_mode`` says)."""
    if round_mode not in ("up", "down", "nearest"):
        raise b.fail(f"round_mode {round_mode!r} is not one of up, down, nearest")
    bits = b.call("aten.view.dtype", b.cast(x, torch.float32), torch.int32)
    exponent = b.call("aten.bitwise_and.Scalar", b.call("aten.bitwise_right_shift.Tensor_Scalar", bits, 23), 0xFF)
    special = b.call("aten.eq.Scalar", exponent, 0xFF)  # NaN and infinity
    if round_mode == "up":
        up = b.call("aten.ne.Scalar", b.call("aten.bitwise_and.Scalar", bits, 0x7FFFFF), 0)
    elif round_mode == "nearest":  # as onnx.numpy_helper.to_float8e8m0 rounds
        def bit(mask):
            return b.call("aten.ne.Scalar", b.call("aten.bitwise_and.Scalar", bits, mask), 0)
        rest = b.call("aten.logical_or.default", b.call("aten.logical_or.default", bit(0x200000), bit(0x1FFFFF)),
                      b.call("aten.gt.Scalar", exponent, 0))
        up = b.call("aten.logical_and.default", bit(0x400000), rest)
    else:
        up = None
    if up is not None:
        up = b.call("aten.logical_and.default", up, b.call("aten.logical_not.default", special))
        if saturate:
            up = b.call("aten.logical_and.default", up, b.call("aten.ne.Scalar", exponent, 0xFE))
        exponent = b.call("aten.add.Tensor", exponent, b.cast(up, torch.int32))
    code = b.cast(exponent, torch.uint8)
    return b.call("aten.view.dtype", code, torch.float8_e8m0fnu)


# ---------------------------------------------------------------- the ops
def _cast_attrs(b):
    return bool(b.attr("saturate", 1)), b.attr("round_mode", "up")


def claim_cast(attrs, types, opset, ranks):
    to = attrs.get("to")
    if to is not None and to not in ONNX_DTYPES and to not in CARRIED_DTYPES:
        return f"target type {onnx_type_name(to)} not supported"
    if to in (14, 15) or any(t in (14, 15) for t in types if t):
        return "complex casts"
    if 16 in types or to == 16:
        return "bfloat16 rounding differs"
    return None


@onnx_op("Cast", claim=claim_cast)
def lower_cast(b, x):
    to = b.attr("to")
    torch_dtype_of(to, f"Cast target of node {b.name!r}")  # a clear error for a type memplan cannot hold
    saturate, mode = _cast_attrs(b)
    b.out_elem_types[0] = to
    return convert(b, x, elem_type_of(b, 0, x), to, saturate=saturate, round_mode=mode)


@onnx_op("CastLike", claim=claim_cast)
def lower_cast_like(b, x, like):
    to = elem_type_of(b, 1, like)
    saturate, mode = _cast_attrs(b)
    b.out_elem_types[0] = to
    return convert(b, x, elem_type_of(b, 0, x), to, saturate=saturate, round_mode=mode)


def claim_bitcast(attrs, types, opset, ranks):
    to, src = attrs.get("to"), types[0] if types else None
    if to in CARRIED_DTYPES or src in CARRIED_DTYPES:
        return "4- and 2-bit types are held unpacked"
    if to not in ONNX_DTYPES or (src is not None and src not in ONNX_DTYPES):
        return "type not supported"
    return None


@onnx_op("BitCast", claim=claim_bitcast)
def lower_bitcast(b, x):
    to = b.attr("to")
    dtype = torch_dtype_of(to, f"BitCast target of node {b.name!r}")
    if to in CARRIED_DTYPES or elem_type_of(b, 0, x) in CARRIED_DTYPES:
        raise b.fail("4- and 2-bit types are held one value per byte; their bits cannot be reinterpreted")
    src = dtype_of(x)
    if src.itemsize != dtype.itemsize:
        raise b.fail(f"BitCast from {src} to {dtype}: the element sizes differ ({src.itemsize} and "
                     f"{dtype.itemsize} bytes)")
    if src == dtype:
        return x
    if src == torch.bool or dtype == torch.bool:  # a bool's byte must be 0 or 1: through uint8
        if src == torch.bool:
            x = b.cast(x, torch.uint8)
            return x if dtype == torch.uint8 else b.call("aten.view.dtype", x, dtype)
        u = b.call("aten.view.dtype", x, torch.uint8) if src != torch.uint8 else x
        return b.call("aten.ne.Scalar", u, 0)
    return b.call("aten.view.dtype", x, dtype)


__all__ = ["convert", "elem_type_of"]
