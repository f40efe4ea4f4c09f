"""The independent plan checker: :func:`verify_plan` reads a planned IR alone.

A planned graph *is* the plan (see ``docs/planned-ir.md``): the node order is
the schedule, ``Graph.storages`` the static buffers of each tier, each value's
``alloc`` its slot, ``Node.scratch`` the bytes a kernel needs beyond its
outputs, ``Graph.attrs`` the budget and the tiers' capacities. The checker
trusts nothing a planning pass computed: it re-derives every value's storage
root (views alias their base; ``reuses`` writes over an input) and last read
from the graph, then simulates the run step by step and rejects the plan
(:class:`~memplan.errors.PlanVerificationError`, naming step, node and values) if

- a node reads a value before it is produced, or after a node overwrote its
  storage in place; an in-place node reads another alias of the bytes it
  overwrites, writes more bytes than they hold, or overwrites an input,
  weight or graph output;
- a value that owns bytes has no allocation (in a planned graph), a view or
  in-place result claims bytes of its own, a graph output lives in a
  storage, or a slot is misaligned, not dense, reaches past its storage or
  names a storage that does not exist;
- two values live at the same time overlap in a storage;
- a value's memory space is not its storage's tier, a compute node reads or
  writes two tiers (only ``memplan.copy`` moves data between tiers);
- a clone (``recomputes``) is not the same computation as what it recomputes;
- a tier's planned peak plus the inputs and weights resident in it exceed its
  capacity, or the planned peak exceeds the memory budget.

The planned peak of a tier is its storages' bytes (allocated for the whole
run) plus, at the worst step, the bytes of values allocated on their own or by
their kernel that are live then, plus that step's declared scratch. An
unplanned graph (no allocation anywhere) is checked as the plain
free-at-last-use run: every value kernel-owned.
"""
from __future__ import annotations

import bisect
import itertools
import heapq
from dataclasses import dataclass, field

from memplan.errors import IRVerificationError, PlanVerificationError
from memplan.ir.regions import LOOP, REGION_OPS, check_region, lockstep_inputs
from memplan.ir.graph import KERNEL, OWN, SLOT, Graph, Node, Value, iter_values, map_values
from memplan.ir.ops import OpKind, is_view, lookup
from memplan.ir.types import eval_bytes, is_dense
from memplan.target import HardwareSpec
from memplan.units import format_bytes

ALIGNMENT = 64  # bytes: every slot starts on a cache line (and on any dtype's boundary)
COPY_OPS = frozenset({"memplan.copy"})


@dataclass
class PlanCheck:
    """What the checker found: the figures of a sound plan, per tier."""

    steps: int
    planned: bool                                   # the graph has allocations
    storage_bytes: dict[str, int] = field(default_factory=dict)     # tier -> bytes of its storages
    outside_profile: dict[str, list[int]] = field(default_factory=dict)  # tier -> per step, own/kernel + scratch
    peak_bytes: dict[str, int] = field(default_factory=dict)        # tier -> planned peak
    peak_step: dict[str, int] = field(default_factory=dict)
    resident_bytes: dict[str, int] = field(default_factory=dict)    # tier -> inputs + weights
    live_ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # root -> (start, end, bytes)
    main_tier: str = ""

    @property
    def planned_peak_bytes(self) -> int:
        return self.peak_bytes.get(self.main_tier, 0)


def _fail(message: str):
    raise PlanVerificationError(message)


def storage_roots(graph: Graph) -> dict[str, str]:
    """value -> the value whose bytes it uses (re-derived here on purpose, not shared with the planner)."""
    root = {v.name: v.name for v in graph.values()}
    for n in graph.nodes:
        if n.reuses is not None:
            root[n.outputs[0].name] = root[n.reuses.name]
        elif is_view(n.op) and n.inputs:
            for v in n.outputs:
                root[v.name] = root[n.inputs[0].name]
    return root


def main_tier_of(graph: Graph, target: HardwareSpec | None) -> str:
    if target is not None:
        return target.main_tier.name
    tier = graph.attrs.get("main_tier")
    if isinstance(tier, str):
        return tier
    spaces = [v.type.space for v in graph.values() if v.type.space]
    return spaces[0] if spaces else ""


