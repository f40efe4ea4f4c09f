"""Capacity and budget are checked before anything is measured; measuring is bounded.

A 104-byte ONNX file may claim a 1 GiB input: memplan must say no plan fits
without allocating it (issue #8, defect 8), and never allocate a node's
tensors for a scratch measurement beyond a cap.
"""
import onnx
import onnx.helper as oh
import pytest
import torch
from onnx import TensorProto

import memplan
import memplan.backends.pytorch_scratch as scratch
from memplan.errors import BudgetInfeasibleError
from memplan.passes.capacity import node_lower_bound
from memplan.target import HardwareSpec, MemoryTier
from tests.small_models import ConvNet


def _model(nodes, inputs, outputs):
    model = oh.make_model(oh.make_graph(nodes, "g", inputs, outputs), opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _huge_relu():
    """One Relu on a claimed [1, 16384, 16384] f32 input: 1 GiB in, 1 GiB out."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16384, 16384])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _model([oh.make_node("Relu", ["x"], ["y"], name="act")], [x], [y])


@pytest.fixture
def no_measuring(monkeypatch):
    """Fail the test if any kernel is run to measure its scratch."""
    def refuse(*args, **kwargs):
        raise AssertionError("scratch was measured")
    monkeypatch.setattr(scratch, "_measure_all", refuse)
    scratch._CACHE.clear()


def test_tier_capacity_is_checked_before_measuring(no_measuring):
    with pytest.raises(BudgetInfeasibleError) as info:
        memplan.compile(_huge_relu(), target="mcu", memory_budget="1KiB")
    message = str(info.value)
    assert "tier 'flash' holds 2.00 MiB" in message
    assert "inputs and weights alone take 1.00 GiB" in message and "%x 1.00 GiB" in message


def test_budget_is_checked_before_measuring(no_measuring):
    with pytest.raises(BudgetInfeasibleError) as info:
        memplan.compile(_huge_relu(), target="cpu", memory_budget="1KiB")
    message = str(info.value)
    assert message.startswith("no plan fits the memory budget of 1.00 KiB")
    assert "at least 1.00 GiB in any order" in message and "node y" in message and "%y 1.00 GiB" in message
    assert info.value.budget == 1024 and info.value.lower_bound == 2**30


def test_tier_room_is_checked_before_measuring(no_measuring):
    """Inputs fit the tier, but what they leave is less than one node's activations."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2**18])  # 1 MiB of the mcu's 2 MiB
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [oh.make_node("Neg", ["x"], ["h"], name="n1"), oh.make_node("Exp", ["x"], ["g"], name="n2"),
             oh.make_node("Add", ["h", "g"], ["y"], name="n3")]
    with pytest.raises(BudgetInfeasibleError, match=r"leaving 1.00 MiB for activations, and the activation "
                                                    r"peak is at least 3.00 MiB in any order \(node y \(from n3\)"):
        # fusion off: fused into one loop, the three nodes might fit (the loop's scratch is measured to
        # know), so with fusion on the fused variant is planned, measuring included
        memplan.compile(_model(nodes, [x], [y]), target="mcu", options={"fusion": "off"})


def test_big_nodes_get_the_static_estimate_not_a_measurement(monkeypatch):
    measured = []
    real = scratch._measure_all
    monkeypatch.setattr(scratch, "_measure_all",
                        lambda pending, *a: measured.extend(n.name for n, _ in pending.values()) or real(pending, *a))
    scratch._CACHE.clear()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    small, big = torch.randn(2, 64), torch.randn(512, 64)  # 128 KiB activations: above a 64 KiB cap
    cm = memplan.compile(model, (big,), options={"scratch_measure_cap": 64 * 1024})
    assert not measured
    assert any("above the 64.00 KiB measuring cap" in line and "static estimate" in line for line in cm.log)
    torch.testing.assert_close(cm(big), model(big).detach())
    cm = memplan.compile(model, (small,), options={"scratch_measure_cap": 64 * 1024})
    assert measured and not any("measuring cap" in line for line in cm.log)


def test_measure_cap_defaults_to_256_mib_at_most():
    assert 0 < scratch.measure_cap({}) <= 256 * 2**20
    assert scratch.measure_cap({"scratch_measure_cap": 10}) == 10


def _triangle(n=65536):
    """a, b, c from x; p = a+b, q = b+c, r = a+c: every order holds a, b and c at once, while
    no single node touches more than two of them."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [n])
    outs = [oh.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in "pqr"]
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="A"), oh.make_node("Neg", ["x"], ["b"], name="B"),
             oh.make_node("Exp", ["x"], ["c"], name="C"), oh.make_node("Add", ["a", "b"], ["p"], name="P"),
             oh.make_node("Add", ["b", "c"], ["q"], name="Q"), oh.make_node("Add", ["a", "c"], ["r"], name="R")]
    return _model(nodes, [x], outs)


def test_tier_error_without_budget_names_the_tier_not_a_zero_budget():
    unit = 65536 * 4
    tiny = HardwareSpec("tiny", (MemoryTier("ram", unit + 4 * unit, 1e9),), {"float32": 1e9})
    with pytest.raises(BudgetInfeasibleError) as info:
        memplan.compile(_triangle(), target=tiny, options={"measure_scratch": False})
    message = str(info.value)
    assert "memory budget of 0 B" not in message and "memory budget" not in message
    assert message.startswith("no plan fits target 'tiny': tier 'ram' holds 1.25 MiB, of which inputs and "
                              "weights take 256.00 KiB, leaving 1.00 MiB for activations")
    assert "the smallest peak memplan found is 1.25 MiB" in message  # every value freed at its last use


@pytest.mark.parametrize("make", [
    lambda: (ConvNet().eval(), (torch.randn(2, 3, 16, 16),)),
    lambda: (torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)),
             (torch.randn(4, 8),)),
    lambda: (_triangle(256), None),
])
def test_the_early_bound_never_rejects_a_plan_that_fits(make):
    """The order-independent bound is at most the planned peak, so a budget of exactly the
    planned peak still compiles."""
    model, inputs = make()
    cm = memplan.compile(model, inputs, options={"measure_scratch": False})
    planned = cm.plan.stats["planned_peak_bytes"]
    assert node_lower_bound(cm.graph).nbytes <= planned
    memplan.compile(model, inputs, memory_budget=planned, options={"measure_scratch": False})
    with pytest.raises(BudgetInfeasibleError):
        memplan.compile(model, inputs, memory_budget=node_lower_bound(cm.graph).nbytes - 1,
                        options={"measure_scratch": False})
