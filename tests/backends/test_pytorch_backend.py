"""Emitted PyTorch code: matches eager, reads well, frees values at last use."""
import re

import pytest
import torch

import memplan
from memplan.backends.pytorch import emit_python, load_python
from memplan.ir import Graph, TensorType
from memplan.plan import Plan
from tests.small_models import cases


@pytest.mark.parametrize("name,model,inputs", cases(), ids=[c[0] for c in cases()])
def test_small_models_match_eager(name, model, inputs):
    cm = memplan.compile(model, inputs)
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(cm(*inputs), expected, rtol=1e-5, atol=1e-5)
    # fresh inputs of the same shape, not only the example
    fresh = tuple(torch.randn_like(x) if x.is_floating_point() else x.flip(-1) for x in inputs)
    with torch.no_grad():
        torch.testing.assert_close(cm(*fresh), model(*fresh), rtol=1e-5, atol=1e-5)


def test_arena_source_is_traceable():
    model, inputs = cases()[1][1:]
    cm = memplan.compile(model, inputs, options={"allocation": "storage"})
    src = cm.source
    arena = cm.plan.stats["arena_bytes"]
    (storage,) = cm.graph.storages
    assert f"{storage} = torch.empty({arena}, dtype=torch.uint8)" in src
    assert re.search(r"^    torch\.addmm\(.*out=\w+\)  # \d+: from aten\.addmm, qkv$", src, re.M), \
        "ops write into their planned slot, each traced to its op and module"
    (sdpa,) = [n for n in cm.graph.nodes if "scaled_dot_product" in n.op]
    assert sdpa.outputs[0].alloc.kind == "kernel", "an op without an out= form owns its result: never copied"
    assert re.search(r"^    \w+ = aten\.scaled_dot_product\w*\.default\(", src, re.M) and ".copy_(" not in src
    assert src.count("torch.empty(") == 1 + sum(1 for line in src.splitlines() if "torch.empty([" in line)


def test_without_allocation_values_are_freed_at_last_use():
    model, inputs = cases()[1][1:]
    cm = memplan.compile(model, inputs, pipeline=["verify", "canonicalize", "schedule", "verify_plan"])
    src = cm.source
    assert "arena" not in src
    defined = set(re.findall(r"^    (\w+)(?:, \w+)*,? = aten", src, re.M))
    deleted = [n for line in re.findall(r"^    del (.*)$", src, re.M) for n in line.split(", ")]
    assert len(deleted) == len(set(deleted))
    out_name = re.search(r"return (\w+)", src).group(1)
    assert defined - set(deleted) <= {out_name}
    torch.testing.assert_close(cm(*inputs), model(*inputs))


def test_multi_output_and_passthrough_outputs():
    g = Graph("multi")
    x = g.add_input("x", TensorType("f32", (6, 4)))
    a, b = g.add_node("aten.split_with_sizes.default", (x, [2, 4]), {},
                      [TensorType("f32", (2, 4)), TensorType("f32", (4, 4))], name="split")
    (r,) = g.add_node("aten.relu.default", (b,), {}, [TensorType("f32", (4, 4))])
    g.outputs = [a, r, x]
    plan = Plan(g.name, "cpu", [n.name for n in g.nodes])
    run = load_python(emit_python(g, plan))
    t = torch.randn(6, 4)
    out = run({}, t)
    assert isinstance(out, tuple) and len(out) == 3
    torch.testing.assert_close(out[0], t[:2])
    torch.testing.assert_close(out[1], t[2:].relu())
    assert out[2] is t


def _node(op, args, out_shape, dtype="f32"):
    g = Graph("g")
    x = g.add_input("x", TensorType("f32", (4, 6)))
    args = tuple(x if a == "x" else a for a in args)
    (y,) = g.add_node(op, args, {}, [TensorType(dtype, out_shape)])
    return y


def test_fast_binding_only_where_it_reaches_the_planned_overload():
    from memplan.backends.bindings import fast_binding
    y = _node("aten.mul.Tensor", ("x", "x"), (4, 6))
    assert fast_binding(y.producer, "aten.mul.out", {"out": y}) == "torch.mul"
    y = _node("aten.mul.Tensor", ("x", 2.0), (4, 6))   # a Scalar operand: still mul.out
    assert fast_binding(y.producer, "aten.mul.out", {"out": y}) == "torch.mul"
    y = _node("aten.view.default", ("x", [24]), (24,))
    assert fast_binding(y.producer, "aten.view.default") == ".view"
    y = _node("aten.permute.default", ("x", [1, 0]), (6, 4))
    assert fast_binding(y.producer, "aten.permute.default") == "torch.permute"
    # torch.embedding takes no out=; torch.slice does not exist; a planned overload the call does not reach
    g = Graph("g")
    w = g.add_input("w", TensorType("f32", (10, 4)))
    i = g.add_input("i", TensorType("i64", (3,)))
    (e,) = g.add_node("aten.embedding.default", (w, i), {}, [TensorType("f32", (3, 4))])
    assert fast_binding(e.producer, "aten.embedding.out", {"out": e}) is None
    y = _node("aten.slice.Tensor", ("x", 0, 0, 2), (2, 6))
    assert fast_binding(y.producer, "aten.slice.Tensor") is None
    y = _node("aten.mul.Tensor", ("x", "x"), (4, 6))
    assert fast_binding(y.producer, "aten.mul.Scalar_out", {"out": y}) is None
    y = _node("aten.sum.dim_IntList", ("x", [1]), (4,))
    assert fast_binding(y.producer, "aten.sum.IntList_out", {"out": y}) == "torch.sum"
