"""The IR text form: print → parse gives the same graph; the parser reports bad text."""
import pytest
import sympy
import torch

from memplan.errors import IRParseError
from memplan.frontend.torch_export import from_torch
from memplan.ir import Graph, TensorType, sym
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from tests.small_models import cases


@pytest.mark.parametrize("name,model,inputs", cases(), ids=[c[0] for c in cases()])
def test_roundtrip_models(name, model, inputs):
    g = from_torch(model, inputs)
    text = print_graph(g)
    back = parse(text)
    assert back == g
    assert print_graph(back) == text


def test_roundtrip_symbolic_dims_and_literals():
    g = Graph("sym")
    x = g.add_input("x", TensorType("f32", (sym("batch"), 16)))
    w = g.add_param("w", TensorType("f32", (16, 16)))
    (y,) = g.add_node("aten.mm.default", (x, w), {}, [TensorType("f32", (sym("batch"), 16))], source="fc")
    (z,) = g.add_node("aten.view.default", (y, [2 * sym("batch"), -1]), {},
                      [TensorType("f32", (2 * sym("batch"), 8))])
    (c,) = g.add_node("aten._to_copy.default", (z,), {"dtype": torch.float16, "layout": torch.strided,
                                                       "device": torch.device("cpu")},
                      [TensorType("f16", (2 * sym("batch"), 8))])
    (m,) = g.add_node("aten.clamp.default", (c, -float("inf"), 1e-5), {}, [TensorType("f16", (2 * sym("batch"), 8))],
                      source="a 'quoted' # name", source_op="onnx::Clip")
    g.outputs = [m, y]
    back = parse(print_graph(g))
    assert back == g
    assert back.outputs[0].type.shape[0] == 2 * sym("batch")
    assert isinstance(back.outputs[0].type.shape[0], sympy.Expr)
    assert back.nodes[3].source == "a 'quoted' # name"


def test_subgraph_roundtrip():
    inner = Graph("body")
    a = inner.add_input("a", TensorType("f32", (4,)))
    (r,) = inner.add_node("aten.relu.default", (a,), {}, [TensorType("f32", (4,))])
    inner.outputs = [r]
    g = Graph("outer")
    x = g.add_input("x", TensorType("f32", (4,)))
    (y,) = g.add_node("aten.relu.default", (x,), {}, [TensorType("f32", (4,))], subgraph=inner, name="group")
    g.outputs = [y]
    text = print_graph(g)
    assert "graph body(%a: f32[4]) {" in text
    assert parse(text) == g


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("graph g(%x: f32[2]) {\n  return %x\n", "not closed"),
    ("graph g(%x: q32[2]) {\n  return %x\n}", "unknown dtype"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = aten.relu.default(%nope)\n  return %y\n}", "line 2: use of undefined value %nope"),
    ("graph g(%x: f32[2]) {\n  %x: f32[2] = aten.relu.default(%x)\n  return %x\n}", "defined twice"),
    ("graph g(%x: f32[2]) {\n  %y: f32[2] = aten.relu.default(%x, os.system('x'))\n  return %y\n}", "unsupported argument"),
    ("graph g(%x: f32[2]) {\n  return %z\n}", "return of undefined"),
])
def test_parse_errors(text, message):
    with pytest.raises(IRParseError, match=message):
        parse(text)
