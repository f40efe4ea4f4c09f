"""verify_plan accepts what the pipeline makes and rejects every kind of broken plan."""
import copy

import pytest
import torch

import memplan
from memplan.errors import BudgetInfeasibleError, PlanVerificationError
from memplan.passes.verify_plan import verify_plan
from tests.small_models import cases


@pytest.fixture(scope="module")
def compiled():
    name, model, inputs = cases()[1]  # attention block: views, multi-output ops, fused attention
    return memplan.compile(model, inputs, options={"measure_scratch": False})


def _broken(cm, edit):
    plan = copy.deepcopy(cm.plan)
    edit(cm.graph, plan)
    return plan


def test_pipeline_plan_is_accepted(compiled):
    verify_plan(compiled.graph, compiled.plan, compiled.target)


def test_dependency_violation(compiled):
    order = compiled.plan.schedule
    produced_by = {v.name: n.name for n in compiled.graph.nodes for v in n.outputs}
    i = next(i for i in range(len(order) - 1)
             if any(produced_by.get(v.name) == order[i] for v in compiled.graph.node(order[i + 1]).inputs))

    def swap(graph, plan):
        plan.schedule[i], plan.schedule[i + 1] = plan.schedule[i + 1], plan.schedule[i]
    with pytest.raises(PlanVerificationError, match="before it is produced"):
        verify_plan(compiled.graph, _broken(compiled, swap))


def test_missing_and_repeated_nodes(compiled):
    with pytest.raises(PlanVerificationError, match="never runs node"):
        verify_plan(compiled.graph, _broken(compiled, lambda g, p: p.schedule.pop()))
    with pytest.raises(PlanVerificationError, match="runs twice"):
        verify_plan(compiled.graph, _broken(compiled, lambda g, p: p.schedule.insert(1, p.schedule[0])))


def _two_overlapping_live(plan):
    bufs = plan.stats["buffers"]
    names = sorted(bufs)
    for a in names:
        for b in names:
            la, ua, sa = bufs[a]
            lb, ub, sb = bufs[b]
            if a < b and sa and sb and la < ub and lb < ua:
                return a, b
    raise AssertionError("no two buffers live together")


def test_overlapping_live_buffers(compiled):
    def collide(graph, plan):
        a, b = _two_overlapping_live(plan)
        tier = next(iter(plan.allocation))
        plan.allocation[tier][b] = plan.allocation[tier][a]
    with pytest.raises(PlanVerificationError, match="overlaps"):
        verify_plan(compiled.graph, _broken(compiled, collide))


def test_misaligned_and_out_of_arena_slots(compiled):
    tier = next(iter(compiled.plan.allocation))
    name = next(iter(compiled.plan.allocation[tier]))

    def misalign(graph, plan):
        plan.allocation[tier][name] += 4
    with pytest.raises(PlanVerificationError, match="aligned"):
        verify_plan(compiled.graph, _broken(compiled, misalign))

    def shrink(graph, plan):
        plan.stats["arena_bytes"] = 64
    with pytest.raises(PlanVerificationError, match="past the arena"):
        verify_plan(compiled.graph, _broken(compiled, shrink))

    def unplace(graph, plan):
        del plan.allocation[tier][name]
    with pytest.raises(PlanVerificationError, match="no slot"):
        verify_plan(compiled.graph, _broken(compiled, unplace))


def test_output_in_arena_and_budget(compiled):
    out = compiled.graph.outputs[0].name

    def put_output_in_arena(graph, plan):
        plan.allocation[next(iter(plan.allocation))][out] = 0
    with pytest.raises(PlanVerificationError, match="outputs must live outside"):
        verify_plan(compiled.graph, _broken(compiled, put_output_in_arena))

    def lower_budget(graph, plan):
        plan.stats["memory_budget"] = plan.stats["planned_peak_bytes"] - 1
    with pytest.raises(PlanVerificationError, match="exceeds the memory budget"):
        verify_plan(compiled.graph, _broken(compiled, lower_budget))


def test_target_capacity_is_a_budget_too():
    model = torch.nn.Sequential(torch.nn.Linear(256, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 256))
    with pytest.raises(BudgetInfeasibleError, match="target 'mcu': tier 'flash' holds 2.00 MiB"):
        memplan.compile(model, (torch.randn(64, 256),), target="mcu")


def test_storage_the_backend_cannot_realise_is_rejected(compiled):
    """A tampered plan: each buffer in a made-up tier of its own at offset 0 (the backend places one
    arena), offsets without an arena size, negative offsets, and a stated peak below what the
    buffers need."""
    tier = next(iter(compiled.plan.allocation))

    def own_tiers(graph, plan):
        plan.allocation = {f"tier{i}": {name: 0} for i, name in enumerate(plan.allocation[tier])}
    with pytest.raises(PlanVerificationError, match="allocates in .* tiers"):
        verify_plan(compiled.graph, _broken(compiled, own_tiers))

    def renamed_tier(graph, plan):
        plan.allocation = {"sram": plan.allocation[tier]}
    with pytest.raises(PlanVerificationError, match="not the main memory tier"):
        verify_plan(compiled.graph, _broken(compiled, renamed_tier), compiled.target)

    def no_arena_size(graph, plan):
        del plan.stats["arena_bytes"]
        name = next(iter(plan.allocation[tier]))
        plan.allocation[tier][name] = 2**62
    with pytest.raises(PlanVerificationError, match="states no size"):
        verify_plan(compiled.graph, _broken(compiled, no_arena_size))

    def negative(graph, plan):
        name = next(iter(plan.allocation[tier]))
        plan.allocation[tier][name] = -64
    with pytest.raises(PlanVerificationError, match="is negative"):
        verify_plan(compiled.graph, _broken(compiled, negative))

    def understated(graph, plan):
        plan.stats["planned_peak_bytes"] = 1
    with pytest.raises(PlanVerificationError, match="states a planned peak"):
        verify_plan(compiled.graph, _broken(compiled, understated))

    def stranger(graph, plan):
        plan.allocation[tier]["not_a_value"] = 0
    with pytest.raises(PlanVerificationError, match="which no node"):
        verify_plan(compiled.graph, _broken(compiled, stranger))


def test_plan_of_another_graph_is_rejected(compiled):
    def rename(graph, plan):
        plan.graph = "someone_else"
    with pytest.raises(PlanVerificationError, match="the plan is for graph 'someone_else'"):
        verify_plan(compiled.graph, _broken(compiled, rename))
