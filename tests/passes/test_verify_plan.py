"""verify_plan reads a planned graph alone: it accepts what the pipeline makes and rejects every
kind of broken plan, one test per kind.

Most faults are small planned graphs written in the IR text form (``parse``), where a plan reads
best; a few take a compiled model's planned graph (``cm.graph``) and break one thing in a copy.
Every f32[4, 16] value below holds 256 bytes (a multiple of the 64-byte slot alignment).
"""
import copy
import re

import pytest
import torch

import memplan
from memplan.analysis.check import ALIGNMENT, PlanCheck, verify_plan
from memplan.errors import BudgetInfeasibleError, PlanVerificationError, UnsupportedOpError
from memplan.ir import Graph
from memplan.ir.graph import KERNEL, OWN, SLOT, Alloc
from memplan.ir.ops import lookup
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.passes.verify_plan import check_plan
from memplan.units import format_bytes
from tests.small_models import cases

T = "f32[4, 16]@dram"          # 256 B


def planned(*body: str, inputs: str = f"%x: {T}", ret: str = "%c") -> Graph:
    """A planned graph from IR text lines (the body of ``graph g``)."""
    text = f"graph g({inputs}) {{\n" + "".join(f"  {line}\n" for line in body) + f"  return {ret}\n}}"
    return parse(text)


def rejects(graph: Graph, match: str, target=None) -> str:
    with pytest.raises(PlanVerificationError, match=match) as info:
        verify_plan(graph, target)
    return str(info.value)


# ---------------------------------------------------------------- what the pipeline makes
@pytest.fixture(scope="module", params=["auto", "storage"])
def compiled(request):
    """The attention block (views, multi-output ops, in-place adds) planned in each allocation mode."""
    _name, model, inputs = cases()[1]
    return memplan.compile(model, inputs, options={"measure_scratch": False, "allocation": request.param})


@pytest.fixture(scope="module")
def stored():
    """The attention block with a static storage forced: values in slots to break."""
    _name, model, inputs = cases()[1]
    return memplan.compile(model, inputs, options={"measure_scratch": False, "allocation": "storage"})


def test_pipeline_plan_is_accepted(compiled):
    graph = compiled.graph
    check = verify_plan(graph, compiled.target)
    assert isinstance(check, PlanCheck) and check.planned
    assert check.steps == len(graph.nodes)
    assert check.planned_peak_bytes == compiled.plan.stats["planned_peak_bytes"]
    # the graph alone (attrs carry the target's tiers) and its text form give the same figures
    assert verify_plan(graph).peak_bytes == check.peak_bytes
    assert verify_plan(parse(print_graph(graph))).peak_bytes == check.peak_bytes
    owners = [v for n in graph.nodes for v in n.outputs if v.alloc is not None]
    assert owners and all(v.alloc.kind in (SLOT, OWN, KERNEL) for v in owners)
    if compiled.plan.stats.get("memory_budget") is None:
        assert "memory_budget" not in graph.attrs


def test_storage_mode_plan_has_a_storage_with_slots(stored):
    graph = stored.graph
    (storage,) = graph.storages.values()
    assert storage.tier == stored.target.main_tier.name
    slots = [v for v in graph.values() if v.alloc is not None and v.alloc.kind == SLOT]
    assert slots and all(v.alloc.offset % ALIGNMENT == 0 for v in slots)
    check = verify_plan(graph, stored.target)
    assert check.storage_bytes[storage.tier] == storage.nbytes
    assert check.planned_peak_bytes == stored.plan.stats["planned_peak_bytes"] >= storage.nbytes


def test_target_capacity_is_a_budget_too():
    model = torch.nn.Sequential(torch.nn.Linear(256, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 256))
    with pytest.raises(BudgetInfeasibleError, match="target 'mcu': tier 'flash' holds 2.00 MiB"):
        memplan.compile(model, (torch.randn(64, 256),), target="mcu")


