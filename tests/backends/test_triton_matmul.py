"""The Triton matmul template: a product with its elementwise epilogue as one kernel, against eager
(tails of every block, transposed weights, bias, activations, residuals, the product read outside,
16-bit floats), and the grouping pass's legality. Runs in Triton's interpreter: shapes stay small."""
from __future__ import annotations

import pytest
import torch

import memplan
from memplan.backends.triton.kernels import choose_kernels
from memplan.backends.triton.matmul import is_matmul_group
from memplan.ir.parser import parse
from memplan.passes.matmul_groups import find_matmul_groups

pytest.importorskip("triton")

OPTIONS = {"fusion": "on", "schedule_method": "heuristic"}


class MLP(torch.nn.Module):
    """Linear + GELU, linear + residual; ``also``: the first product is read outside its epilogue too."""

    def __init__(self, d=40, hidden=72, also=False, act="gelu"):
        super().__init__()
        self.fc, self.proj = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, d, bias=False)
        self.also, self.act = also, act

    def forward(self, x):
        h = self.fc(x)
        a = torch.nn.functional.gelu(h, approximate="tanh") if self.act == "gelu" else torch.relu(h) * 2.0
        y = x + self.proj(a)
        return (y, h.sum()) if self.also else y


def _matmul_kernels(cm):
    kernels = choose_kernels(cm.graph)
    return [k for k in kernels.kernels.values() if is_matmul_group(k.node)], kernels


@pytest.mark.parametrize("shape,act", [((1, 19, 40), "gelu"), ((3, 7, 40), "relu"), ((70, 40), "gelu")])
def test_product_and_epilogue_one_kernel_equal_to_eager(shape, act):
    torch.manual_seed(0)
    model, x = MLP(act=act).eval(), torch.randn(*shape)
    cm = memplan.compile(model, (x,), backend="triton", options=OPTIONS)
    products, choice = _matmul_kernels(cm)
    assert len(products) == 2 and not choice.not_kernels, choice.not_kernels
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)
    assert all(k.node.scratch == 0 for k in products)
    assert 'tl.dot(a, b, input_precision="ieee")' in cm.source, "float32 products are IEEE (no TF32) on a GPU"
    launcher = cm.source.split("def run(")[1]
    assert "torch.addmm(" not in launcher and "torch.mm(" not in launcher, "no product runs on aten"


def test_product_read_outside_is_stored_too():
    torch.manual_seed(0)
    model, x = MLP(also=True).eval(), torch.randn(1, 33, 40)
    cm = memplan.compile(model, (x,), backend="triton", options=OPTIONS)
    products, _ = _matmul_kernels(cm)
    assert products and any(len(k.node.outputs) == 2 for k in products)
    with torch.no_grad():
        for got, want in zip(cm(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_half_precision_product():
    torch.manual_seed(0)
    model, x = MLP().eval().half(), torch.randn(1, 20, 40).half()
    cm = memplan.compile(model, (x,), backend="triton", options=OPTIONS)
    assert len(_matmul_kernels(cm)[0]) == 2
    with torch.no_grad():
        torch.testing.assert_close(cm(x).float(), model(x).float(), rtol=2e-2, atol=2e-2)


def test_grouping_legality():
    # the epilogue joins only ops of the product's shape; an input computed from the group outside
    # it (a cycle) keeps that node out; a product with no epilogue is no group
    g = parse("""graph g(%x: f32[8, 4], %w: f32[4, 6], %r: f32[8, 6]) {
  %p: f32[8, 6] = aten.mm.default(%x, %w)
  %s: f32[8, 1] = aten.sum.dim_IntList(%p, [1], True)
  %a: f32[8, 6] = aten.add.Tensor(%p, %r)
  %b: f32[8, 6] = aten.mul.Tensor(%a, %s)
  %q: f32[8, 6] = aten.mm.default(%x, %w)
  return %b, %q
}""")
    explain = {}
    groups = find_matmul_groups(g, explain)
    assert [[n.name for n in grp] for grp in groups] == [["p", "a"]]
    assert "no elementwise epilogue" in explain["q"]


def test_matmul_kernels_compile_for_a_gpu():
    # the interpreter runs Python: the same source must be valid Triton down to an sm_90 binary
    import json
    import os
    import subprocess
    import sys

    from memplan.ir.printer import print_graph
    from tests.backends.test_triton_backend import NATIVE

    pytest.importorskip("triton.backends.nvidia.compiler")
    cases = {}
    for name, (model, x) in {"f32": (MLP(), torch.randn(1, 19, 40)),
                             "f16": (MLP().half(), torch.randn(1, 20, 40).half())}.items():
        cm = memplan.compile(model.eval(), (x,), backend="triton", options=OPTIONS)
        cases[name] = print_graph(cm.graph)
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", NATIVE], input=json.dumps({c: (t, 0) for c, t in cases.items()}),
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {line.split()[1] for line in r.stdout.splitlines() if line.startswith("compiled ")} == set(cases)
