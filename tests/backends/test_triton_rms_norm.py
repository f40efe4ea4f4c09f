"""RMS norm on the Triton backend: the residual add, the row statistic and its epilogue (``+ eps``,
``rsqrt``, ``x * r``, ``* weight``) as one kernel, against eager; Llama's whole layer in few launches."""
from __future__ import annotations

import pytest
import torch

import memplan
from memplan import zoo
from memplan.backends.triton.kernels import choose_kernels
from memplan.ir.parser import parse
from memplan.passes.reduction_groups import find_reduction_groups

pytest.importorskip("triton")


class ResidualRMS(torch.nn.Module):
    def __init__(self, d=40):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x, r):
        h = x + r
        variance = h.pow(2).mean(-1, keepdim=True)
        return self.weight * (h * torch.rsqrt(variance + 1e-6)), h


@pytest.mark.parametrize("shape", [(1, 13, 40), (3, 5, 40)])
def test_residual_rms_norm_is_one_kernel_equal_to_eager(shape):
    torch.manual_seed(0)
    model = ResidualRMS().eval()
    x, r = torch.randn(*shape), torch.randn(*shape)
    cm = memplan.compile(model, (x, r), backend="triton", options={"fusion": "on"})
    choice = choose_kernels(cm.graph)
    (kernel,) = choice.kernels.values()
    ops = [n.op for n in kernel.node.subgraph.nodes]
    assert ops.index("aten.mean.dim") not in (0, len(ops) - 1), "a prologue and an epilogue around the mean"
    assert not [n for n in cm.graph.nodes if n.op in ("aten.rsqrt.default", "aten.mul.Tensor")]
    with torch.no_grad():
        for got, want in zip(cm(x, r), model(x, r)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_statistic_groups_stop_at_cycles_and_other_shapes():
    g = parse("""graph g(%x: f32[4, 8]) {
  %s: f32[4, 1] = aten.mean.dim(%x, [-1], True)
  %a: f32[4, 1] = aten.add.Tensor(%s, 1.0)
  %o: f32[4, 8] = aten.mul.Tensor(%x, %a)
  %t: f32[8] = aten.sum.dim_IntList(%o, [0])
  %u: f32[4, 8] = aten.add.Tensor(%o, %t)
  %w: f32[4, 8] = aten.mul.Tensor(%u, %o)
  return %w
}""")
    (group,) = find_reduction_groups(g)
    assert [n.name for n in group] == ["s", "a", "o"], "u reads t, computed from the group outside it"


def test_llama_layer_in_fewer_launches_equal_to_eager():
    model, inputs = zoo.llama(n_layer=1, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, seq=32)
    cm = memplan.compile(model, inputs, backend="triton")
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
    kinds = choose_kernels(cm.graph).log_lines()[0]
    assert "mean with its prologue and epilogue" in kinds and "matmul with its epilogue" in kinds, kinds
    assert not any(n.op == "aten.rsqrt.default" for n in cm.graph.nodes)
