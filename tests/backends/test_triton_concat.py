"""A concatenation read only by a pointwise region, read where it lies on the Triton backend:
rotary embeddings (``rotate_half``: ``cat([-x2, x1])``) in one kernel, against eager."""
from __future__ import annotations

import pytest
import torch

import memplan
from memplan.backends.triton.kernels import choose_kernels
from memplan.ir.interpret import run_graph
from memplan.ir.parser import parse
from memplan.passes.fusion import fuse_graph
from tests.backends.test_triton_backend import run_emitted

pytest.importorskip("triton")


class Rotary(torch.nn.Module):
    """Rotary embedding on heads laid out as attention takes them, then attention."""

    def forward(self, x, cos, sin):
        b, n, _ = x.shape
        q = x.view(b, n, 2, 16).transpose(1, 2)
        half = q.shape[-1] // 2
        rotated = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
        q = q * cos + rotated * sin
        o = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return o.transpose(1, 2).reshape(b, n, 32)


def test_rotate_half_runs_inside_the_region_kernel_equal_to_eager():
    torch.manual_seed(0)
    x, cos, sin = torch.randn(1, 24, 32), torch.randn(24, 16), torch.randn(24, 16)
    model = Rotary().eval()
    cm = memplan.compile(model, (x, cos, sin), backend="triton")
    assert not any(n.op in ("aten.cat.default", "aten.neg.default") for n in cm.graph.nodes), \
        "the cat and the neg making its operand moved into the region"
    choice = choose_kernels(cm.graph)
    assert not choice.not_kernels, choice.not_kernels
    assert "aten.cat.default: each range from its operand" in cm.source
    with torch.no_grad():
        torch.testing.assert_close(cm(x, cos, sin), model(x, cos, sin), rtol=1e-5, atol=1e-5)


def test_three_operands_and_a_cat_along_the_tiled_dim():
    text = """graph g(%a: f32[6, 3], %b: f32[6, 5], %c: f32[6, 2], %s: f32[6, 10]) {
  %e: f32[6, 3] = aten.exp.default(%a)
  %k: f32[6, 10] = aten.cat.default([%e, %b, %c], 1)
  %m: f32[6, 10] = aten.mul.Tensor(%k, %s)
  %y: f32[6, 10] = aten.add.Tensor(%m, 1.0)
  return %y
}"""
    graph = parse(text)
    fused = graph.copy()
    (loop,) = fuse_graph(fused, 64, one_trip=True)
    assert [n.op for n in loop.subgraph.nodes][:2] == ["aten.exp.default", "aten.cat.default"]
    inputs = [torch.randn(6, 3), torch.randn(6, 5), torch.randn(6, 2), torch.randn(6, 10)]
    torch.testing.assert_close(run_emitted(fused, *inputs)[0], run_graph(graph, inputs)[0])
    torch.testing.assert_close(run_graph(fused, inputs)[0], run_graph(graph, inputs)[0])
    # along the dim the loop tiles, trips would need other operands' rows: the cat stays outside
    along = parse(text.replace("f32[6, 3]", "f32[3, 10]").replace("f32[6, 5]", "f32[5, 10]")
                  .replace("f32[6, 2]", "f32[2, 10]").replace("f32[6, 10]", "f32[10, 10]")
                  .replace("[%e, %b, %c], 1", "[%e, %b, %c], 0"))
    fuse_graph(along, 64, one_trip=True)
    assert any(n.op == "aten.cat.default" for n in along.nodes)