# ---------------------------------------------------------------- order
def test_dependency_violation(compiled):
    graph = copy.deepcopy(compiled.graph)
    order = graph.nodes
    i = next(i for i in range(len(order) - 1)
             if any(v.producer is order[i] for v in order[i + 1].inputs))
    reader = order[i + 1]
    graph.reorder(order[:i] + [order[i + 1], order[i]] + order[i + 2:])
    rejects(graph, rf"step {i}: node {re.escape(reader.name)} reads %\S+ before it is produced")


def test_read_after_in_place_overwrite():
    ok = planned(f"%a: {T} kernel = aten.neg.default(%x)",
                 f"%b: {T} = aten.relu.default(%a) reuses(%a)",
                 f"%c: {T} own([16, 1]) = aten.add.Tensor(%b, %x)")
    verify_plan(ok)
    late = planned(f"%a: {T} kernel = aten.neg.default(%x)",
                   f"%b: {T} = aten.relu.default(%a) reuses(%a)",
                   f"%c: {T} own([16, 1]) = aten.add.Tensor(%b, %a)")
    rejects(late, r"step 2: node c reads %a after node b overwrote its storage in place")
    # through a view taken before the overwrite: the same bytes
    viewed = planned(f"%a: {T} kernel = aten.neg.default(%x)",
                     "%v: f32[64]@dram = aten.view.default(%a, [64])",
                     f"%b: {T} = aten.relu.default(%a) reuses(%a)",
                     "%c: f32[64]@dram own([1]) = aten.neg.default(%v)")
    rejects(viewed, r"node c reads %v after node b overwrote its storage in place")


# ---------------------------------------------------------------- slots in a storage
def _two_slots(offset_b: int, storage_bytes: int = 512, offset_a: int = 0) -> Graph:
    """%a and %b in one storage, both live at step 1 (%c reads both)."""
    return planned(f'storage %s = memplan.storage("dram", {storage_bytes})',
                   f"%a: {T} slot(%s, {offset_a}, [16, 1]) = aten.neg.default(%x)",
                   f"%b: {T} slot(%s, {offset_b}, [16, 1]) = aten.relu.default(%a)",
                   f"%c: {T} own([16, 1]) = aten.add.Tensor(%a, %b)")


def test_overlapping_live_slots():
    assert verify_plan(_two_slots(256)).planned_peak_bytes == 512 + 256
    rejects(_two_slots(0), r"step 1: %b \[0, 256\) overlaps %a \[0, 256\) in storage %s while both are live")
    rejects(_two_slots(192), r"%b \[192, 448\) overlaps %a \[0, 256\)")
    # a slot is free again after its value's last read
    chain = planned('storage %s = memplan.storage("dram", 512)',
                    f"%a: {T} slot(%s, 0, [16, 1]) = aten.neg.default(%x)",
                    f"%b: {T} slot(%s, 256, [16, 1]) = aten.relu.default(%a)",
                    f"%d: {T} slot(%s, 0, [16, 1]) = aten.neg.default(%b)",
                    f"%c: {T} own([16, 1]) = aten.neg.default(%d)")
    verify_plan(chain)


def test_overlapping_live_slots_in_a_pipeline_plan(stored):
    graph = copy.deepcopy(stored.graph)
    ranges = verify_plan(graph).live_ranges
    slots = {v.name: v for v in graph.values() if v.alloc is not None and v.alloc.kind == SLOT}
    a, b = next((a, b) for a in slots for b in slots
                if a < b and ranges[a][0] <= ranges[b][1] and ranges[b][0] <= ranges[a][1])
    slots[b].alloc = Alloc(SLOT, slots[a].alloc.storage, slots[a].alloc.offset, slots[b].alloc.strides)
    rejects(graph, rf"overlaps %({re.escape(a)}|{re.escape(b)}) .* while both are live")


def test_misaligned_slot():
    rejects(_two_slots(288, storage_bytes=576), r"step 1: %b at offset 288 is not 64-byte aligned")


