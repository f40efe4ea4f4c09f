"""The ``inplace`` pass: elementwise ops overwrite an input only when nobody else can read it."""
import copy

import pytest
import torch
from torch import nn

import memplan
from memplan.errors import IRVerificationError, PlanVerificationError
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.ir.verify import verify
from memplan.analysis.liveness import storage_roots
from memplan.passes.verify_plan import verify_plan
from memplan.profiling import timeline_peak


class ConvBlock(nn.Module):
    """conv -> relu -> conv -> relu, a residual add, an elementwise tail and a reduction."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = torch.relu(self.c2(y)) + y
        return torch.sigmoid(z * 2).sum(dim=1)


def _reuses(cm):
    return {n.name: n.reuses for n in cm.graph.nodes if n.reuses is not None}


def test_chain_runs_in_place_and_matches_eager():
    model, x = ConvBlock().eval(), torch.randn(1, 3, 32, 32)
    cm = memplan.compile(model, (x,), options={"conv_kernel": "aten"})  # relus stay separate ops
    reuses = _reuses(cm)
    # relu over each conv, then add over the second relu, mul over add, sigmoid over mul
    assert len(reuses) == 5
    ops = {cm.graph.node(n).op for n in reuses}
    assert ops == {"aten.clamp_min.default", "aten.add.Tensor", "aten.mul.Tensor", "aten.sigmoid.default"}
    add = next(n for n in cm.graph.nodes if n.op == "aten.add.Tensor")
    # add reads both relus; it may only overwrite the one no other node reads
    assert add.reuses is add.inputs[0]
    torch.testing.assert_close(cm(x), model(x))
    assert "reuses(%" in cm.ir and "(in place)" in cm.source
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]


def test_inplace_lowers_the_plan_and_can_be_switched_off():
    # a static storage: in-place results share their input's slot, so the storage shrinks. (Freeing
    # each value at its last use, this model's peak is the second conv's step, where its input, its
    # output and its scratch are live whether the relus run in place or not.)
    model, x = ConvBlock().eval(), torch.randn(1, 3, 32, 32)
    options = {"conv_lowering": "never", "conv_kernel": "aten", "allocation": "storage"}
    on = memplan.compile(model, (x,), options=options)
    off = memplan.compile(model, (x,), options={**options, "inplace": False})
    assert not _reuses(off)
    assert on.plan.stats["arena_bytes"] < off.plan.stats["arena_bytes"]
    assert on.plan.stats["planned_peak_bytes"] < off.plan.stats["planned_peak_bytes"]
    torch.testing.assert_close(on(x), off(x))


class SharedInput(nn.Module):
    """``a`` is read by relu and by the final add: relu must not overwrite it."""

    def forward(self, x):
        a = x * 3
        b = torch.relu(a)
        return b + a, a.t() * 1


def test_value_read_elsewhere_is_not_overwritten():
    x = torch.randn(8, 8)
    cm = memplan.compile(SharedInput(), (x,))
    relu = next(n for n in cm.graph.nodes if n.op == "aten.clamp_min.default")
    assert relu.reuses is None
    for n in cm.graph.nodes:  # graph outputs never write over anything, and are never overwritten
        assert n.reuses is None or n.outputs[0].name not in {v.name for v in cm.graph.outputs}
    out, ref = cm(x), SharedInput()(x)
    torch.testing.assert_close(out, ref)


class ViewAlias(nn.Module):
    """``mul`` reads ``h`` and a transposed view of it: writing over ``h`` would corrupt the view."""

    def forward(self, x):
        h = x + 1
        return (h * h.t()).sum()


def test_op_reading_another_alias_of_its_target_is_not_in_place():
    x = torch.randn(6, 6)
    cm = memplan.compile(ViewAlias(), (x,))
    mul = next(n for n in cm.graph.nodes if n.op == "aten.mul.Tensor")
    assert mul.reuses is None
    torch.testing.assert_close(cm(x), ViewAlias()(x))


def test_view_chain_in_place_extends_the_base():
    """relu over a view of a matmul output: the output aliases the matmul's storage."""
    class M(nn.Module):
        def forward(self, x):
            return torch.relu((x @ x).view(4, 16)).sum(dim=0)
    x = torch.randn(8, 8)
    cm = memplan.compile(M(), (x,))
    relu = next(n for n in cm.graph.nodes if n.op == "aten.clamp_min.default")
    assert relu.reuses is not None
    roots = storage_roots(cm.graph)
    mm = next(n for n in cm.graph.nodes if n.op == "aten.mm.default")
    assert roots[relu.outputs[0].name] == mm.outputs[0].name
    torch.testing.assert_close(cm(x), M()(x))


