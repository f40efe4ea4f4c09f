"""Arithmetic on uint16, uint32 and uint64 tensors, which aten holds but mostly cannot compute.

``NodeBuilder.call`` sends an op of :data:`OPS` with an unsigned tensor argument here. The
tensors stay unsigned in the arena; only the op is computed in int64:

- uint16 and uint32 are widened to int64 (exact), the op runs, and a result of the input's kind
  is cast back, which wraps modulo 2**16 / 2**32 as unsigned arithmetic does.
- uint64 is *reinterpreted* as int64 (``view.dtype``, no copy). Addition, subtraction,
  multiplication, left shift and the bitwise ops are the same bits in two's complement. Order
  comparisons, maximum, minimum and top-k flip the sign bit first (``x ^ 2**63`` orders unsigned
  values as signed ones). Right shift is logical (masked). Division and remainder use the
  shift-and-correct method for an unsigned divide on a signed divider (Hacker's Delight 9-3).
"""
from __future__ import annotations

import torch

from memplan.ir.graph import Value

UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)
_SAME_BITS = frozenset({"aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.bitwise_and.Tensor",
                        "aten.bitwise_or.Tensor", "aten.bitwise_xor.Tensor", "aten.bitwise_not.default",
                        "aten.bitwise_left_shift.Tensor", "aten.neg.default"})
_EQUALITY = frozenset({"aten.eq.Tensor", "aten.ne.Tensor"})
_ORDER = {"aten.gt.Tensor", "aten.lt.Tensor", "aten.ge.Tensor", "aten.le.Tensor"}
_MINMAX = {"aten.maximum.default": "aten.gt.Tensor", "aten.minimum.default": "aten.lt.Tensor"}
_DIVIDE = frozenset({"aten.div.Tensor_mode", "aten.remainder.Tensor", "aten.fmod.Tensor",
                     "aten.floor_divide.default"})
OPS = _SAME_BITS | _EQUALITY | frozenset(_ORDER) | frozenset(_MINMAX) | _DIVIDE | frozenset(
    {"aten.bitwise_right_shift.Tensor", "aten.topk.default", "aten.pow.Tensor_Tensor"})
_SIGN = -(2 ** 63)


def _dtype(x):
    return x.dtype if isinstance(x, torch.Tensor) else x.type.torch_dtype


def unsigned_dtype(args) -> torch.dtype | None:
    """The unsigned dtype among the tensor arguments (None if there is none)."""
    for a in args:
        if _is_tensor(a) and _dtype(a) in UNSIGNED:
            return _dtype(a)
    return None


# ops whose aten kernels take unsigned tensors (copies, casts, selects, fills)
NATIVE = frozenset({"aten._to_copy.default", "aten.clone.default", "aten.where.self", "aten.constant_pad_nd.default",
                    "aten.expand.default", "aten.cat.default", "aten.stack.default", "aten.view.dtype",
                    "aten.full.default", "aten.eq.Scalar", "aten.ne.Scalar", "aten.sort.stable", "aten.sort.default"})


def needs_care(op: str, args) -> bool:
    """Does ``op`` on these arguments need computing other than by its own aten kernel?"""
    from memplan.ir.ops import lookup
    if unsigned_dtype(args) is None or op in NATIVE:
        return False
    if op in OPS:
        return True
    try:
        return not lookup(op).view
    except Exception:  # noqa: BLE001  (an unknown op: the registry's own error follows)
        return False


def call(b, op: str, args, kwargs):
    """``op`` on arguments of which at least one is a uint16/32/64 tensor."""
    dt = unsigned_dtype(args)
    if op not in OPS:
        return _moved(b, op, dt, args, kwargs)
    if op == "aten.pow.Tensor_Tensor":  # integer powers wrap like repeated multiplication: the same bits
        base = _dtype(args[0])
        wide = [(b.call("aten.view.dtype", a, torch.int64) if _dtype(a) == torch.uint64 else b.cast(a, torch.int64))
                if _is_tensor(a) and _dtype(a) in UNSIGNED else a for a in args]
        out = b.call(op, *wide, **kwargs)
        if base == torch.uint64:
            return _back(b, out)
        return b.cast(out, base) if base in UNSIGNED else out
    if dt != torch.uint64:
        wide = [b.cast(a, torch.int64) if _is_tensor(a) and _dtype(a) in UNSIGNED else a for a in args]
        out = b.call(op, *wide, **kwargs)
        if op == "aten.topk.default":
            return b.cast(out[0], dt), out[1]
        return b.cast(out, dt) if _dtype(out) == torch.int64 else out
    s = [b.call("aten.view.dtype", a, torch.int64) if _is_tensor(a) and _dtype(a) == torch.uint64 else a
         for a in args]
    if op in _SAME_BITS:
        return _back(b, b.call(op, *s, **kwargs))
    if op in _EQUALITY:
        return b.call(op, *s, **kwargs)
    if op in _ORDER:
        return b.call(op, _flip(b, s[0]), _flip(b, s[1]))
    if op in _MINMAX:
        pick = b.call(_MINMAX[op], _flip(b, s[0]), _flip(b, s[1]))
        return _back(b, b.call("aten.where.self", pick, s[0], s[1]))
    if op == "aten.topk.default":
        values, indices = b.call(op, _flip(b, s[0]), *s[1:], **kwargs)
        return _back(b, _flip(b, values)), indices
    if op == "aten.bitwise_right_shift.Tensor":
        return _back(b, _logical_right_shift(b, s[0], s[1]))
    q, r = _divmod(b, s[0], s[1])
    return _back(b, q if op in ("aten.div.Tensor_mode", "aten.floor_divide.default") else r)