def test_slot_past_the_storage_end():
    rejects(_two_slots(256, storage_bytes=448), r"step 1: %b \[256, 512\) reaches past %s of 448 bytes")


def test_slot_in_an_undeclared_storage():
    graph = _two_slots(256)
    b = graph.value("b")
    b.alloc = Alloc(SLOT, "nowhere", 256, (16, 1))
    rejects(graph, r"step 1: %b has a slot in %nowhere, which the graph does not declare")


def test_graph_output_in_a_slot():
    graph = planned('storage %s = memplan.storage("dram", 256)',
                    f"%c: {T} slot(%s, 0, [16, 1]) = aten.neg.default(%x)")
    rejects(graph, r"graph output %c lives in storage %s")


def test_value_without_an_alloc_in_a_planned_graph():
    graph = planned(f"%a: {T} kernel = aten.neg.default(%x)",
                    f"%b: {T} = aten.relu.default(%a)",
                    f"%c: {T} own([16, 1]) = aten.add.Tensor(%a, %b)")
    rejects(graph, r"step 1: %b \(written by b\) has no allocation")
    # the same graph with no allocation anywhere is unplanned: checked as free-at-last-use
    for v in graph.values():
        v.alloc = None
    check = verify_plan(graph)
    assert not check.planned and check.planned_peak_bytes == 3 * 256


def test_view_or_in_place_result_carrying_an_alloc():
    view = planned(f"%a: {T} kernel = aten.neg.default(%x)",
                   "%v: f32[64]@dram own([1]) = aten.view.default(%a, [64])",
                   "%c: f32[64]@dram own([1]) = aten.neg.default(%v)")
    rejects(view, r"step 1: %v is a view or in-place result of %a and owns no bytes, but it is allocated")
    inplace = planned('storage %s = memplan.storage("dram", 256)',
                      f"%a: {T} slot(%s, 0, [16, 1]) = aten.neg.default(%x)",
                      f"%b: {T} slot(%s, 0, [16, 1]) = aten.relu.default(%a) reuses(%a)",
                      f"%c: {T} own([16, 1]) = aten.neg.default(%b)")
    rejects(inplace, r"%b is a view or in-place result of %a and owns no bytes")


@pytest.mark.parametrize("alloc", ["slot(%s, 0, [32, 1])", "slot(%s, 0, [1, 1])", "own([16, 2])",
                                   "own([0, 1])", "own([-16, 1])"])
def test_non_dense_strides(alloc):
    graph = planned('storage %s = memplan.storage("dram", 1024)',
                    f"%a: {T} {alloc} = aten.neg.default(%x)",
                    f"%c: {T} own([16, 1]) = aten.neg.default(%a)")
    rejects(graph, r"step 0: %a f32\[4, 16\]@dram has strides .* that do not lay it out densely")


@pytest.mark.parametrize("alloc", ["slot(%s, 0, [1, 4])", "own([1, 4])"])
def test_dense_strides_in_another_order_are_accepted(alloc):
    verify_plan(planned('storage %s = memplan.storage("dram", 256)',
                        f"%a: {T} {alloc} = aten.neg.default(%x)",
                        f"%c: {T} own([16, 1]) = aten.neg.default(%a)"))


# ---------------------------------------------------------------- tiers
def test_space_differs_from_the_storage_tier():
    graph = planned('attr main_tier = "dram"',
                    'storage %s = memplan.storage("dram", 256)',
                    "%a: f32[4, 16]@sram slot(%s, 0, [16, 1]) = aten.neg.default(%x)",
                    "%c: f32[4, 16]@sram own([16, 1]) = aten.neg.default(%a)",
                    inputs="%x: f32[4, 16]@sram")
    rejects(graph, r"step 0: %a is typed in tier 'sram' but its slot is in %s \(tier 'dram'\)")
    # a value with no space is in the main tier: not in a storage of another tier either
    untyped = planned('attr main_tier = "dram"',
                      'storage %s = memplan.storage("sram", 256)',
                      "%a: f32[4, 16] slot(%s, 0, [16, 1]) = aten.neg.default(%x)",
                      "%c: f32[4, 16] own([16, 1]) = aten.neg.default(%a)",
                      inputs="%x: f32[4, 16]")
    rejects(untyped, r"%a is typed in tier 'dram' but its slot is in %s \(tier 'sram'\)")