def _capacities(graph: Graph, target: HardwareSpec | None) -> dict[str, int]:
    if target is not None:
        return {t.name: t.capacity for t in target.tiers}
    out = {}
    for key, value in graph.attrs.items():
        if key.startswith("capacity.") and isinstance(value, int) and not isinstance(value, bool):
            out[key[len("capacity."):]] = value
    return out


def verify_plan(graph: Graph, target: HardwareSpec | None = None, *, alignment: int = ALIGNMENT) -> PlanCheck:
    """Check the planned graph (see the module docstring); return its figures, or raise
    :class:`PlanVerificationError` naming the step and values at fault."""
    if not isinstance(graph, Graph):
        _fail(f"verify_plan takes a planned graph, got {type(graph).__name__}")
    main = main_tier_of(graph, target)
    capacities = _capacities(graph, target)
    root = storage_roots(graph)
    planned = bool(graph.storages) or any(v.alloc is not None for v in graph.values())
    order = graph.nodes
    end = len(order) - 1
    outputs = {root[v.name] for v in graph.outputs}

    _check_storages(graph, capacities, alignment)
    # ---- last reads (a root lives to the last read of any of its aliases; outputs to the end)
    produced_at: dict[str, int] = {}
    last_read: dict[str, int] = {}
    for step, node in enumerate(order):
        for v in node.inputs:
            last_read[root[v.name]] = step
        for v in node.outputs:
            produced_at.setdefault(v.name, step)
    for r in outputs:
        last_read[r] = end

    values_by_name = {v.name: v for v in graph.values()}
    available = {v.name for v in graph.inputs} | {v.name for v in graph.params}
    resident = {v.name for v in graph.inputs} | {v.name for v in graph.params}
    clobbered: dict[str, str] = {}
    values_of: dict[str, list[str]] = {}
    graph_outputs = {v.name for v in graph.outputs}
    check = PlanCheck(len(order), planned, main_tier=main)
    owned: list[tuple[str, str, int, int, int]] = []   # (root, tier, start, end, bytes) outside storages
    slots: dict[str, list[tuple[int, int, int, int, str]]] = {}  # storage -> (start, end, lo, hi, value)
    names_seen: set[str] = set()
    for step, node in enumerate(order):
        if node.name in names_seen:
            _fail(f"step {step}: two nodes are named {node.name!r}")
        names_seen.add(node.name)
        for v in node.inputs:
            if v.name not in available:
                _fail(f"step {step}: node {node.name} reads %{v.name} before it is produced")
            if v.name in clobbered:
                _fail(f"step {step}: node {node.name} reads %{v.name} after node {clobbered[v.name]} "
                      "overwrote its storage in place")
        if not isinstance(node.scratch, int) or isinstance(node.scratch, bool) or node.scratch < 0:
            _fail(f"step {step}: node {node.name} declares scratch {node.scratch!r:.40}; it must be a "
                  "non-negative number of bytes")
        _check_spaces(step, node, main)
        if node.recomputes is not None:
            _check_recompute(step, node, values_by_name)
        if node.subgraph is not None or node.op in REGION_OPS:
            _check_region(step, node)
        if node.op.startswith("aten.as_strided."):
            _check_as_strided(step, node, root)
        if node.reuses is not None:
            _check_inplace(step, node, root, values_of, clobbered, graph_outputs, resident)
        for v in node.outputs:
            available.add(v.name)
            values_of.setdefault(root[v.name], []).append(v.name)
            if root[v.name] != v.name:
                if v.alloc is not None:
                    _fail(f"step {step}: %{v.name} is a view or in-place result of %{root[v.name]} and owns no "
                          f"bytes, but it is allocated ({v.alloc})")
                continue
            size = eval_bytes(v.nbytes)
            stop = last_read.get(v.name, step)
            tier = v.type.space or main
            alloc = v.alloc
            check.live_ranges[v.name] = (step, stop, size)
            if alloc is None:
                if planned:
                    _fail(f"step {step}: %{v.name} (written by {node.name}) has no allocation: a planned graph "
                          "gives every value that owns bytes a slot, its own buffer, or marks it kernel-owned")
                owned.append((v.name, tier, step, stop, size))
                continue
            if alloc.kind == SLOT:
                if v.name in outputs:
                    shown = v.name if v.name in graph_outputs else f"{v.name} (viewed or overwritten by a graph output)"
                    _fail(f"graph output %{shown} lives in storage %{alloc.storage}; outputs are handed to the "
                          "caller and must be allocated on their own (own or kernel)")
                lo, hi = _check_slot(step, v, graph, alignment, main)
                slots.setdefault(alloc.storage, []).append((step, stop, lo, hi, v.name))
            else:
                if alloc.kind == OWN:
                    _check_strides(step, v, alloc.strides)
                owned.append((v.name, tier, step, stop, size))
    for v in graph.outputs:
        if v.name not in available:
            _fail(f"graph output %{v.name} is never produced")
    _check_overlaps(slots)
    _peaks(graph, check, owned, main)
    _check_limits(graph, check, capacities, root)
    return check