def _moved(b, op: str, dt, args, kwargs):
    """A data-movement op (gather, flip, index_select, ...) on the values as int64 (uint16/32 widened,
    uint64 reinterpreted: the bits move unchanged) and back; any other op is refused."""
    from memplan.ir.opdef import OpKind
    from memplan.ir.ops import lookup
    if lookup(op).kind != OpKind.INJECTIVE:
        raise b.fail(f"{op} on {str(dt).replace('torch.', '')} tensors: aten has no kernel for it")
    wide = [(b.call("aten.view.dtype", a, torch.int64) if dt == torch.uint64 else b.cast(a, torch.int64))
            if _is_tensor(a) and _dtype(a) == dt else a for a in args]
    out = b.call(op, *wide, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    back = [(b.call("aten.view.dtype", o, dt) if dt == torch.uint64 else b.cast(o, dt))
            if _dtype(o) == torch.int64 else o for o in outs]
    return tuple(back) if isinstance(out, tuple) else back[0]


def _is_tensor(a) -> bool:
    return isinstance(a, (torch.Tensor, Value))


def _back(b, x):
    return b.call("aten.view.dtype", x, torch.uint64)


def _flip(b, x):
    """int64 bits of uint64 values, ordered as signed: ``x ^ 2**63``."""
    return b.call("aten.bitwise_xor.Tensor", x, torch.tensor(_SIGN, dtype=torch.int64))


def _ge_unsigned(b, x, y):
    return b.call("aten.ge.Tensor", _flip(b, x), _flip(b, y))


def _logical_right_shift(b, x, s):
    """``x >> s`` filling with zeros (shift counts 0..63)."""
    arith = b.call("aten.bitwise_right_shift.Tensor", x, s)
    one = torch.tensor(1, dtype=torch.int64)
    mask = b.call("aten.bitwise_right_shift.Tensor", torch.tensor(2 ** 63 - 1, dtype=torch.int64),
                  b.call("aten.clamp.default", b.call("aten.sub.Tensor", s, one), 0))
    shifted = b.call("aten.bitwise_and.Tensor", arith, mask)
    return b.call("aten.where.self", b.call("aten.eq.Scalar", s, 0), x, shifted)


def _divmod(b, a, d):
    """Unsigned 64-bit quotient and remainder of int64 bit patterns ``a`` and ``d``."""
    one = torch.tensor(1, dtype=torch.int64)
    # d >= 2**63: the quotient is 1 where a >= d, else 0
    big = b.call("aten.lt.Scalar", d, 0)
    q_big = b.cast(_ge_unsigned(b, a, d), torch.int64)
    # d < 2**63: q = ((a >>> 1) // d) << 1, then one correction step
    half = _logical_right_shift(b, a, one)
    safe_d = b.call("aten.where.self", big, one, d)  # the big lanes take q_big; keep them from dividing
    q = b.call("aten.bitwise_left_shift.Tensor", b.call("aten.div.Tensor_mode", half, safe_d, rounding_mode="trunc"),
               one)
    r = b.call("aten.sub.Tensor", a, b.call("aten.mul.Tensor", q, safe_d))
    q = b.call("aten.add.Tensor", q, b.cast(_ge_unsigned(b, r, safe_d), torch.int64))
    q = b.call("aten.where.self", big, q_big, q)
    r = b.call("aten.sub.Tensor", a, b.call("aten.mul.Tensor", q, d))
    return q, r


__all__ = ["OPS", "UNSIGNED", "call", "unsigned_dtype"]
