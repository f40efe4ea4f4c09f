"""The IR text form: print → parse gives the same graph; the parser reports bad text."""
import pytest
import sympy
import torch

from memplan.errors import IRParseError
from memplan.frontend.torch_export import from_torch
from memplan.ir import Graph, TensorType, sym
from memplan.ir.graph import Alloc
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


def plan_by_hand(g: Graph) -> Graph:
    """Give ``g`` a (fake but well-formed) plan: attrs, a storage per tier, a space on every type,
    an allocation of each kind in turn, scratch, and a recomputed clone of the first node."""
    g.attrs.update({"target": "cpu", "memory_budget": 1 << 20, "capacity.dram": 24 << 30, "fast": True})
    tiers = ["sram", "dram"]
    storages = [g.add_storage(t, 1 << 20) for t in tiers]
    for v in list(g.inputs) + list(g.params):
        v.type = v.type.with_space("dram")
    for i, node in enumerate(g.nodes):
        node.scratch = 64 * i if i % 3 == 0 else 0
        for j, v in enumerate(node.outputs):
            storage = storages[(i + j) % 2]
            v.type = v.type.with_space(storage.tier)
            if not v.type.is_static:
                v.alloc = Alloc("kernel")
                continue
            strides = [1] * v.type.rank
            for d in range(v.type.rank - 2, -1, -1):
                strides[d] = strides[d + 1] * v.type.shape[d + 1]
            kind = ("slot", "own", "kernel", None)[(i + j) % 4]
            v.alloc = (None if kind is None else Alloc("kernel") if kind == "kernel"
                       else Alloc("own", strides=strides) if kind == "own"
                       else Alloc("slot", storage.name, 256 * i, strides))
    if g.nodes:
        g.clone_node(g.nodes[0], after=g.nodes[0])
    return g


@pytest.mark.parametrize("name,model,inputs", cases(), ids=[c[0] for c in cases()])
def test_roundtrip_planned_models(name, model, inputs):
    g = plan_by_hand(from_torch(model, inputs))
    text = print_graph(g)
    assert "attr capacity.dram = 25769803776" in text and "@dram" in text and " recomputes(%" in text
    back = parse(text)
    assert back == g
    assert print_graph(back) == text
    assert back.storages.keys() == g.storages.keys()
    assert [v.alloc for v in back.values()] == [v.alloc for v in g.values()]
    assert [n.scratch for n in back.nodes] == [n.scratch for n in g.nodes]


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
    ("graph g(%x: f32[2]) {\n  %y: f32[2] slot(%s, 0, [1]) = aten.relu.default(%x)\n  return %y\n}",
     "line 2: slot of %y is in storage %s, which is not declared"),
    ("graph g(%x: f32[2]@dram) {\n  %y: f32[2]@d.r = aten.relu.default(%x)\n  return %y\n}",
     "bad memory space name 'd.r'"),
])
def test_parse_errors(text, message):
    with pytest.raises(IRParseError, match=message):
        parse(text)