def _check_storages(graph: Graph, capacities: dict[str, int], alignment: int) -> None:
    for name, storage in graph.storages.items():
        if storage.name != name:
            _fail(f"storage %{name} is recorded under another name ({storage.name!r:.40})")
        if not isinstance(storage.nbytes, int) or isinstance(storage.nbytes, bool) or storage.nbytes < 0:
            _fail(f"storage %{name} has size {storage.nbytes!r:.40}; it must be a non-negative number of bytes")
        if storage.nbytes % alignment:
            _fail(f"storage %{name} holds {storage.nbytes} bytes, not a multiple of the {alignment}-byte alignment")
        if capacities and storage.tier not in capacities:
            _fail(f"storage %{name} is in tier {storage.tier!r:.40}, which the target does not have "
                  f"(tiers: {', '.join(capacities)})")
    tiers = [s.tier for s in graph.storages.values()]
    if len(tiers) != len(set(tiers)):
        dup = next(t for t in tiers if tiers.count(t) > 1)
        _fail(f"tier {dup!r:.40} has {tiers.count(dup)} storages; a planned graph has one storage per tier")


def _check_spaces(step: int, node: Node, main: str) -> None:
    """Only a copy moves bytes between tiers: every other node reads and writes one tier."""
    spaces = {(v.type.space or main) for v in (*node.inputs, *node.outputs)}
    if node.op in COPY_OPS:
        src, dst = node.kwargs.get("src"), node.kwargs.get("dst")
        x, y = node.inputs[0], node.outputs[0]
        if (x.type.space or main) != src or (y.type.space or main) != dst:
            _fail(f"step {step}: copy {node.name} says {src!r:.20} -> {dst!r:.20} but moves %{x.name} in "
                  f"{x.type.space or main!r} to %{y.name} in {y.type.space or main!r}")
        return
    if len(spaces) > 1:
        _fail(f"step {step}: node {node.name} ({node.op}) touches tiers {', '.join(sorted(spaces))}: a kernel reads "
              "and writes one tier; move data with memplan.copy")


def _check_as_strided(step: int, node: Node, root: dict[str, str]) -> None:
    """``as_strided`` may address any bytes of its base's storage: in a plan, it stays inside the
    elements of a base that is itself a whole storage root (not a view of one)."""
    base = node.args[0] if node.args else None
    size, stride = (list(node.args[1:3]) + [None, None])[:2]
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
    ok = isinstance(base, Value) and root.get(base.name) == base.name and base.type.is_static
    try:
        reach = (offset or 0) + sum((int(n) - 1) * int(s) for n, s in zip(size, stride)) if all(
            int(n) > 0 for n in size) else -1
        ok = ok and len(size) == len(stride) and all(int(s) >= 0 for s in stride) and reach < int(base.type.numel)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail(f"step {step}: node {node.name} ({node.op}) views elements outside its base "
              f"%{getattr(base, 'name', '?')} (or a base that is itself a view): a planned as_strided stays inside "
              "the storage root it views")


