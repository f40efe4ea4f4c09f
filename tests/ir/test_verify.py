import pytest

from memplan.errors import IRVerificationError
from memplan.ir import Graph, TensorType
from memplan.ir.graph import Node, Value
from memplan.ir.verify import verify


def _graph():
    g = Graph("g")
    x = g.add_input("x", TensorType("f32", (2, 3)))
    (y,) = g.add_node("aten.relu.default", (x,), {}, [TensorType("f32", (2, 3))])
    g.outputs = [y]
    return g, x, y


def test_valid_graph_passes():
    g, _, _ = _graph()
    verify(g)


def test_wrong_output_shape_is_named():
    g, x, _ = _graph()
    (z,) = g.add_node("aten.sum.dim_IntList", (x, [1]), {}, [TensorType("f32", (2, 3))], name="bad_sum")
    g.outputs = [z]
    with pytest.raises(IRVerificationError, match=r"node bad_sum .*typed f32\[2, 3\] but the op gives f32\[2\]"):
        verify(g)


def test_use_before_definition_is_rejected():
    g, x, y = _graph()
    late = Value("late", TensorType("f32", (2, 3)))
    node = Node("late", "aten.relu.default", (x,), {}, (late,))
    late.producer = node
    (z,) = g.add_node("aten.add.Tensor", (y, late), {}, [TensorType("f32", (2, 3))])
    g.nodes.append(node)
    g.outputs = [z]
    with pytest.raises(IRVerificationError, match="reads %late before it is defined"):
        verify(g)


def test_unknown_op_is_rejected():
    g, x, _ = _graph()
    g.add_node("aten.nonzero.default", (x,), {}, [TensorType("i64", (6, 2))], name="nz")
    with pytest.raises(IRVerificationError, match="nonzero.*output shape depends on the data"):
        verify(g)


def test_bad_input_shape_for_op():
    g = Graph("g")
    a = g.add_input("a", TensorType("f32", (2, 3)))
    b = g.add_input("b", TensorType("f32", (4, 5)))
    (c,) = g.add_node("aten.mm.default", (a, b), {}, [TensorType("f32", (2, 5))], name="mm")
    g.outputs = [c]
    with pytest.raises(IRVerificationError, match="node mm .*shape inference failed"):
        verify(g)
