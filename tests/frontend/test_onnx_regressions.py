"""Regressions from a hostile review of the ONNX frontend's recurrent, quantized, control-flow and
function-op lowerings: each case is compared with onnxruntime (or the spec where the reference is
wrong)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto as TP
from onnx import numpy_helper

from memplan.errors import MemplanError
from memplan.testing.onnx_backend import MemplanBackend, claim_reason

ort = pytest.importorskip("onnxruntime")
vi = oh.make_tensor_value_info
rng = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=21):
    return oh.make_model(oh.make_graph(nodes, "g", inputs, outputs, initializer=list(inits)),
                         opset_imports=[oh.make_opsetid("", opset)])


def _ort(m, feeds):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _init(name, a):
    return numpy_helper.from_array(a, name)


@pytest.mark.parametrize("op,gates", [("RNN", 1), ("GRU", 3), ("LSTM", 4)])
@pytest.mark.parametrize("direction,batch", [("forward", 3), ("bidirectional", 2)])
def test_batch_first_initial_states(op, gates, direction, batch):
    seq, inp, hid = 4, 2, 5
    dirs = 2 if direction == "bidirectional" else 1
    w = rng.standard_normal((dirs, gates * hid, inp)).astype(np.float32)
    r = rng.standard_normal((dirs, gates * hid, hid)).astype(np.float32)
    x = rng.standard_normal((batch, seq, inp)).astype(np.float32)
    h0 = rng.standard_normal((batch, dirs, hid)).astype(np.float32)
    ins = ["X", "W", "R", "", "", "h0"] + (["c0"] if op == "LSTM" else [])
    outs = ["Y", "Yh"]
    node = oh.make_node(op, ins, outs, hidden_size=hid, layout=1, direction=direction)
    inputs = [vi("X", TP.FLOAT, list(x.shape)), vi("h0", TP.FLOAT, list(h0.shape))]
    feeds = {"X": x, "h0": h0}
    if op == "LSTM":
        inputs.append(vi("c0", TP.FLOAT, list(h0.shape)))
        feeds["c0"] = rng.standard_normal(h0.shape).astype(np.float32)
    m = _model([node], inputs, [vi("Y", TP.FLOAT, None), vi("Yh", TP.FLOAT, None)], [_init("W", w), _init("R", r)])
    ours = MemplanBackend.prepare(m).run([feeds[i.name] for i in inputs])
    # onnxruntime runs layout 0: the same model on transposed data
    m0 = _model([oh.make_node(op, ins, outs, hidden_size=hid, direction=direction)],
                [vi(i.name, TP.FLOAT, None) for i in inputs], [vi("Y", TP.FLOAT, None), vi("Yh", TP.FLOAT, None)],
                [_init("W", w), _init("R", r)])
    ref = _ort(m0, {"X": x.transpose(1, 0, 2), **{k: v.transpose(1, 0, 2) for k, v in feeds.items() if k != "X"}})
    np.testing.assert_allclose(ours[0], ref[0].transpose(2, 0, 1, 3), atol=1e-5)
    np.testing.assert_allclose(ours[1], ref[1].transpose(1, 0, 2), atol=1e-5)


def test_quantize_saturates_past_int32():
    x = np.array([3e4, -3e4, 1000.0, np.inf], np.float32)
    m = _model([oh.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], [vi("x", TP.FLOAT, [4])],
               [vi("y", TP.INT8, [4])], [_init("s", np.array(1e-5, np.float32)), _init("z", np.array(0, np.int8))])
    assert MemplanBackend.prepare(m).run([x])[0].tolist() == [127, -128, 127, 127]


def test_loop_body_returning_a_constant():
    body = oh.make_graph([oh.make_node("Identity", ["c"], ["co"]), oh.make_node("Add", ["s", "one"], ["so"]),
                          oh.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([7.0], np.float32)))],
                         "b", [vi("i", TP.INT64, []), vi("c", TP.BOOL, []), vi("s", TP.FLOAT, [1])],
                         [vi("co", TP.BOOL, []), vi("so", TP.FLOAT, [1]), vi("k", TP.FLOAT, [1])],
                         initializer=[_init("one", np.array([1.0], np.float32))])
    m = _model([oh.make_node("Loop", ["n", "t", "s0"], ["s", "ks"], body=body)], [vi("s0", TP.FLOAT, [1])],
               [vi("s", TP.FLOAT, [1]), vi("ks", TP.FLOAT, [3, 1])],
               [_init("n", np.array(3, np.int64)), _init("t", np.array(True))])
    s0 = np.array([0.5], np.float32)
    ours = MemplanBackend.prepare(m).run([s0])
    ref = _ort(m, {"s0": s0})
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])


def test_dilated_conv_integer():
    x = rng.integers(0, 255, (1, 2, 9, 9)).astype(np.uint8)
    w = rng.integers(-128, 127, (3, 2, 3, 3)).astype(np.int8)
    m = _model([oh.make_node("ConvInteger", ["x", "w", "xz"], ["y"], dilations=[2, 2], pads=[1, 1, 1, 1])],
               [vi("x", TP.UINT8, list(x.shape))], [vi("y", TP.INT32, None)],
               [_init("w", w), _init("xz", np.array(7, np.uint8))])
    np.testing.assert_array_equal(MemplanBackend.prepare(m).run([x])[0], _ort(m, {"x": x})[0])


def test_function_body_names_do_not_meet_the_graph():
    """An op lowered through its schema's function keeps the body's value names to itself: an outer
    value that happens to share one (with another type) changes nothing."""
    from memplan.frontend.onnx_functions import function_body
    a = rng.standard_normal((2, 4)).astype(np.float32)
    g = rng.standard_normal((2, 4)).astype(np.float32)
    node = oh.make_node("SwiGLU", ["a", "g"], ["y"])
    proto, _ = function_body(node, 28, [None, None], [TP.FLOAT, TP.FLOAT])
    inner = next(o for n in proto.node for o in n.output if o not in proto.output)  # "SwishGate"
    m = _model([node, oh.make_node("Shape", ["a"], [inner])], [vi("a", TP.FLOAT, [2, 4]), vi("g", TP.FLOAT, [2, 4])],
               [vi("y", TP.FLOAT, None), vi(inner, TP.INT64, None)], opset=28)
    ours = MemplanBackend.prepare(m).run([a, g])
    assert ours[1].tolist() == [2, 4]
    np.testing.assert_allclose(ours[0], a / (1 + np.exp(-a)) * g, rtol=1e-5, atol=1e-6)


def test_affine_grid_batch_one():
    theta = rng.standard_normal((1, 2, 3)).astype(np.float32)
    m = _model([oh.make_node("AffineGrid", ["t", "sz"], ["g"], align_corners=1)], [vi("t", TP.FLOAT, [1, 2, 3])],
               [vi("g", TP.FLOAT, None)], [_init("sz", np.array([1, 1, 4, 5], np.int64))], opset=20)
    np.testing.assert_allclose(MemplanBackend.prepare(m).run([theta])[0], _ort(m, {"t": theta})[0], atol=1e-6)


def _sliced_loop(trips):
    body = oh.make_graph([
        oh.make_node("Identity", ["c"], ["co"]),
        oh.make_node("Unsqueeze", ["i", "ax"], ["st"]), oh.make_node("Add", ["st", "one"], ["en"]),
        oh.make_node("Slice", ["xs", "st", "en"], ["piece"]), oh.make_node("Add", ["s", "piece"], ["so"])],
        "b", [vi("i", TP.INT64, []), vi("c", TP.BOOL, []), vi("s", TP.FLOAT, [1])],
        [vi("co", TP.BOOL, []), vi("so", TP.FLOAT, [1])],
        initializer=[_init("ax", np.array([0], np.int64)), _init("one", np.array([1], np.int64))])
    return _model([oh.make_node("Loop", ["n", "t", "s0"], ["s"], body=body)], [vi("s0", TP.FLOAT, [1])],
                  [vi("s", TP.FLOAT, [1])],
                  [_init("n", np.array(trips, np.int64)), _init("t", np.array(True)),
                   _init("xs", np.arange(max(trips, 1), dtype=np.float32))])


def test_unrolled_loop_small_and_refused_large():
    s0 = np.array([0.0], np.float32)
    np.testing.assert_array_equal(MemplanBackend.prepare(_sliced_loop(5)).run([s0])[0], [10.0])
    with pytest.raises(MemplanError, match="more than memplan unrolls"):
        MemplanBackend.prepare(_sliced_loop(2 ** 20)).run([s0])


def test_loop_with_a_computed_condition_is_not_claimed():
    body = oh.make_graph([oh.make_node("Less", ["s", "lim"], ["co"]), oh.make_node("Add", ["s", "one"], ["so"])],
                         "b", [vi("i", TP.INT64, []), vi("c", TP.BOOL, []), vi("s", TP.FLOAT, [])],
                         [vi("co", TP.BOOL, []), vi("so", TP.FLOAT, [])],
                         initializer=[_init("lim", np.array(3.0, np.float32)), _init("one", np.array(1.0, np.float32))])
    m = _model([oh.make_node("Loop", ["n", "t", "s0"], ["s"], body=body)], [vi("s0", TP.FLOAT, [])],
               [vi("s", TP.FLOAT, [])], [_init("n", np.array(10, np.int64)), _init("t", np.array(True))])
    assert "condition" in claim_reason(m)
    with pytest.raises(MemplanError, match="depends on the data"):
        MemplanBackend.prepare(m).run([np.array(0.0, np.float32)])


def test_reverse_rnn_with_sequence_lens_is_not_claimed():
    w = np.zeros((1, 4, 2), np.float32)
    m = _model([oh.make_node("RNN", ["X", "W", "R", "", "L"], ["Y"], hidden_size=4, direction="reverse")],
               [vi("X", TP.FLOAT, [3, 2, 2]), vi("L", TP.INT32, [2])], [vi("Y", TP.FLOAT, None)],
               [_init("W", w), _init("R", np.zeros((1, 4, 4), np.float32))])
    assert "sequence_lens" in claim_reason(m)


def test_float4_scalar():
    import ml_dtypes
    from memplan.frontend.onnx_common import array_to_tensor
    t = array_to_tensor(np.array(1.5, ml_dtypes.float4_e2m1fn))
    assert t.shape == () and int(t) == 3