def _check_region(step: int, node: Node) -> None:
    """A region node's body is typed against its slices and combines, and holds no plan of its own
    (its intermediates are the node's declared scratch: a body never allocates in a storage)."""
    try:
        check_region(node)
    except IRVerificationError as exc:
        _fail(f"step {step}: {exc}")
    body = node.subgraph
    if body.storages:
        _fail(f"step {step}: node {node.name}: its body declares storage %{next(iter(body.storages))}; a region's "
              "intermediates live in its declared scratch, not in a storage")
    body_roots = storage_roots(body)
    inputs = {v.name for v in body.inputs}
    for v in body.outputs:
        if body_roots[v.name] in inputs:
            _fail(f"step {step}: node {node.name}: body output %{v.name} is (a view of) body input "
                  f"%{body_roots[v.name]}; a region's results are new values (copy it in the body)")
    for v in body.values():
        if v.alloc is not None and v.alloc.kind == SLOT:
            _fail(f"step {step}: node {node.name}: body value %{v.name} has a slot in %{v.alloc.storage}; a region's "
                  "intermediates live in its declared scratch, not in a storage")
    if node.op == LOOP:
        for v in node.outputs:
            if v.alloc is not None and v.alloc.kind == KERNEL:
                _fail(f"step {step}: loop {node.name} writes each trip into its output %{v.name}, which needs a "
                      "buffer (a slot or its own), not kernel ownership")


def _check_recompute(step: int, node: Node, values: dict[str, Value]) -> None:
    original = node.recomputes
    if values.get(original.name) is not original or original.producer is None:
        _fail(f"step {step}: node {node.name} recomputes %{original.name}, which no node of the graph produces")
    first = original.producer
    same_literals = _call_form(first) == _call_form(node) and first.subgraph == node.subgraph
    if first.op != node.op or not same_literals or \
            [v.type.same_tensor(w.type) for v, w in zip(first.outputs, node.outputs)] != [True] * len(node.outputs) \
            or len(first.outputs) != len(node.outputs):
        _fail(f"step {step}: node {node.name} ({node.op}) claims to recompute %{original.name}, computed by "
              f"{first.name} ({first.op}) with other arguments or types")
    for a, b in zip(_value_args(first), _value_args(node)):
        if a is not b and not _recomputes(b, a):
            _fail(f"step {step}: node {node.name} recomputes %{original.name} from %{b.name}, which is neither "
                  f"%{a.name} nor a recomputation of it")


def _recomputes(v: Value, original: Value) -> bool:
    node = v.producer
    return node is not None and node.recomputes is not None and \
        node.recomputes.producer is original.producer and \
        node.outputs.index(v) == original.producer.outputs.index(original)


def _call_form(node: Node) -> str:
    """The call's literals in their structure (argument positions, list nesting, keyword names),
    every Value replaced by one placeholder; the Values are compared one by one by the caller."""
    args = map_values(node.args, lambda v: _VALUE)
    kwargs = sorted((k, map_values(a, lambda v: _VALUE)) for k, a in node.kwargs.items())
    return repr((args, kwargs))     # repr: nan equals nan, 0.0 differs from -0.0, 1 from 1.0 and True


class _Placeholder:
    def __repr__(self) -> str:
        return "<value>"


_VALUE = _Placeholder()


def _value_args(node: Node) -> list[Value]:
    return list(iter_values((node.args, node.kwargs)))


def _check_strides(step: int, v: Value, strides) -> None:
    shape = [int(d) for d in v.type.shape]
    if strides is None or len(strides) != len(shape):
        _fail(f"step {step}: %{v.name} of rank {len(shape)} is laid out with strides {strides!r:.60}")
    if any(s < 0 for s in strides) or (0 not in shape and not is_dense(shape, strides)):
        _fail(f"step {step}: %{v.name} {v.type} has strides {list(strides)} that do not lay it out densely")


