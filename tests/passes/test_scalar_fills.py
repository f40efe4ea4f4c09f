"""Canonicalize's one-element fills and fusion of dtype casts: T5's position-bucket chain fuses whole."""
from __future__ import annotations

from types import SimpleNamespace

import torch

import memplan
from memplan.ir.parser import parse
from memplan.passes.canonicalize import _scalar_fills
from memplan.passes.fusable import is_conversion, why_not_pointwise


class Buckets(torch.nn.Module):
    """T5's relative-position buckets, as the model computes them per call (from its input's length)."""

    def forward(self, x):
        n = x.shape[1]
        rel = torch.arange(n)[None, :] - torch.arange(n)[:, None] + x[0, :, None].long()
        small = rel.abs() < 8
        large = 8 + (torch.log(rel.abs().float() / 8 + 1) / 2.77 * 8).to(torch.long)
        large = torch.min(large, torch.full_like(large, 15))
        return torch.where(small, rel.abs(), large) + torch.zeros_like(rel)


def test_bucket_chain_fuses_and_matches_eager():
    x = torch.randint(0, 3, (1, 40)).float()
    model = Buckets().eval()
    cm = memplan.compile(model, (x,), options={"fusion": "on", "fusion_tile_bytes": 1024})
    ops = [n.op for n in cm.graph.nodes]
    assert "aten.full_like.default" not in ops and "aten.zeros_like.default" not in ops
    assert not [n for n in cm.graph.nodes if n.op == "aten._to_copy.default" and n.outputs[0].type.rank == 2
                and tuple(n.outputs[0].type.shape) == (40, 40)], "the [L, L] casts run inside the fused loop"
    assert any("one-element fills" in line for line in cm.log)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x))


def test_conversions_and_fills_that_must_stay():
    g = parse("""graph g(%x: i32[4, 4], %y: f32[4, 4]) {
  %a: f32[4, 4] = aten._to_copy.default(%x, dtype=torch.float32)
  %b: f32[4, 4] = aten._to_copy.default(%y, dtype=torch.float32)
  %c: f32[4, 4] = aten._to_copy.default(%y, dtype=torch.float32, memory_format=torch.contiguous_format)
  %f: i64[4, 4] = aten.full_like.default(%x, 3, dtype=torch.int64)
  %m: i64[4, 4] = aten.mul.Tensor(%x, %f)
  %z: i64[4, 4] = aten.full.default([4, 4], 0, dtype=torch.int64)
  %n: bool[4, 4] = aten.ne.Scalar(%z, 1)
  return %a, %b, %c, %m, %n
}""")
    a, b, c = (n for n in g.nodes[:3])
    assert is_conversion(a) and why_not_pointwise(a) is None
    assert not is_conversion(b), "same dtype: a copy, not a cast"
    assert not is_conversion(c), "a memory format given: left to the copy rules"
    log = SimpleNamespace(log=[])
    _scalar_fills(g, log)
    # the fill keeps its dims (a 0-dim i64 would promote i32 * i64 to i32): [1, 1], results unchanged
    fill, kept = [n for n in g.nodes if n.op == "aten.full.default"]
    assert fill.outputs[0].type.shape == (1, 1) and fill.outputs[0].type.dtype == "i64" and log.log
    assert kept.outputs[0].type.shape == (4, 4), "ne(fill, 1) takes its shape from the fill alone: it stays"
    x = torch.randint(-5, 5, (4, 4), dtype=torch.int32)
    from memplan.ir.interpret import run_graph
    assert torch.equal(run_graph(g, [x, torch.randn(4, 4)])[3], x * torch.full((4, 4), 3))
