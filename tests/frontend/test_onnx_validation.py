"""ONNX models that ONNX itself (and onnxruntime) rejects are rejected by memplan too, with an error
naming the node, value or opset (issue #8, defects 13 and 14); duplicated graph outputs come back
as onnxruntime returns them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import memplan
from memplan.errors import InputMismatchError, ModelLoadError
from memplan.frontend.onnx import from_onnx, newest_opset

ort = pytest.importorskip("onnxruntime")


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vi(name, dims=(2, 3)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims) if dims is not None else None)


X, Y = vi("x"), vi("y", None)
W = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")


def ort_rejects(model) -> bool:
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return True
    return False


INVALID = {
    "two nodes write one name": (
        make_model([helper.make_node("Relu", ["x"], ["y"], name="first"),
                    helper.make_node("Neg", ["x"], ["y"], name="second")], [X], [Y]),
        ["node 'second' (Neg) writes 'y'", "node 'first' (Relu) already defines"]),
    "a node output shadows a graph input": (
        make_model([helper.make_node("Relu", ["x"], ["x"], name="shadow"),
                    helper.make_node("Neg", ["x"], ["y"], name="use")], [X], [Y]),
        ["node 'shadow' (Relu) writes 'x'", "a graph input"]),
    "a node output shadows an initializer": (
        make_model([helper.make_node("Relu", ["x"], ["w"], name="shadow"),
                    helper.make_node("Add", ["x", "w"], ["y"], name="use")], [X], [Y], [W]),
        ["node 'shadow' (Relu) writes 'w'", "an initializer"]),
    "opset 99": (
        make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [X], [Y], opset=99),
        ["opset 99", f"newest opset memplan knows is {newest_opset()}"]),
    "no outputs": (
        make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [X], []),
        ["graph 'g' has no outputs"]),
    "a graph input declared twice": (
        make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [X, X], [Y]),
        ["graph input 'x' is declared twice"]),
    "a read of an undefined value": (
        make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="use")], [X], [Y]),
        ["node 'use' (Add) reads 'ghost'"]),
    "an output nothing produces": (
        make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [X], [Y, vi("z", None)]),
        ["graph output 'z'"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_models_are_rejected_like_onnxruntime(case):
    model, fragments = INVALID[case]
    if case != "no outputs":  # onnxruntime loads that one, and fails on every run
        assert ort_rejects(model)
    with pytest.raises(ModelLoadError) as info:
        from_onnx(model)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_newest_known_opset_is_accepted_and_one_more_is_not():
    relu = [helper.make_node("Relu", ["x"], ["y"], name="act")]
    assert from_onnx(make_model(relu, [X], [Y], opset=newest_opset())).outputs
    with pytest.raises(ModelLoadError, match=f"opset {newest_opset() + 1}"):
        from_onnx(make_model(relu, [X], [Y], opset=newest_opset() + 1))


def test_duplicated_graph_outputs_are_separate_tensors_like_onnxruntime():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [X], [Y, Y])
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 3
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    first, second = memplan.compile(model)(torch.from_numpy(x))
    for ours, ref in zip((first, second), expected):
        np.testing.assert_array_equal(ours.numpy(), ref)
    assert first.data_ptr() != second.data_ptr()
    first.add_(1)  # the caller owns each output: changing one leaves the other alone
    np.testing.assert_array_equal(second.numpy(), expected[1])


@pytest.mark.parametrize("dims,error,fragment", [
    ([-5, 3], ModelLoadError, "dim -5 at axis 0"),
    ([2**40, 2**40], ModelLoadError, "2**53 bytes"),
    ([9223372036854775807, 2], ModelLoadError, "2**53 bytes"),
])
def test_impossible_declared_shapes_are_rejected(dims, error, fragment):
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [vi("x", dims)], [Y])
    with pytest.raises(error, match=fragment.replace("*", r"\*")):
        from_onnx(model)


def test_impossible_example_shape_is_rejected():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="act")], [vi("x", ["N", 4])], [Y])
    with pytest.raises(InputMismatchError, match="example input 'x'"):
        from_onnx(model, {"x": (2**60, 4)})


# ---------------------------------------------------------------- constants a file only claims
def _constant_of_shape_model(n):
    shape = numpy_helper.from_array(np.array([n, n], np.int64), "shape")
    one = numpy_helper.from_array(np.array([1.5], np.float32), "value")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"], value=one, name="fill"),
             helper.make_node("Add", ["x", "c"], ["y"], name="use")]
    return make_model(nodes, [vi("x", [1])], [Y], [shape])


def test_a_huge_claimed_constant_is_not_allocated_while_importing():
    """ConstantOfShape claiming 100000 x 100000 floats (37 GiB): a view of one value, not a fold."""
    graph = from_onnx(_constant_of_shape_model(100_000))
    assert sum(t.numel() * t.element_size() for t in graph.weights.values()) < 64
    with pytest.raises(memplan.BudgetInfeasibleError, match="tier 'flash'"):
        memplan.compile(_constant_of_shape_model(100_000), target="mcu")


def test_constants_above_the_fold_limit_still_compute_like_onnxruntime(monkeypatch):
    import memplan.frontend.onnx as frontend
    monkeypatch.setattr(frontend, "FOLD_LIMIT", 1024)
    model = _constant_of_shape_model(64)
    graph = from_onnx(model)
    assert any(n.op == "aten.expand.default" for n in graph.nodes)
    x = np.array([2.0], np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(memplan.compile(model)(torch.from_numpy(x)).numpy(), expected[0])


def test_a_huge_claimed_range_is_refused_by_name():
    inits = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
             (("start", 0), ("limit", 10**12), ("delta", 1))]
    model = make_model([helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="big_range"),
                        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT, name="cast")],
                       [], [Y], inits)
    with pytest.raises(memplan.UnsupportedOpError, match="node 'big_range'.*the range would hold"):
        from_onnx(model)