def test_ir_text_round_trips_and_verifier_checks_reuse():
    cm = memplan.compile(ConvBlock().eval(), (torch.randn(1, 3, 16, 16),))
    text = print_graph(cm.graph)
    again = parse(text)
    assert again == cm.graph and print_graph(again) == text
    # the parsed planned graph is the plan: the checker finds the same peak in it
    assert verify_plan(again).planned_peak_bytes == cm.plan.stats["planned_peak_bytes"]
    for a, b in zip(cm.graph.nodes, again.nodes):
        assert (a.reuses and a.reuses.name) == (b.reuses and b.reuses.name)
        assert b.reuses is None or any(b.reuses is v for v in b.inputs)
    broken = parse(text)
    node = next(n for n in broken.nodes if n.reuses is not None)
    other = next(n for n in broken.nodes if n.op == "aten.sum.dim_IntList")
    other.reuses = other.inputs[0]  # a reduction's output is smaller than its input
    with pytest.raises(IRVerificationError, match="types differ"):
        verify(broken)
    # a reduction reads every element of what it would overwrite (and here its output, a graph output,
    # would take the bytes of a value in the storage: whichever the checker meets first rejects it)
    with pytest.raises(PlanVerificationError, match=r"node sum_\w* \(aten.sum.dim_IntList\) overwrites %\w+ in place"
                       r"|graph output %\w+ \(viewed or overwritten by a graph output\) lives in storage"):
        verify_plan(broken)
    other.reuses = None
    node.reuses = broken.inputs[0]  # %x: not an input of that node
    with pytest.raises(IRVerificationError, match="does not read"):
        verify(broken)
    with pytest.raises(PlanVerificationError, match="which is not one of its inputs"):
        verify_plan(broken)


def test_plan_verifier_rejects_reading_an_overwritten_value():
    model, x = SharedInput(), torch.randn(8, 8)
    cm = memplan.compile(model, (x,))
    graph = copy.deepcopy(cm.graph)
    verify_plan(graph)  # as planned: sound
    relu = next(n for n in graph.nodes if n.op == "aten.clamp_min.default")
    assert relu.reuses is None and relu.outputs[0].alloc is not None
    relu.reuses = relu.inputs[0]  # illegal: the add still reads it afterwards
    with pytest.raises(PlanVerificationError, match="owns no bytes"):
        verify_plan(graph)  # the in-place result may not keep an allocation of its own
    relu.outputs[0].alloc = None
    with pytest.raises(PlanVerificationError, match="reads %.* after node .* overwrote its storage in place"):
        verify_plan(graph)


def test_plan_verifier_rejects_overwriting_a_graph_output():
    class M(nn.Module):
        def forward(self, x):
            a = x * 2
            return a, torch.relu(a)
    x = torch.randn(4, 4)
    cm = memplan.compile(M(), (x,))
    graph = copy.deepcopy(cm.graph)
    verify_plan(graph)  # as planned: sound
    relu = next(n for n in graph.nodes if n.op == "aten.clamp_min.default")
    assert relu.reuses is None
    relu.reuses = relu.inputs[0]
    relu.outputs[0].alloc = None  # an in-place result owns no bytes
    with pytest.raises(PlanVerificationError, match="overwrites graph output %.* in place"):
        verify_plan(graph)