def test_compute_node_touching_two_tiers():
    graph = planned('attr main_tier = "dram"',
                    'storage %s = memplan.storage("sram", 256)',
                    "%a: f32[4, 16]@sram slot(%s, 0, [16, 1]) = aten.neg.default(%x)",
                    "%c: f32[4, 16]@sram own([16, 1]) = aten.neg.default(%a)")
    rejects(graph, r"step 0: node a \(aten.neg.default\) touches tiers dram, sram")


def test_two_storages_in_one_tier():
    graph = planned('storage %s = memplan.storage("dram", 256)',
                    'storage %t = memplan.storage("dram", 256)',
                    f"%a: {T} slot(%s, 0, [16, 1]) = aten.neg.default(%x)",
                    f"%c: {T} own([16, 1]) = aten.neg.default(%a)")
    rejects(graph, r"tier 'dram' has 2 storages; a planned graph has one storage per tier")


# ---------------------------------------------------------------- limits
def _limited(*attrs: str) -> Graph:
    """Planned peak 512 B in dram (storage 256 B + %c 256 B); input %x resident 256 B."""
    return planned(*attrs, 'storage %s = memplan.storage("dram", 256)',
                   f"%a: {T} slot(%s, 0, [16, 1]) = aten.neg.default(%x)",
                   f"%c: {T} own([16, 1]) = aten.neg.default(%a)")


def test_budget_exceeded():
    assert verify_plan(_limited("attr memory_budget = 512")).planned_peak_bytes == 512
    message = rejects(_limited("attr memory_budget = 511"), "exceeds the memory budget")
    assert message.startswith("planned peak 512 B (storages 256 B") and message.endswith("memory budget 511 B")


def test_budget_exceeded_in_a_pipeline_plan(compiled):
    graph = copy.deepcopy(compiled.graph)
    peak = compiled.plan.stats["planned_peak_bytes"]
    graph.attrs["memory_budget"] = peak // 2
    message = rejects(graph, "exceeds the memory budget")
    assert f"planned peak {format_bytes(peak)}" in message and f"budget {format_bytes(peak // 2)}" in message


def test_tier_capacity_exceeded():
    verify_plan(_limited("attr capacity.dram = 768"))
    rejects(_limited("attr capacity.dram = 767"),
            r"plan needs 512 B \+ 256 B \(inputs and weights\) in tier 'dram', which holds 767 B")


def test_negative_scratch():
    graph = _limited()
    node = graph.nodes[0]
    node.scratch = 1024
    assert verify_plan(graph).planned_peak_bytes == 256 + 1024   # scratch counts at its step
    node.scratch = -1
    rejects(graph, r"step 0: node a declares scratch -1; it must be a non-negative number of bytes")


# ---------------------------------------------------------------- recomputation
def _recomputed(clone: str) -> Graph:
    return planned(f"%a: {T} kernel = aten.clamp.default(%x, min=0.5)",
                   f"%n: {T} kernel = aten.neg.default(%a)",
                   f"%a2: {T} kernel = {clone} recomputes(%a)",
                   f"%c: {T} own([16, 1]) = aten.add.Tensor(%n, %a2)")


def test_correct_recompute_clone_is_accepted():
    check = verify_plan(_recomputed("aten.clamp.default(%x, min=0.5)"))
    assert check.planned_peak_bytes == 3 * 256
    # made by the graph API
    graph = _recomputed("aten.clamp.default(%x, min=0.5)")
    a, n, _, c = graph.nodes
    clone = graph.clone_node(a, before=c)
    clone.outputs[0].alloc = Alloc(KERNEL)
    verify_plan(graph)


