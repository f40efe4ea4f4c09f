"""Decomposed activations become the one op they compute (canonicalize, passes/activations.py)."""
import math

import pytest
import torch
from torch import nn

import memplan

SPELLINGS = {
    # GPT-2's NewGELUActivation
    "gelu_new": (lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0)))),
                 "aten.gelu.default"),
    # FastGELU: the same function, spelt otherwise, with a truncated constant
    "gelu_fast": (lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))), "aten.gelu.default"),
    "gelu_erf": (lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))), "aten.gelu.default"),
    "silu": (lambda x: x * torch.sigmoid(x), "aten.silu.default"),
    "hardswish": (lambda x: x * torch.nn.functional.relu6(x + 3.0) / 6.0, "aten.hardswish.default"),
    "hardswish_sixth": (lambda x: x * torch.clamp(x + 3, min=0, max=6) * (1 / 6), "aten.hardswish.default"),
    "silu_exp": (lambda x: x / (1 + torch.exp(-x)), "aten.silu.default"),
    "mish_log1p": (lambda x: x * torch.tanh(torch.log1p(torch.exp(x))), "aten.mish.default"),
}


class Act(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.up, self.down = fn, nn.Linear(16, 64), nn.Linear(64, 16)

    def forward(self, x):
        return self.down(self.fn(self.up(x)))


def ops(cm):
    return [n.op for n in cm.graph.nodes]


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_a_spelt_out_activation_becomes_one_op(name):
    fn, op = SPELLINGS[name]
    model, x = Act(fn).eval(), torch.randn(3, 40, 16) * 4
    cm = memplan.compile(model, (x,))
    kept = memplan.compile(model, (x,), options={"activations": "off", "fusion": "off"})
    assert op in ops(cm) and op not in ops(kept), cm.log
    assert len(cm.graph.nodes) < len(kept.graph.nodes)
    assert any("activation they compute" in line for line in cm.log)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kept(x), model(x), rtol=1e-5, atol=1e-5)
    assert cm.plan.stats["planned_peak_bytes"] <= kept.plan.stats["planned_peak_bytes"]


@pytest.mark.parametrize("fn", [
    lambda x: x * torch.sigmoid(1.702 * x),  # QuickGELU: close to GELU, not GELU
    lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.05 * torch.pow(x, 3.0)))),  # a near miss
    lambda x: x * torch.sigmoid(x * 1.0001),  # silu, nearly
    lambda x: torch.tanh(x) * 2.0,  # a chain that is no known activation
    # silu through tanh (sigmoid(x) = (1 + tanh(x / 2)) / 2): the probes agree, the formula is
    # not seen to: kept (it would be right; it is not proven)
    lambda x: x * (torch.tanh(x / 2) + 1) / 2,
])
def test_a_chain_that_is_not_the_activation_stays(fn):
    model, x = Act(fn).eval(), torch.randn(3, 40, 16)
    cm = memplan.compile(model, (x,), options={"fusion": "off"})
    assert not {"aten.gelu.default", "aten.silu.default", "aten.hardswish.default"} & set(ops(cm))
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)


def test_an_intermediate_read_elsewhere_keeps_the_chain():
    class Leaky(nn.Module):
        def forward(self, x):
            s = torch.sigmoid(x)
            return x * s, s  # the sigmoid is an output too: silu(x) would not spare computing it

    model, x = Leaky().eval(), torch.randn(4, 8)
    cm = memplan.compile(model, (x,))
    assert "aten.silu.default" not in ops(cm)
    with torch.no_grad():
        for a, b in zip(cm(x), model(x)):
            torch.testing.assert_close(a, b)


def test_the_recognised_op_keeps_dtype_and_reads_only_its_tensor():
    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x * torch.sigmoid(y)  # two tensors: not a function of one

    model, x, y = TwoInputs().eval(), torch.randn(4, 8), torch.randn(4, 8)
    cm = memplan.compile(model, (x, y))
    assert "aten.silu.default" not in ops(cm)
    half = Act(SPELLINGS["silu"][0]).eval().to(torch.float64)
    xd = torch.randn(2, 16, dtype=torch.float64)
    cmd = memplan.compile(half, (xd,))
    assert "aten.silu.default" in ops(cmd)
    with torch.no_grad():
        torch.testing.assert_close(cmd(xd), half(xd))


def test_the_activation_inside_a_longer_chain_is_found():
    model, x = Act(lambda x: x * torch.sigmoid(x) + 1e-4).eval(), torch.randn(3, 40, 16)
    cm = memplan.compile(model, (x,), options={"fusion": "off"})
    assert "aten.silu.default" in ops(cm) and "aten.sigmoid.default" not in ops(cm)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("at", [20.5, 20.503, 0.005])
def test_a_bump_between_probes_is_computed(at):
    fn = lambda x: (x * torch.sigmoid(x) + 1e6 * (torch.clamp(x, 20, 21) - 20) * (21 - torch.clamp(x, 20, 21))  # noqa: E731
                    + 1e6 * torch.exp(-1e4 * (x - 20.503) ** 2) + 1e3 * torch.exp(-1e5 * (x - 0.005) ** 2))
    model = Act(fn).eval()
    x = torch.randn(3, 40, 16)
    cm = memplan.compile(model, (x,), options={"fusion": "off"})
    probe = torch.full((3, 40, 16), at)
    with torch.no_grad():
        model.up.weight.zero_(), model.up.bias.fill_(at)
        torch.testing.assert_close(cm(probe), model(probe), rtol=1e-5, atol=1e-3)


def test_formulas_match_up_to_constants_and_spelling():
    from memplan.passes.activations import FORMULAS, _X, same_formula
    import sympy
    gelu_tanh = FORMULAS[0]
    assert same_formula(0.5 * _X * (1 + sympy.tanh(0.7978845608 * _X * (1 + 0.044715 * _X ** 2))), gelu_tanh)
    assert not same_formula(0.5 * _X * (1 + sympy.tanh(0.7978845608 * _X * (1 + 0.0447 * _X ** 2))), gelu_tanh)
    assert not same_formula(gelu_tanh + sympy.exp(-1e4 * (_X - 20.5) ** 2), gelu_tanh)  # exp(-4e6): no float
    assert same_formula(_X / (1 + sympy.exp(-_X)), FORMULAS[2])
    assert not same_formula(_X / (1 + sympy.exp(-1.0001 * _X)), FORMULAS[2])
