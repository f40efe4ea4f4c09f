"""Pass ``fold_constants``: input-independent nodes are evaluated once; results equal eager's; limits hold."""
from __future__ import annotations

import torch

import memplan
from memplan import zoo
from memplan.ir.parser import parse
from memplan.passes.fold_constants import fold_constants_graph


class Positions(torch.nn.Module):
    """A model that builds, per call, what depends on no input: positions, a scaled table, a big fill."""

    def __init__(self, n: int = 16, big: int = 64):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(n, 8))
        self.w = torch.nn.Parameter(torch.randn(8, 8))
        self.n, self.big = n, big

    def forward(self, x):
        pos = torch.arange(self.n) * 2 + 1                      # folds: reads nothing
        scaled = self.table * pos[:, None].float()               # folds: a weight and a fold
        huge = torch.full((self.big, self.big, 8), 0.5)          # 128 KiB at big=64: above the cap
        return x + scaled + huge.sum() + x @ self.w.t()          # the view of a weight stays a view


def test_folds_what_reads_no_input_and_matches_eager():
    torch.manual_seed(0)
    model, x = Positions().eval(), torch.randn(16, 8)
    cm = memplan.compile(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x))
    ops = [n.op for n in cm.graph.nodes]
    assert "aten.arange.start_step" not in ops and "aten.mul.Tensor" not in ops
    assert "aten.full.default" in ops, "a result above fold_constants_max_bytes is computed per call"
    assert "aten.permute.default" in ops or "aten.t.default" in ops, "a view of a weight is not copied"
    assert any("fold_constants:" in line for line in cm.log)
    off = memplan.compile(model, (x,), options={"fold_constants": "off"})
    assert "aten.arange.start_step" in [n.op for n in off.graph.nodes]


def test_total_cap_and_outputs_left_alone():
    g = parse("""graph g(%x: f32[4]) {
  %a: f32[4] = aten.full.default([4], 2.0, dtype=torch.float32)
  %b: f32[4] = aten.full.default([4], 3.0, dtype=torch.float32)
  %y: f32[4] = aten.add.Tensor(%x, %a)
  %z: f32[4] = aten.add.Tensor(%y, %b)
  return %z, %b
}""")
    count, params, nbytes = fold_constants_graph(g, max_bytes=64, total_bytes=16)
    assert (count, params, nbytes) == (1, 1, 16), "b is an output: only a folds, within the 16 bytes"
    assert [p.name for p in g.params] == ["a"] and torch.equal(g.weights["a"], torch.full((4,), 2.0))
    g2 = parse("""graph g(%x: f32[4]) {
  %a: f32[4] = aten.full.default([4], 2.0, dtype=torch.float32)
  %y: f32[4] = aten.add.Tensor(%x, %a)
  return %y
}""")
    assert fold_constants_graph(g2, max_bytes=64, total_bytes=15) == (0, 0, 0), "over the total: nothing folds"


def test_positions_stay_aranges_for_attention_and_models_match():
    # GPT-2's mask chain (arange, cumsum, index, ...) folds; positions feeding attention stay aranges
    model, inputs = zoo.gpt2(n_layer=1, n_embd=64, n_head=2, seq=32)
    cm = memplan.compile(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)
    ops = [n.op for n in cm.graph.nodes]
    assert "aten.cumsum.default" not in ops and "aten.index.Tensor" not in ops
    model, inputs = zoo.llama(n_layer=1, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, seq=32)
    cm = memplan.compile(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)
    assert not any(n.op in ("aten.cos.default", "aten.sin.default") for n in cm.graph.nodes), "rotary tables fold"