def _check_slot(step: int, v: Value, graph: Graph, alignment: int, main: str) -> tuple[int, int]:
    alloc = v.alloc
    storage = graph.storages.get(alloc.storage)
    if storage is None:
        _fail(f"step {step}: %{v.name} has a slot in %{alloc.storage}, which the graph does not declare")
    space = v.type.space or main or storage.tier    # no space: the main tier, as everywhere else here
    if space != storage.tier:
        _fail(f"step {step}: %{v.name} is typed in tier {space!r} but its slot is in %{storage.name} "
              f"(tier {storage.tier!r})")
    offset = alloc.offset
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        _fail(f"step {step}: %{v.name} has offset {offset!r:.40}; it must be a non-negative integer")
    if offset % alignment:
        _fail(f"step {step}: %{v.name} at offset {offset} is not {alignment}-byte aligned")
    _check_strides(step, v, alloc.strides)
    size = eval_bytes(v.nbytes)
    if offset + size > storage.nbytes:
        _fail(f"step {step}: %{v.name} [{offset}, {offset + size}) reaches past %{storage.name} of "
              f"{storage.nbytes} bytes")
    return offset, offset + size


def _check_overlaps(slots: dict[str, list[tuple[int, int, int, int, str]]]) -> None:
    """No two values live at the same step share a byte of one storage: a sweep over start steps
    keeping the live slots sorted by offset (they are disjoint, so only the neighbours of a new slot
    can overlap it): O(n log n), not quadratic."""
    for storage, items in slots.items():
        items.sort()
        ends: list[tuple[int, int]] = []          # heap of (last step, offset) of live slots
        los: list[int] = []                       # offsets of live slots, sorted
        live: dict[int, tuple[int, int, int, int, str]] = {}  # offset -> the slot
        for item in items:
            start, stop, lo, hi, name = item
            while ends and ends[0][0] < start:
                _stop, gone = heapq.heappop(ends)
                del los[bisect.bisect_left(los, gone)]
                del live[gone]
            if hi <= lo:
                continue  # no bytes
            i = bisect.bisect_right(los, lo)
            for j in (i - 1, i):
                if 0 <= j < len(los):
                    a = live[los[j]]
                    if lo < a[3] and a[2] < hi:
                        _fail(f"step {start}: %{name} [{lo}, {hi}) overlaps %{a[4]} [{a[2]}, {a[3]}) in storage "
                              f"%{storage} while both are live (steps {a[0]}..{a[1]})")
            los.insert(i, lo)
            live[lo] = item
            heapq.heappush(ends, (stop, lo))


def _check_inplace(step, node, root, values_of, clobbered, graph_outputs, resident):
    """``node`` overwrites the storage of its input ``node.reuses``: every value using that storage
    so far is dead from now on (reading one later is a fault, caught by the caller)."""
    reused = next((v for v in node.inputs if v is node.reuses), None)
    if reused is None or len(node.outputs) != 1:
        _fail(f"step {step}: node {node.name} writes in place over %{node.reuses.name}, which is not one of its "
              "inputs (or it has several outputs)")
    r = root[reused.name]
    if r in resident:
        _fail(f"step {step}: node {node.name} overwrites %{reused.name} in place, whose storage %{r} is a graph "
              "input or weight (the caller's or the module's)")
    other = _reads_overwritten(node, reused.name, root)
    if other is not None:
        _fail(f"step {step}: node {node.name} ({node.op}) overwrites %{reused.name} in place while reading "
              f"%{other} from the same storage %{r} in the same step")
    if eval_bytes(node.outputs[0].nbytes) > eval_bytes(reused.nbytes):
        _fail(f"step {step}: node {node.name} writes {eval_bytes(node.outputs[0].nbytes)} bytes in place over "
              f"%{reused.name}, which holds {eval_bytes(reused.nbytes)}")
    for v in values_of.get(r, []):
        if v in graph_outputs:
            _fail(f"step {step}: node {node.name} overwrites graph output %{v} in place")
        clobbered.setdefault(v, node.name)