@pytest.mark.parametrize("clone,why", [
    ("aten.relu.default(%x)", "another op"),
    ("aten.clamp.default(%x, min=0.25)", "another literal"),
    ("aten.clamp.default(%x, max=0.5)", "another keyword"),
    ("aten.clamp.default(%x, 0.5)", "a positional argument for a keyword"),
])
def test_recompute_clone_of_another_computation_is_rejected(clone, why):
    rejects(_recomputed(clone), r"step 2: node a2 \(aten\.\w+\.default\) claims to recompute %a, computed by a")


def test_recompute_clone_reading_other_values_is_rejected():
    rejects(_recomputed("aten.clamp.default(%n, min=0.5)"),
            r"step 2: node a2 recomputes %a from %n, which is neither %x nor a recomputation of it")


# ---------------------------------------------------------------- copies between tiers
def _copying(src_in: str, dst_in: str, src_out: str = "sram", dst_out: str = "dram") -> Graph:
    try:
        lookup("memplan.copy")
    except UnsupportedOpError:
        pytest.skip("memplan.copy not registered")
    return planned('attr main_tier = "dram"',
                   "attr capacity.dram = 1048576",
                   "attr capacity.sram = 1024",
                   'storage %s = memplan.storage("sram", 512)',
                   f"%a: f32[4, 16]@sram slot(%s, 0, [16, 1]) = memplan.copy(%x, src='{src_in}', dst='{dst_in}')",
                   "%b: f32[4, 16]@sram slot(%s, 256, [16, 1]) = aten.neg.default(%a)",
                   f"%c: {T} own([16, 1]) = memplan.copy(%b, src='{src_out}', dst='{dst_out}')")


def test_copy_between_tiers_is_accepted():
    check = verify_plan(_copying("dram", "sram"))
    assert check.peak_bytes == {"sram": 512, "dram": 256} and check.planned_peak_bytes == 256


@pytest.mark.parametrize("src_in,dst_in,src_out,dst_out", [
    ("sram", "dram", "sram", "dram"),
    ("dram", "dram", "sram", "dram"),
    ("dram", "sram", "dram", "dram"),
    ("dram", "sram", "sram", "sram"),
])
def test_copy_with_wrong_src_or_dst_is_rejected(src_in, dst_in, src_out, dst_out):
    rejects(_copying(src_in, dst_in, src_out, dst_out), r"copy (a|c) says '\w+' -> '\w+' but moves %\w+ in")


# ---------------------------------------------------------------- a report against its planned graph
def test_check_plan_accepts_the_report_of_its_graph(compiled):
    check = check_plan(compiled.graph, compiled.plan)
    assert check.planned_peak_bytes == compiled.plan.stats["planned_peak_bytes"]


def test_check_plan_rejects_a_report_for_another_graph(compiled):
    plan = copy.deepcopy(compiled.plan)
    plan.graph = "someone_else"
    with pytest.raises(PlanVerificationError, match="the plan is for graph 'someone_else'"):
        check_plan(compiled.graph, plan)


def test_check_plan_rejects_a_report_with_another_schedule(compiled):
    plan = copy.deepcopy(compiled.plan)
    plan.schedule = plan.schedule[::-1]
    with pytest.raises(PlanVerificationError, match="the plan's schedule is not the one of the planned IR"):
        check_plan(compiled.graph, plan)


def test_check_plan_rejects_a_report_with_other_offsets(stored):
    plan = copy.deepcopy(stored.plan)
    tier = next(iter(plan.allocation))
    name = next(iter(plan.allocation[tier]))
    plan.allocation[tier][name] += ALIGNMENT * 1024
    with pytest.raises(PlanVerificationError, match="the plan's allocation is not the one"):
        check_plan(stored.graph, plan)
