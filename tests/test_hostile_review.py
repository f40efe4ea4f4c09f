"""What a hostile review of the hardening found, each a regression test."""
import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch

import memplan
from memplan.errors import IRVerificationError, MemplanError, ModelLoadError, PlanVerificationError
from memplan.ir.parser import parse
from memplan.ir.verify import verify

FAST = {"measure_scratch": False}


def _model(nodes, inputs, outputs, opset=17, initializers=()):
    graph = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


@pytest.mark.parametrize("op,extra", [("Flatten", {}), ("Squeeze", None), ("Reshape", [-1])])
def test_onnx_output_that_is_a_reshape_of_the_input_is_fresh(op, extra):
    inits = []
    ins = ["x"]
    if op == "Reshape":
        inits = [onnx.numpy_helper.from_array(np.array(extra, dtype=np.int64), "shape")]
        ins.append("shape")
    x_shape = [1, 6] if op == "Squeeze" else [2, 3]
    model = _model([oh.make_node(op, ins, ["y"], **(extra if isinstance(extra, dict) else {}))],
                   [oh.make_tensor_value_info("x", 1, x_shape)], [oh.make_tensor_value_info("y", 1, None)],
                   initializers=inits)
    x = torch.randn(*x_shape)
    cm = memplan.compile(model, (x,), options=FAST)
    y = cm(x)
    before = x.clone()
    y.zero_()
    assert torch.equal(x, before), f"{op}: writing the output changed the input"


def test_onnx_outputs_that_view_each_other_are_fresh():
    model = _model([oh.make_node("Mul", ["x", "x"], ["a"]), oh.make_node("Flatten", ["a"], ["b"])],
                   [oh.make_tensor_value_info("x", 1, [2, 3])],
                   [oh.make_tensor_value_info("a", 1, None), oh.make_tensor_value_info("b", 1, None)])
    x = torch.randn(2, 3)
    a, b = memplan.compile(model, (x,), options=FAST)(x)
    a.zero_()
    torch.testing.assert_close(b, (x * x).flatten(1))


def test_conv_weight_as_its_own_residual():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)

        def forward(self, x):
            return self.c(x) + self.c.weight
    m = M().eval()
    x = torch.randn(8, 8, 3, 3)
    torch.testing.assert_close(memplan.compile(m, (x,), options=FAST)(x), m(x))


def test_ir_that_overwrites_an_input_is_rejected():
    text = """graph g(%x: f32[2, 3]) {
  %y: f32[2, 3] = aten.relu.default(%x) reuses(%x)
  return %y
}"""
    with pytest.raises(IRVerificationError, match="inputs and weights are never overwritten"):
        verify(parse(text))
    with pytest.raises(PlanVerificationError, match="graph input or weight"):
        memplan.compile(parse(text), pipeline=["schedule", "allocate"])


def test_invalid_onnx_files_give_typed_errors():
    relu = [oh.make_node("Relu", ["x"], ["y"])]
    io = ([oh.make_tensor_value_info("x", 1, [2])], [oh.make_tensor_value_info("y", 1, None)])
    with pytest.raises(ModelLoadError, match="opsets start at 1"):
        memplan.compile(_model(relu, *io, opset=-5))
    nameless = _model([oh.make_node("Relu", [""], ["y"])], [oh.make_tensor_value_info("", 1, [2])], io[1])
    with pytest.raises(ModelLoadError, match="empty name"):
        memplan.compile(nameless)
    wrong_type = _model([oh.make_node("Softmax", ["x"], ["y"], axis="one")], *io)
    with pytest.raises(MemplanError):
        memplan.compile(wrong_type)


def test_long_chains_plan_in_near_linear_time():
    # 3,000 in-place relus: the inplace pass once rebuilt each storage's reader set per node (O(n^2))
    n = 3000
    nodes = [oh.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    model = _model(nodes, [oh.make_tensor_value_info("t0", 1, [4, 4])], [oh.make_tensor_value_info(f"t{n}", 1, None)])
    cm = memplan.compile(model, options=FAST)
    x = torch.randn(4, 4)
    assert torch.equal(cm(x), x.relu())
    # every relu but the first (it reads the input) and the last (a graph output) writes in place
    assert sum(1 for node in cm.graph.nodes if node.reuses is not None) == n - 2


@pytest.mark.parametrize("op,attrs,shape", [("Softmax", {"axis": 7}, [2, 3]), ("Concat", {"axis": -3}, [2, 3]),
                                            ("Flatten", {"axis": 3}, [2, 3])])
def test_axis_out_of_range_is_a_typed_error(op, attrs, shape):
    model = _model([oh.make_node(op, ["x"], ["y"], **attrs)], [oh.make_tensor_value_info("x", 1, shape)],
                   [oh.make_tensor_value_info("y", 1, None)])
    with pytest.raises(MemplanError, match="out of range"):
        memplan.compile(model, options=FAST)


def test_flatten_axis_equal_to_rank_is_legal():
    model = _model([oh.make_node("Flatten", ["x"], ["y"], axis=2)], [oh.make_tensor_value_info("x", 1, [2, 3])],
                   [oh.make_tensor_value_info("y", 1, None)])
    x = torch.randn(2, 3)
    assert memplan.compile(model, options=FAST)(x).shape == (6, 1)