def _reads_overwritten(node, reused: str, root) -> str | None:
    """A value ``node`` reads from the storage it overwrites, other than what an in-place kernel
    may read: an elementwise or broadcast op may read ``reused`` itself (element by element);
    an op with ``OpDef.inplace_args`` may read the storage once, as ``reused`` at a listed position;
    nothing else may read it at all."""
    r = root[reused]
    kind = lookup(node.op, node=node.name).kind
    hits = [(i, v.name) for i, a in enumerate(node.args) for v in iter_values(a) if root[v.name] == r]
    hits += [(None, v.name) for v in iter_values(node.kwargs) if root[v.name] == r]
    if node.op == LOOP:  # once, as an input read in lockstep with the output it is written by
        allowed = set(lockstep_inputs(node))
        bad = [name for i, name in hits if i not in allowed or name != reused]
        return bad[0] if bad else (hits[1][1] if len(hits) > 1 else None)
    if lookup(node.op, node=node.name).inplace_args:
        allowed = set(lookup(node.op, node=node.name).inplace_args)
        bad = [name for i, name in hits if i not in allowed or name != reused]
        return bad[0] if bad else (hits[1][1] if len(hits) > 1 else None)
    if kind in (OpKind.ELEMENTWISE, OpKind.BROADCAST):
        bad = [name for _i, name in hits if name != reused]
        return bad[0] if bad else None
    return hits[0][1] if hits else reused  # no kernel of another kind may write over what it reads


def _peaks(graph: Graph, check: PlanCheck, owned, main: str) -> None:
    """Per tier: storages + worst step of (values outside storages live then + scratch)."""
    steps = max(check.steps, 1)
    tiers = {main} | {s.tier for s in graph.storages.values()} | {t for _r, t, *_ in owned}
    tiers.discard("")
    deltas = {t: [0] * (steps + 1) for t in tiers or {""}}
    for _root, tier, start, stop, size in owned:  # a difference array: linear in values + steps
        row = deltas.setdefault(tier or main, [0] * (steps + 1))
        row[start] += size
        row[stop + 1] -= size
    profile = {t: list(itertools.accumulate(row[:steps])) for t, row in deltas.items()}
    for step, node in enumerate(graph.nodes):
        tier = (node.outputs[0].type.space if node.outputs else "") or main
        profile.setdefault(tier, [0] * steps)[step] += node.scratch
    copies = graph.attrs.get("input_copies", 0)
    if not isinstance(copies, int) or isinstance(copies, bool) or copies < 0:
        _fail(f"attr input_copies is {copies!r:.40}; it must be a number of bytes")
    if copies:  # inputs copied to row-major when the module is called: live through the whole run
        profile[main] = [x + copies for x in profile.setdefault(main, [0] * steps)]
    for tier, row in profile.items():
        stored = sum(s.nbytes for s in graph.storages.values() if s.tier == tier)
        check.storage_bytes[tier] = stored
        check.outside_profile[tier] = row
        worst = max(range(steps), key=lambda i: row[i])
        check.peak_step[tier] = worst
        check.peak_bytes[tier] = stored + row[worst]
    for v in graph.inputs + graph.params:
        tier = v.type.space or main
        check.resident_bytes[tier] = check.resident_bytes.get(tier, 0) + eval_bytes(v.nbytes)


def _check_limits(graph: Graph, check: PlanCheck, capacities: dict[str, int], root) -> None:
    budget = graph.attrs.get("memory_budget")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
        _fail(f"attr memory_budget is {budget!r:.40}; it must be a number of bytes")
    if budget is not None and check.planned_peak_bytes > budget:
        _fail(f"planned peak {format_bytes(check.planned_peak_bytes)} (storages "
              f"{format_bytes(check.storage_bytes.get(check.main_tier, 0))} + at step "
              f"{check.peak_step.get(check.main_tier)} values outside them and scratch) exceeds the memory budget "
              f"{format_bytes(budget)}")
    for tier, peak in check.peak_bytes.items():
        if tier not in capacities:
            if capacities and tier:
                _fail(f"values live in tier {tier!r:.40}, which the target does not have (tiers: "
                      f"{', '.join(capacities)})")
            continue
        resident = check.resident_bytes.get(tier, 0)
        if peak + resident > capacities[tier]:
            _fail(f"plan needs {format_bytes(peak)} + {format_bytes(resident)} (inputs and weights) in tier "
                  f"{tier!r}, which holds {format_bytes(capacities[tier])}")
