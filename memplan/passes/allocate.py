"""Pass ``allocate``: write the allocation into the IR — one storage per tier, a slot per value.

Each value that owns bytes gets an :class:`~memplan.ir.graph.Alloc`
(:func:`~memplan.analysis.planning.storage_kinds`): a ``slot`` in the main
tier's storage when its op writes through a copy-free ``out=`` form, a buffer
of its ``own`` when it is a graph output (handed to the caller, so it never
pins or aliases the storage), or ``kernel`` when the op allocates its result
itself (kernel-owned: it lives from its step to its last use and is never
copied). The slots are packed by
:func:`~memplan.solvers.allocation.solve_allocation` (greedy portfolio, then an
exact search towards the interval lower bound). The planned peak is then

    storage bytes + max over steps (own and kernel-owned values live + scratch of the step)

The pass also plans the same graph with no storage at all — every value
kernel-owned, freed at its last use, as eager PyTorch runs it — and keeps that
plan when its peak is lower: a plan is never above the free-at-last-use run.
The order may change too (``joint``: the order whose packed peak is lowest).
Every value's type gets the main tier as its memory space, each node its
measured scratch, and the graph the target's capacities and the budget
(``attr``), so :func:`~memplan.analysis.check.verify_plan` can check the result
on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from memplan.analysis.liveness import Liveness, liveness
from memplan.analysis.planning import budget_error, liveness_stats, schedule_problem, storage_kinds
from memplan.analysis.check import ALIGNMENT
from memplan.ir.graph import KERNEL, OWN, SLOT, Alloc, Graph
from memplan.ir.regions import LOOP
from memplan.passes.capacity import check_capacity
from memplan.analysis.strides import eager_strides, slot_strides
from memplan.passes.registry import register_pass
from memplan.passes.schedule import planned_scratch
from memplan.solvers.allocation import Buffer, solve_allocation
from memplan.units import format_bytes


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def arena_split(live: Liveness, kinds: dict[str, str]) -> tuple[list[Buffer], list[int]]:
    """The storage's buffers (``[start, end + 1)`` lifetimes) and, per step, the bytes outside it
    (own and kernel-owned values live then, plus the step's scratch)."""
    buffers = [Buffer(r.value, r.start, r.end + 1, _aligned(r.nbytes))
               for r in live.ranges.values() if kinds.get(r.value) == SLOT]
    outside = list(live.temp_bytes)
    for r in live.ranges.values():
        if kinds.get(r.value) != SLOT:
            for i in range(r.start, r.end + 1):
                outside[i] += r.nbytes
    return buffers, outside


def quick_planned_peak(graph, order: list[str], temps, kinds) -> tuple[int, int]:
    """(greedy storage height + the most bytes outside it at once, live-bytes peak) of an order."""
    live = liveness(graph, order, temps=temps)
    buffers, outside = arena_split(live, kinds)
    greedy = solve_allocation(buffers, time_limit=1.0, alignment=ALIGNMENT, method="greedy")
    return greedy.height + max(outside, default=0), live.peak_bytes


def joint_order(graph, stats: dict, temps, kinds) -> list[str]:
    """Iterated order/offsets: among the current order, the topological... every heuristic order,
    keep the one whose *packed* storage (plus what lives outside it) is lowest.

    The order with the fewest live bytes can still pack worse (fragmentation depends on the
    order), so this compares what the run would really allocate; the current order wins ties.
    Records each candidate's figures in ``stats["joint"]``.
    """
    from memplan.solvers.sched_heuristics import HEURISTICS

    problem = schedule_problem(graph, temps)
    candidates = {"scheduler": [n.name for n in graph.nodes]}
    for name, heuristic in HEURISTICS.items():
        candidates[name] = [graph.nodes[i].name for i in heuristic(problem)]
    scored = {}
    seen: dict[tuple, str] = {}
    for name, order in candidates.items():
        key = tuple(order)
        if key in seen:
            scored[name] = scored[seen[key]]
            continue
        seen[key] = name
        scored[name] = quick_planned_peak(graph, order, temps, kinds)
    best = min(candidates, key=lambda n: (scored[n][0], n != "scheduler"))
    stats["joint"] = {"chosen": best, "candidates": {n: {"planned": p, "live_peak": l}
                                                     for n, (p, l) in scored.items()}}
    return candidates[best]


@dataclass(frozen=True)
class AllocateOptions:
    """Options of ``allocate``."""

    allocation: Literal["auto", "storage", "free"] = "auto"  # static storage, free-at-last-use, or the lower
    allocate_time_limit: float = 5.0        # seconds for the packing search
    joint: bool = True                      # choose among candidate orders by their packed peak
    measure_scratch: bool = True
    scratch_measure_cap: int | None = None


@register_pass("allocate", options=AllocateOptions, produces=("order", "allocation"))
def allocate(graph, ctx):
    """Write the allocation into the IR: storage, slots, kernel-owned values, scratch, spaces, limits.

    Every value that owns bytes gets a slot, its own buffer or kernel ownership; the budget and the
    tier's capacity are enforced."""
    stats = ctx.records.setdefault("stats", {})
    if "_scratch" not in ctx.records:
        check_capacity(graph, ctx)  # before measuring anything: no order fits, no need to try
    kinds = storage_kinds(graph, ctx.get_backend().writes_into)
    temps = planned_scratch(graph, ctx)
    if ctx.options.get("joint", True):
        by_name = {n.name: n for n in graph.nodes}
        graph.reorder([by_name[name] for name in joint_order(graph, stats, temps, kinds)])
    live = liveness(graph, temps=temps)
    buffers, outside = arena_split(live, kinds)
    extra = max(outside, default=0)
    time_limit = float(ctx.options.get("allocate_time_limit", 5.0))
    result = solve_allocation(buffers, time_limit=time_limit, alignment=ALIGNMENT)
    budget = ctx.memory_budget
    if budget is not None and result.height + extra > budget and budget - extra >= result.lower_bound:
        # feasibility mode: any packing under what the budget leaves for the storage
        tight = solve_allocation(buffers, capacity=budget - extra, time_limit=time_limit, alignment=ALIGNMENT)
        if tight.height < result.height:
            result = tight
    planned = _aligned(result.height) + extra

    # the same graph run with every value kernel-owned, freed at its last use (eager's behaviour)
    mode = ctx.options.get("allocation", "auto")
    if mode not in ("auto", "storage", "free"):
        from memplan.errors import MemplanError
        raise MemplanError(f"option allocation={mode!r:.40}: choose auto (the lower planned peak), storage "
                           "(a static storage per tier) or free (every value kernel-owned, freed at its last use)")
    heap_temps, heap_peak = None, None
    bare = liveness(graph)  # no scratch: what freeing at last use holds at each step, before kernels
    # without its scratch the free run's peak is a bound: measure it only if it can win
    if mode == "free" or (mode == "auto" and not _free_cannot_win(graph, ctx, planned, bare)):
        heap_temps = ctx.get_backend().scratch(graph, _own(kinds), ctx.options, ctx.log)
        heap_peak = liveness(graph, temps=heap_temps).peak_bytes
        stats["free_at_last_use_peak_bytes"] = heap_peak
    use_storage = heap_peak is None or (mode == "auto" and planned <= heap_peak)
    if not use_storage:
        storage_peak = planned
        kinds, temps, planned, result, buffers = mixed_plan(graph, kinds, temps, heap_temps, heap_peak,
                                                            time_limit, bare)
        use_storage = bool(buffers)
        ctx.log.append(f"allocate: a static storage for every value with an out= form would peak at "
                       f"{format_bytes(storage_peak)}, above the {format_bytes(heap_peak)} of freeing each value at "
                       f"its last use: {len(buffers)} values keep a slot (those that do not raise the peak), the "
                       f"others are kernel-owned; planned peak {format_bytes(planned)}")
        live = liveness(graph, temps=temps)
    _write_plan(graph, ctx, kinds, temps, {b: o for b, o in result.offsets.items()} if use_storage else {},
                _aligned(result.height) if use_storage and buffers else 0)

    stats.update(liveness_stats(graph, live))
    stats["live_profile"] = live.live_bytes
    stats["arena_lower_bound_bytes"] = result.lower_bound if use_storage else 0
    stats.setdefault("solves", []).append({
        "pass": "allocate", "method": result.method if use_storage else "free-at-last-use",
        "status": result.status, "objective": result.height, "bound": result.lower_bound,
        "gap": round(result.gap, 6), "wall_s": round(result.wall_s, 4), "buffers": len(buffers)})
    lower = stats.get("lower_bound_bytes", 0)
    planned += graph.attrs.get("input_copies", 0)  # inputs copied to row-major at the call (api.compile)
    if budget is not None and planned > budget:
        raise budget_error(live, budget, planned, lower)
    tier = ctx.target.main_tier
    room = tier.capacity - live.resident_bytes
    if planned > room:
        raise budget_error(live, max(room, 0), planned, lower,
                           limit=f"target {ctx.target.name!r}: tier {tier.name!r} holds "
                                 f"{format_bytes(tier.capacity)}, of which inputs and weights take "
                                 f"{format_bytes(live.resident_bytes)}, leaving {format_bytes(max(room, 0))} "
                                 "for activations")
    return graph


def _own(kinds: dict[str, str]) -> set[str]:
    """Values with a buffer of their own (graph outputs with an out= form): written through the
    out= form however the rest is planned, so measured so."""
    return {v for v, k in kinds.items() if k == OWN}


PROOF_STEPS = 8  # steps at the top of the live profile measured first (a cheap proof the free run loses)


def _free_cannot_win(graph: Graph, ctx, planned: int, live) -> bool:
    """True when freeing every value at its last use provably peaks at ``planned`` or above, without
    measuring every kernel: its peak is at least, at any step, the bytes live then plus that step's
    scratch, so the steps where most bytes are live are measured first. ``live``: the graph's
    liveness without scratch."""
    if live.peak_bytes >= planned:
        return True
    top = sorted(range(len(graph.nodes)), key=lambda i: -live.live_bytes[i])[:PROOF_STEPS]
    top = [i for i in top if live.live_bytes[i] < planned]
    names = {graph.nodes[i].name for i in top}
    scratch = ctx.get_backend().scratch(graph, _own(storage_kinds(graph, ctx.get_backend().writes_into)), ctx.options,
                                        ctx.log, only=names)
    return any(live.live_bytes[i] + scratch.get(graph.nodes[i].name, 0) >= planned for i in top)


MIXED_CANDIDATES = 256  # the largest values tried in a slot when a full storage peaks above freeing


def mixed_plan(graph: Graph, kinds: dict[str, str], temps: dict[str, int], heap_temps: dict[str, int],
               heap_peak: int, time_limit: float, live=None):
    """Slot vs kernel-owned per value, when a storage for every value would peak above freeing each
    value at its last use: start from the latter (every value kernel-owned) and, largest first, give a
    node's results slots whenever that does not raise the planned peak (storage height + the most bytes
    outside it at once). Never above ``heap_peak``. ``live``: the graph's liveness without scratch
    (computed if not given). Returns (kinds, scratch, planned peak, packing, buffers)."""
    live = liveness(graph) if live is None else live
    steps = max(len(graph.nodes), 1)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    outside = [0] * steps
    for r in live.ranges.values():
        for i in range(r.start, r.end + 1):
            outside[i] += r.nbytes
    scratch = [heap_temps.get(n.name, 0) for n in graph.nodes]
    units = []
    for node in graph.nodes:
        slots = [v.name for v in node.outputs if kinds.get(v.name) == SLOT]
        if slots:
            units.append((sum(live.ranges[s].nbytes for s in slots), node, slots))
    units.sort(key=lambda u: (-u[0], index[u[1].name]))
    chosen: list[Buffer] = []
    chosen_nodes: set[str] = set()
    best = heap_peak
    for _size, node, slots in units[:MIXED_CANDIDATES]:
        ranges = [live.ranges[s] for s in slots]
        trial_outside = list(outside)
        for r in ranges:
            for i in range(r.start, r.end + 1):
                trial_outside[i] -= r.nbytes
        trial_scratch = list(scratch)
        trial_scratch[index[node.name]] = temps.get(node.name, 0)
        trial = chosen + [Buffer(r.value, r.start, r.end + 1, _aligned(r.nbytes)) for r in ranges]
        height = solve_allocation(trial, time_limit=1.0, alignment=ALIGNMENT, method="greedy").height
        peak = _aligned(height) + max(o + s for o, s in zip(trial_outside, trial_scratch))
        if peak <= best:
            best, chosen, outside, scratch = peak, trial, trial_outside, trial_scratch
            chosen_nodes.add(node.name)
    result = solve_allocation(chosen, time_limit=time_limit, alignment=ALIGNMENT)
    mixed = {}
    for node in graph.nodes:
        for v in node.outputs:
            if v.name in kinds:
                mixed[v.name] = kinds[v.name] if node.name in chosen_nodes else KERNEL
    mixed_temps = {n.name: (temps if n.name in chosen_nodes else heap_temps).get(n.name, 0) for n in graph.nodes}
    planned = (_aligned(result.height) if chosen else 0) + max(o + s for o, s in zip(outside, scratch))
    return mixed, mixed_temps, planned, result, chosen


def _write_plan(graph: Graph, ctx, kinds: dict[str, str], temps: dict[str, int], offsets: dict[str, int],
                storage_bytes: int) -> None:
    """Write the decisions into the IR: spaces, the storage, each value's allocation, scratch, attrs."""
    tier = ctx.target.main_tier.name
    for name in list(graph.storages):
        del graph.storages[name]
    storage = graph.add_storage(tier, storage_bytes) if offsets else None
    needs_strides = [v for node in graph.nodes for v in node.outputs if kinds.get(v.name) in (SLOT, OWN)]
    strides = eager_strides(graph) if needs_strides else {}
    for v in graph.values():
        v.type = v.type.with_space(tier)
        v.alloc = None
    for node in graph.nodes:
        node.scratch = int(temps.get(node.name, 0))
        for v in node.outputs:
            kind = kinds.get(v.name)
            if kind is None:
                continue
            if kind == SLOT and v.name not in offsets:
                kind = OWN  # defensive: a buffer the packer did not place gets its own allocation
            if kind == KERNEL and node.op == LOOP:
                kind = OWN  # a loop writes each trip into a buffer it is given: never kernel-owned
            layout = slot_strides(v.type.shape, strides.get(v.name)) if kind in (SLOT, OWN) else None
            if kind == SLOT:
                v.alloc = Alloc(SLOT, storage.name, offsets[v.name], layout)
            else:
                v.alloc = Alloc(kind, strides=layout)
    graph.attrs["target"] = ctx.target.name
    graph.attrs["main_tier"] = tier
    for t in ctx.target.tiers:
        graph.attrs[f"capacity.{t.name}"] = int(t.capacity)
    if ctx.memory_budget is not None:
        graph.attrs["memory_budget"] = int(ctx.memory_budget)
    else:
        graph.attrs.pop("memory_budget", None)
