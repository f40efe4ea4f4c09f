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
    cm = memplan.compile(model, inputs)
    src = cm.source
    arena = cm.plan.stats["arena_bytes"]
    assert f"arena = torch.empty({arena}, dtype=torch.uint8)" in src
    assert re.search(r"^    aten\.addmm\.out\(.*out=\w+\)  # \d+: from aten\.addmm, qkv$", src, re.M), \
        "ops write into their planned slot, each traced to its op and module"
    assert "scaled_dot_product_attention.default" in src and "no out= variant" in src
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
