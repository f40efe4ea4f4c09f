"""Every ONNX element type memplan holds, end to end (import, plan, emitted code, run):

- casts to and from the 8-bit floats, FLOAT8E8M0, the 4- and 2-bit integers and FLOAT4E2M1,
  against onnx's reference (ml_dtypes and onnx.numpy_helper), on every float16 value and on
  float32 values across the whole range;
- uint16/32/64 arithmetic against numpy on values across the whole range (2**63 and above
  included, where int64 arithmetic would be wrong).
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto as TP
from onnx import numpy_helper

from memplan.testing.onnx_backend import MemplanBackend, claim_reason

ALL_F16 = np.arange(65536, dtype=np.uint16).view(np.float16)
_rng = np.random.default_rng(0)
SOME_F32 = np.concatenate([
    (_rng.standard_normal(20000) * 10.0 ** _rng.integers(-40, 39, 20000)).astype(np.float32),
    np.array([0, -0.0, np.inf, -np.inf, np.nan, 448, 464, 464.01, 480, 240, 248, 57344, 61440, 61439.9, 1e-40,
              6, 5, 5.01, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, -3.5], np.float32)])


def _model(node, inputs, outputs, opset=25):
    graph = oh.make_graph([node], "g", inputs, outputs)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _run_cast(x: np.ndarray, to: int, **attrs):
    src = oh.np_dtype_to_tensor_dtype(x.dtype)
    m = _model(oh.make_node("Cast", ["x"], ["y"], to=to, **attrs),
               [oh.make_tensor_value_info("x", src, list(x.shape))], [oh.make_tensor_value_info("y", to, list(x.shape))])
    assert claim_reason(m) is None
    return MemplanBackend.prepare(m).run([x])[0]


def _same_bits(ours: np.ndarray, ref: np.ndarray):
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    a, b = ours.view(np.uint8), ref.view(np.uint8)
    fa = ours.astype(np.float32)
    nan = np.isnan(fa) & np.isnan(ref.astype(np.float32))
    bad = np.nonzero((a != b) & ~nan)[0]
    assert len(bad) == 0, f"{len(bad)} differ, e.g. {ref[bad[:5]]} vs {ours[bad[:5]]}"


F8 = [(TP.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn), (TP.FLOAT8E4M3FNUZ, ml_dtypes.float8_e4m3fnuz),
      (TP.FLOAT8E5M2, ml_dtypes.float8_e5m2), (TP.FLOAT8E5M2FNUZ, ml_dtypes.float8_e5m2fnuz)]


@pytest.mark.parametrize("src", [ALL_F16, SOME_F32], ids=["f16", "f32"])
@pytest.mark.parametrize("to,ml", F8, ids=[str(t) for t, _ in F8])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_float8(src, to, ml, saturate):
    ours = _run_cast(src, to, saturate=saturate)
    ref = numpy_helper.saturate_cast(src, ml) if saturate else src.astype(ml)
    _same_bits(ours, ref)


@pytest.mark.parametrize("to,ml", F8, ids=[str(t) for t, _ in F8])
def test_cast_from_float8(to, ml):
    codes = np.arange(256, dtype=np.uint8).view(ml)
    for target in (TP.FLOAT, TP.FLOAT16, TP.INT32):
        ours = _run_cast(codes, target)
        with np.errstate(invalid="ignore"):
            ref = codes.astype(oh.tensor_dtype_to_np_dtype(target))
        if target == TP.INT32:
            finite = np.isfinite(codes.astype(np.float32))
            np.testing.assert_array_equal(ours[finite], ref[finite])
        else:
            np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_e8m0(mode, saturate):
    x = np.abs(SOME_F32)
    ours = _run_cast(x, TP.FLOAT8E8M0, saturate=saturate, round_mode=mode)
    _same_bits(ours, numpy_helper.to_float8e8m0(x, bool(saturate), mode))
    back = _run_cast(ours, TP.FLOAT)
    np.testing.assert_array_equal(back, ours.astype(np.float32))


SMALL_INTS = [(TP.INT4, ml_dtypes.int4), (TP.UINT4, ml_dtypes.uint4), (TP.INT2, ml_dtypes.int2),
              (TP.UINT2, ml_dtypes.uint2)]


@pytest.mark.parametrize("to,ml", SMALL_INTS, ids=[str(t) for t, _ in SMALL_INTS])
def test_cast_small_ints(to, ml):
    floats = np.concatenate([np.arange(-20, 20, 0.25), [np.nan, np.inf, -np.inf, 1e30, -1e30]]).astype(np.float32)
    with np.errstate(invalid="ignore"):
        ref = floats.astype(ml)
    ours = _run_cast(floats, to)
    np.testing.assert_array_equal(ours.astype(np.int32), ref.astype(np.int32))
    assert ours.dtype == ref.dtype
    ints = np.arange(-300, 300, dtype=np.int32)
    np.testing.assert_array_equal(_run_cast(ints, to).astype(np.int32), ints.astype(ml).astype(np.int32))
    values = np.array(list(range(int(ml_dtypes.iinfo(ml).min), int(ml_dtypes.iinfo(ml).max) + 1)), dtype=ml)
    for target in (TP.FLOAT, TP.INT8 if to in (TP.INT4, TP.INT2) else TP.UINT8):
        np.testing.assert_array_equal(_run_cast(values, target),
                                      values.astype(oh.tensor_dtype_to_np_dtype(target)))


def test_cast_float4():
    ours = _run_cast(ALL_F16, TP.FLOAT4E2M1)
    with np.errstate(invalid="ignore"):
        ref = ALL_F16.astype(ml_dtypes.float4_e2m1fn)
    _same_bits(ours, ref)
    _same_bits(_run_cast(SOME_F32, TP.FLOAT4E2M1), SOME_F32.astype(ml_dtypes.float4_e2m1fn))
    codes = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn)
    np.testing.assert_array_equal(_run_cast(codes, TP.FLOAT), codes.astype(np.float32))
    np.testing.assert_array_equal(_run_cast(codes, TP.FLOAT16), codes.astype(np.float16))


def test_castlike_reads_the_type_of_like():
    x = np.array([0.3, 2.6, -7.2, 100.0], np.float32)
    like = np.zeros(1, ml_dtypes.int4)
    m = _model(oh.make_node("CastLike", ["x", "like"], ["y"]),
               [oh.make_tensor_value_info("x", TP.FLOAT, [4]), oh.make_tensor_value_info("like", TP.INT4, [1])],
               [oh.make_tensor_value_info("y", TP.INT4, [4])])
    out = MemplanBackend.prepare(m).run([x, like])[0]
    assert out.dtype == ml_dtypes.int4 and out.astype(np.int32).tolist() == [0, 2, -7, 0]


def test_narrow_types_are_claimed_for_casts_and_layout_only():
    vi = oh.make_tensor_value_info
    add = _model(oh.make_node("Add", ["x", "x"], ["y"]), [vi("x", TP.FLOAT8E4M3FN, [2])],
                 [vi("y", TP.FLOAT8E4M3FN, [2])])
    assert "Add on element type" in claim_reason(add)
    reshape = _model(oh.make_node("Transpose", ["x"], ["y"]), [vi("x", TP.INT4, [2, 3])], [vi("y", TP.INT4, [3, 2])])
    assert claim_reason(reshape) is None
    x = np.arange(-3, 3, dtype=np.int8).reshape(2, 3).astype(ml_dtypes.int4)
    out = MemplanBackend.prepare(reshape).run([x])[0]
    assert out.dtype == ml_dtypes.int4 and np.array_equal(out.astype(np.int8), x.astype(np.int8).T)


# ---------------------------------------------------------------- uint16/32/64 arithmetic
def _full_range(dtype, n=4000):
    info = np.iinfo(dtype)
    edges = np.array([0, 1, 2, info.max, info.max - 1, info.max // 2, info.max // 2 + 1, 3, 7], dtype=dtype)
    rand = _rng.integers(0, int(info.max), n, dtype=np.uint64, endpoint=True).astype(dtype)
    small = _rng.integers(0, 300, n // 4).astype(dtype)
    return np.concatenate([edges, rand, small])


BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": None, "Mod": None,
          "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal,
          "Equal": np.equal, "Max": np.maximum, "Min": np.minimum, "BitwiseAnd": np.bitwise_and,
          "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor}


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("op", list(BINARY))
def test_unsigned_binary(dtype, op):
    x = _full_range(dtype)
    y = np.roll(_full_range(dtype), 7)
    if op in ("Div", "Mod"):
        y = np.where(y == 0, dtype(1), y).astype(dtype)
    elem = oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
    out_elem = TP.BOOL if BINARY[op] in (np.greater, np.less, np.greater_equal, np.less_equal, np.equal) else elem
    vi = oh.make_tensor_value_info
    m = _model(oh.make_node(op, ["x", "y"], ["z"]), [vi("x", elem, [len(x)]), vi("y", elem, [len(y)])],
               [vi("z", out_elem, [len(x)])], opset=18)
    assert claim_reason(m) is None
    ours = MemplanBackend.prepare(m).run([x, y])[0]
    with np.errstate(over="ignore"):
        ref = {"Div": lambda a, c: a // c, "Mod": lambda a, c: a % c}.get(op, BINARY[op])(x, y)
    assert ours.dtype == ref.dtype
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_unsigned_bitshift(dtype, direction):
    bits = np.dtype(dtype).itemsize * 8
    x = _full_range(dtype)
    s = (np.arange(len(x)) % bits).astype(dtype)
    elem = oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
    vi = oh.make_tensor_value_info
    m = _model(oh.make_node("BitShift", ["x", "s"], ["z"], direction=direction),
               [vi("x", elem, [len(x)]), vi("s", elem, [len(x)])], [vi("z", elem, [len(x)])], opset=18)
    ours = MemplanBackend.prepare(m).run([x, s])[0]
    ref = np.left_shift(x, s) if direction == "LEFT" else np.right_shift(x, s)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_unsigned_topk(dtype):
    x = _full_range(dtype, 400)[:300].reshape(3, 100)
    elem = oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
    vi = oh.make_tensor_value_info
    k = numpy_helper.from_array(np.array([5], np.int64), "k")
    graph = oh.make_graph([oh.make_node("TopK", ["x", "k"], ["v", "i"])], "g", [vi("x", elem, [3, 100])],
                          [vi("v", elem, [3, 5]), vi("i", TP.INT64, [3, 5])], initializer=[k])
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    v, i = MemplanBackend.prepare(m).run([x])
    np.testing.assert_array_equal(v, np.sort(x, axis=1)[:, ::-1][:, :5])
    np.testing.assert_array_equal(np.take_along_axis(x, i, 1), v)


def test_bitcast():
    x = np.array([1.5, -2.0, np.inf, np.nan], np.float32)
    vi = oh.make_tensor_value_info
    m = _model(oh.make_node("BitCast", ["x"], ["y"], to=TP.INT32), [vi("x", TP.FLOAT, [4])], [vi("y", TP.INT32, [4])],
               opset=26)
    np.testing.assert_array_equal(MemplanBackend.prepare(m).run([x])[0], x.view(np.int32))
    bad = _model(oh.make_node("BitCast", ["x"], ["y"], to=TP.INT64), [vi("x", TP.FLOAT, [4])],
                 [vi("y", TP.INT64, [2])], opset=26)
    with pytest.raises(Exception, match="element sizes differ"):
        MemplanBackend.prepare(bad)
