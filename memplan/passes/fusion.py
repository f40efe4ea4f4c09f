"""Pass ``fuse``: chains of elementwise ops become one tiled loop, so their intermediates never take full size.

``gelu`` as GPT-2 writes it is eight elementwise ops over a ``[128, 1024]``
activation; run one by one, each result is a full-size buffer, and two or three
of them are live at once. TorchInductor fuses such chains into one kernel. On
the PyTorch backend memplan does it as a region: the chain becomes a
``memplan.loop`` over row tiles of the iteration space, whose body runs the
same ops on one tile (a few KiB), writes the tile's results into the output
buffers, and moves on. Only the group's boundary values are full size; when
the loop's one output may overwrite an input that dies with it (the
``inplace`` pass decides), not even those.

Legality (TVM's lattice, its lowest rung): members are elementwise or
broadcast ops (not views, copies or random ops), with static shapes, whose
outputs all have the group's iteration shape; a member joins the group of the
producer it reads when none of its other inputs depends on the group (no cycle
through the rest of the graph). Each boundary input is sliced along the tile
dimension where it spans it, read whole where it broadcasts over it. Every
candidate left out, and why, is in the pass log (``memplan lower
--explain-fusion`` prints it; ``cm.plan.why_not_fused(node)`` answers per node).

On a backend that runs a region as one kernel (``one_kernel_regions``: Triton), groups too small
to tile become one-trip regions, a row reduction (layer norm, softmax) takes its elementwise
prologue in (:mod:`memplan.passes.reduction_groups`) and a matrix product its elementwise epilogue
(:mod:`memplan.passes.matmul_groups`).

Choice: option ``fusion``: ``auto`` (default) keeps the fused graph only when
its planned peak, scheduled and allocated as the rest of the pipeline would
(heuristic orders on both sides, for time), is below the unfused graph's:
fusion never raises the planned peak, and where it does not lower it the
graph stays as it was (a loop over tiles costs Python calls per trip); ``on``
keeps it always, ``off`` skips the pass. ``fusion_tile_bytes`` bounds one
tile of one value (default 64 KiB).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

from memplan.ir.graph import Graph, Node, Value, map_values
from memplan.ir.regions import LOOP
from memplan.ir.types import TensorType
from memplan.ir.types import itemsize as _itemsize
from memplan.passes.concat_inputs import absorb_concats
from memplan.passes.fusable import why_not_pointwise
from memplan.passes.matmul_groups import find_matmul_groups
from memplan.passes.reduction_groups import find_reduction_groups, group_reduction
from memplan.passes.registry import register_pass

TILE_BYTES = 64 * 1024


@dataclass(frozen=True)
class FuseOptions:
    """Options of ``fuse``."""

    fusion: Literal["auto", "on", "off"] = "auto"  # auto: only where the planned peak does not rise
    fusion_tile_bytes: int = TILE_BYTES  # the most bytes one tile of one value may take


@dataclass
class Group:
    shape: tuple[int, ...]
    members: list[Node]


def find_groups(graph: Graph, explain: dict[str, str] | None = None) -> list[Group]:
    """Groups of two or more pointwise nodes, in graph order, that can run as one loop."""
    explain = {} if explain is None else explain
    producer = {v.name: n for n in graph.nodes for v in n.outputs}
    group_of: dict[str, int] = {}
    groups: list[Group] = []
    deps: dict[str, frozenset[int]] = {}
    ext_deps: dict[int, frozenset[int]] = {}  # per group: the groups its outside inputs depend on
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    empty: frozenset[int] = frozenset()
    for node in graph.nodes:
        inputs = list(dict.fromkeys(node.inputs))
        depends = empty.union(*(deps.get(v.name, empty) for v in inputs))
        why = why_not_pointwise(node)
        if why is not None:
            explain.setdefault(node.name, why)
            for v in node.outputs:
                deps[v.name] = depends
            continue
        shape = tuple(int(d) for d in node.outputs[0].type.shape)
        # the groups of the same shape it reads from: it joins them all (merging them) unless a value
        # it reads from outside them, or one of them reads from outside, depends on another of them
        joined: list[int] = []
        for v in inputs:
            p = producer.get(v.name)
            g = group_of.get(p.name) if p is not None else None
            if g is not None and groups[g].shape == shape and g not in joined:
                joined.append(g)
        def closure(ids) -> set[int]:
            """The groups ``ids`` name and, transitively, every group they read from outside: once
            fused, a loop runs after everything its group reads."""
            seen: set[int] = set()
            stack = list(ids)
            while stack:
                h = stack.pop()
                if h not in seen:
                    seen.add(h)
                    stack.extend(ext_deps.get(h, ()))
            return seen

        while joined:
            members = {m.name for g in joined for m in groups[g].members}
            outside = closure(empty.union(*(deps.get(w.name, empty) for w in inputs
                                            if producer.get(w.name) is None or producer[w.name].name not in members),
                                          *(ext_deps[g] for g in joined)))
            clash = [g for g in joined if g in outside]
            if not clash:
                break
            explain.setdefault(node.name, f"it reads a value computed from group {clash[-1]} outside it (a cycle)")
            joined.remove(clash[-1])
        if joined:
            chosen = joined[0]
            for g in joined[1:]:  # merge into the first (members stay in graph order)
                groups[chosen].members = sorted(groups[chosen].members + groups[g].members, key=lambda m: position[m.name])
                groups[g].members = []
                ext_deps[chosen] |= ext_deps[g]
                for m in groups[chosen].members:
                    group_of[m.name] = chosen
                for name, ds in deps.items():
                    if g in ds:
                        deps[name] = (ds - {g}) | {chosen}
                ext_deps = {k: ((ds - {g}) | {chosen}) if g in ds else ds for k, ds in ext_deps.items()}
        else:
            chosen = len(groups)
            groups.append(Group(shape, []))
            ext_deps[chosen] = empty
        members = {m.name for m in groups[chosen].members}
        ext_deps[chosen] = ext_deps[chosen].union(*(deps.get(w.name, empty) for w in inputs
                                                    if producer.get(w.name) is None
                                                    or producer[w.name].name not in members))
        groups[chosen].members.append(node)
        group_of[node.name] = chosen
        deps[node.outputs[0].name] = deps.get(node.outputs[0].name, empty) | depends | {chosen}
    kept = []
    for g in groups:
        if not g.members:
            continue  # merged into another
        if len(g.members) < 2:
            explain.setdefault(g.members[0].name, "no pointwise neighbour of the same shape to fuse with")
        else:
            kept.append(g)
    return kept


def _boundary(graph: Graph, group: Group) -> tuple[list[Value], list[Value]]:
    """(values the group reads from outside, in first-use order; member results read outside it)."""
    made = {v.name for m in group.members for v in m.outputs}
    inside = {m.name for m in group.members}
    inputs = list(dict.fromkeys(v for m in group.members for v in m.inputs if v.name not in made))
    read_outside = {v.name for n in graph.nodes if n.name not in inside for v in n.inputs}
    read_outside |= {v.name for v in graph.outputs}
    outputs = [m.outputs[0] for m in group.members if m.outputs[0].name in read_outside]
    return inputs, outputs


def _tiling(group: Group, inputs: list[Value], tile_bytes: int, one_trip: bool = False):
    """(tile dim, rows per trip, per input: the dim it is sliced on or None) or None if no dim tiles
    (``one_trip``: a single trip over the whole extent will do, for a backend running it as one kernel)."""
    shape = group.shape
    rank = len(shape)
    itemsize = max(_itemsize(m.outputs[0].type.dtype) for m in group.members)
    for d, extent in enumerate(shape):
        if extent <= 1:
            continue
        dims = []
        for v in inputs:
            k = v.type.rank - rank + d  # broadcasting aligns trailing dims
            size = int(v.type.shape[k]) if k >= 0 else 1
            if size == extent:
                dims.append(k)
            elif size == 1:
                dims.append(None)
            else:
                break
        else:
            if all(k is None for k in dims):
                continue  # nothing to slice along this dim
            row = itemsize
            for e in shape[d + 1:]:
                row *= e
            rows = max(1, min(extent, tile_bytes // max(row, 1)))
            while extent % rows:
                rows -= 1
            if rows == extent and not one_trip:
                return None  # one trip: nothing is smaller than before
            return d, rows, dims
    return None


def fuse_group(graph: Graph, group: Group, tile_bytes: int, one_trip: bool = False) -> Node | None:
    """Rewrite ``group`` into a ``memplan.loop`` placed where its first member was; return it (None
    where no dimension tiles it)."""
    inputs, outputs = _boundary(graph, group)
    tiling = _tiling(group, inputs, tile_bytes, one_trip)
    if tiling is None or not outputs:
        return None
    d, rows, dims = tiling
    trips = group.shape[d] // rows
    body = Graph(f"{group.members[0].name}_body")
    env: dict[str, Value] = {}
    slicings = []
    for v, k in zip(inputs, dims):
        shape = list(v.type.shape)
        if k is None:
            slicings.append(["full"])
        else:
            shape[k] = rows
            slicings.append(["slice", k, rows, rows])
        env[v.name] = body.add_input(v.name, TensorType(v.type.dtype, tuple(shape)))
    tile_shape = list(group.shape)
    tile_shape[d] = rows
    for m in group.members:
        out = m.outputs[0]
        (env[out.name],) = body.add_node(m.op, map_values(m.args, lambda v: env[v.name]),
                                         map_values(m.kwargs, lambda v: env[v.name]),
                                         [TensorType(out.type.dtype, tuple(tile_shape))], name=m.name,
                                         out_names=[out.name], source=m.source, source_op=m.source_op)
    body.outputs = [env[v.name] for v in outputs]
    from memplan.passes.inplace import mark_inplace
    mark_inplace(body)  # within a trip too, each op writes over a tile that dies with it
    first = group.members[0]
    results = graph.add_node(LOOP, tuple(inputs),
                             {"trips": trips, "inputs": slicings, "outputs": [["concat", d] for _ in outputs]},
                             [v.type for v in outputs], name=f"fused_{first.name}",
                             out_names=[f"{v.name}_fused" for v in outputs], subgraph=body, before=first,
                             source=first.source, source_op=" + ".join(m.source_op or _short(m.op) for m in group.members))
    loop = results[0].producer
    for old, new in zip(outputs, results):
        graph.replace_all_uses(old, new, keep=None)
    graph.erase_nodes(group.members)
    return loop


def _short(op: str) -> str:
    parts = op.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "aten" else op


def _topological(graph: Graph) -> None:
    """Reorder ``graph`` into a topological order that keeps the current order wherever it can (a
    loop placed at its first member runs before readers that used to sit among its members)."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    producer = {v.name: n for n in graph.nodes for v in n.outputs}
    waiting = {n.name: len({producer[v.name].name for v in n.inputs if v.name in producer}) for n in graph.nodes}
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for p in {producer[v.name].name for v in n.inputs if v.name in producer}:
            readers.setdefault(p, []).append(n)
    ready = [(index[n.name], n.name, n) for n in graph.nodes if waiting[n.name] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, _, n = heapq.heappop(ready)
        order.append(n)
        for r in readers.get(n.name, []):
            waiting[r.name] -= 1
            if waiting[r.name] == 0:
                heapq.heappush(ready, (index[r.name], r.name, r))
    if len(order) != len(graph.nodes):
        from memplan.errors import MemplanError
        left = [n.name for n in graph.nodes if n not in order][:3]
        raise MemplanError(f"fuse: the fused graph has a cycle through {', '.join(left)} (a bug in the legality "
                           "check: please report it with the model)")
    graph.reorder(order)


KINDS = ("reductions", "products", "pointwise")


def fuse_graph(graph: Graph, tile_bytes: int = TILE_BYTES, explain: dict[str, str] | None = None,
               one_trip: bool = False, kinds: tuple[str, ...] = KINDS,
               tiles: dict[str, int] | None = None) -> list[Node]:
    """Fuse every group :func:`find_groups` finds; return the loop nodes made (``one_trip``: also
    groups too small to tile, as one trip, for a backend that runs a region as one kernel, and row
    reductions with their prologue, products with their epilogue; ``kinds``: which of those three
    kinds of region to form; ``tiles``: per elementwise group, by the name its loop takes, the tile
    bytes to use instead of ``tile_bytes``, 0 to leave that group unfused)."""
    from memplan.analysis.strides import contiguous_strides, eager_strides, same_layout

    loops = []
    if one_trip and "reductions" in kinds:  # one kernel per region: a row reduction takes its
        # elementwise prologue in, a matrix product its epilogue
        loops += [group_reduction(graph, group) for group in find_reduction_groups(graph, explain)]
        if loops:
            _topological(graph)
    if one_trip and "products" in kinds:
        products = [group_reduction(graph, group, f"fused_{group[0].name}")
                    for group in find_matmul_groups(graph, explain)]
        if products:
            _topological(graph)
        loops += products
    if "pointwise" not in kinds:
        return loops
    groups = find_groups(graph, explain)
    strides = eager_strides(graph) if groups else {}
    readers = graph.users() if groups and one_trip else {}
    graph_outputs = {v.name for v in graph.outputs}
    for group in groups:
        _, outputs = _boundary(graph, group)
        odd = [v for v in outputs if not same_layout(v.type.shape, strides.get(v.name),
                                                     contiguous_strides(v.type.shape))
               and not (one_trip and _read_through_strides(v, readers, graph_outputs))]
        if odd:  # a loop writes dense row-major buffers; a later view may rely on eager's layout
            if explain is not None:
                for m in group.members:
                    explain.setdefault(m.name, f"its group's result %{odd[0].name} is not laid out row-major "
                                               "in eager (a loop writes row-major buffers)")
            continue
        own = (tiles or {}).get(f"fused_{group.members[0].name}", tile_bytes)
        if own == 0:
            continue  # left unfused by choice (see _coarsen)
        loop = fuse_group(graph, group, own, one_trip)
        if loop is not None and one_trip:  # a kernel reads a concatenation where it lies
            absorb_concats(graph, loop)
        if loop is None:
            if explain is not None:
                for m in group.members:
                    explain.setdefault(m.name, "no dimension tiles its group into two or more trips")
            continue
        loops.append(loop)
    if loops:
        _topological(graph)
    return loops


def _read_through_strides(v: Value, readers: dict, graph_outputs: set[str]) -> bool:
    """Is ``v`` read only by attention loops (which read q, k and v through their strides and lay
    their output out as eager's, whatever q's layout), never a graph output? Then it may be laid
    out row-major where eager lays it out otherwise (rotary embeddings on transposed heads)."""
    if v.name in graph_outputs:
        return False
    users = readers.get(v.name, [])
    return bool(users) and all(u.op == LOOP and u.subgraph is not None and any(
        m.op == "aten.scaled_dot_product_attention.default" for m in u.subgraph.nodes) for u in users)


@register_pass("fuse", options=FuseOptions, produces=("regions",))
def fuse(graph, ctx):
    """Elementwise chains become row-tiled ``memplan.loop`` regions (never raising the planned peak in
    ``auto`` mode)."""
    mode = ctx.options.get("fusion", "auto")
    if mode == "off":
        return graph
    tile_bytes = int(ctx.options.get("fusion_tile_bytes", TILE_BYTES))
    if tile_bytes < 1:
        from memplan.errors import MemplanError
        raise MemplanError(f"option fusion_tile_bytes must be at least 1 byte, got {tile_bytes}")
    explain: dict[str, str] = {}
    one_trip = bool(getattr(ctx.get_backend(), "one_kernel_regions", False))
    if mode == "on":
        loops = fuse_graph(graph, tile_bytes, explain, one_trip)
        _record(ctx, graph, loops, explain, None)
        return graph
    trial = graph.copy()
    loops = fuse_graph(trial, tile_bytes, explain, one_trip)
    if not loops:
        _record(ctx, graph, [], explain, None)
        return graph
    plain_peak = _planned_peak(graph, ctx)
    fused_peak = _planned_peak(trial, ctx)
    if one_trip and not better_plan(ctx, (fused_peak, trial), (plain_peak, graph)):
        # every kind of region at once raised the peak: try each kind alone (the regions of one
        # kind can lengthen what another kind's inputs live), keep the best
        tried = {tuple(n.name for n in loops)}
        for kinds in (("reductions", "products"), ("reductions",), ("products",), ("pointwise",)):
            other = graph.copy()
            made = fuse_graph(other, tile_bytes, {}, one_trip, kinds)
            names = tuple(n.name for n in made)
            if not made or names in tried:  # the same regions as a candidate planned already
                continue
            tried.add(names)
            peak = _planned_peak(other, ctx)
            if better_plan(ctx, (peak, other), (fused_peak, trial)):
                trial, loops, fused_peak = other, made, peak
    heuristic_win = fused_peak is not None and (plain_peak is None or fused_peak < plain_peak)
    if fused_peak is not None and fused_peak == plain_peak:
        # a tie by the heuristic orders: the scheduler the pipeline runs may order one side better
        # (T5 on Triton: 2.06 MiB both ways heuristically, 1.78 unfused and 2.06 fused when scheduled)
        fused_peak, plain_peak = _planned_peak(trial, ctx, exact=True), _planned_peak(graph, ctx, exact=True)
    if better_plan(ctx, (fused_peak, trial), (plain_peak, graph)):
        if heuristic_win and not one_trip:  # each loop's trips cost launches: as few as the peak allows
            trial, loops = _coarsen(graph, trial, loops, ctx, tile_bytes, fused_peak, explain)
        _adopt(graph, trial)
        _record(ctx, graph, loops, explain, (fused_peak, plain_peak))
    else:
        for loop in loops:
            for m in loop.subgraph.nodes:
                explain.setdefault(m.name, "fused, neither the planned peak nor the modelled time would fall "
                                           f"({_fmt(fused_peak)} against {_fmt(plain_peak)} unfused)")
        _record(ctx, graph, [], explain, (fused_peak, plain_peak), rejected=loops)
    return graph


def _coarsen(graph: Graph, fused: Graph, loops: list[Node], ctx, tile_bytes: int, bound: int,
             explain: dict[str, str]) -> tuple[Graph, list[Node]]:
    """Per kind of loop, the fewest trips that keep the planned peak at ``bound`` (the fused graph's).

    On the PyTorch backend each trip runs every op of the body as its own call: a loop of 8 trips
    over a chain of 8 ops makes 72 calls where the unfused chain makes 8. Fusion is kept for the
    peak, so a loop whose intermediates fit under the peak at its step need not tile that finely, or
    at all. Loops of one kind (the same ops over the same shape: one per layer) are decided together,
    one trial plan each (heuristic orders, as the fused and unfused graphs were compared): unfused
    first, then the largest tiles (fewest trips) down to twice the default. The modelled time (a
    launch per call per trip, :mod:`memplan.analysis.cost`) only falls along that order."""
    kinds: dict[tuple, list[Node]] = {}
    for loop in loops:
        if loop.op == LOOP and int(loop.kwargs.get("trips", 1)) > 1:
            body = loop.subgraph
            key = (tuple(n.op for n in body.nodes), tuple(tuple(v.type.shape) for v in loop.outputs))
            kinds.setdefault(key, []).append(loop)
    chosen: dict[str, int] = {}
    for members in sorted(kinds.values(), key=lambda ls: -len(ls) * len(ls[0].subgraph.nodes)
                          * int(ls[0].kwargs.get("trips", 1))):
        trips = int(members[0].kwargs.get("trips", 1))
        options, scale = [0], 2
        while scale < trips:  # tiles of 2, 4, ... times the default: trips/2, trips/4, ...
            options.insert(1, tile_bytes * scale)
            scale *= 2
        for option in options:
            tiles = dict(chosen, **{n.name: option for n in members})
            trial = graph.copy()
            made = fuse_graph(trial, tile_bytes, {}, False, tiles=tiles)
            peak = _planned_peak(trial, ctx)
            if peak is not None and peak <= bound:
                chosen = tiles
                fused, loops = trial, made
                for n in members:
                    for m in n.subgraph.nodes:
                        if option == 0:
                            explain.setdefault(m.name, "fusable, left unfused: its chain's full-size "
                                               "intermediates fit under the planned peak, and each "
                                               "trip of a loop costs a call per op")
                break
    return fused, loops


def better_plan(ctx, candidate: tuple, current: tuple) -> bool:
    """Is ``candidate`` (planned peak, graph) better than ``current``: a lower planned peak (or the only
    one that plans at all), or the same peak and less modelled time on the target (the roofline cost:
    a fusion that saves memory traffic where the backend runs a region as one kernel)."""
    (peak, graph), (other_peak, other) = candidate, current
    if peak is None:
        return False
    if other_peak is None or peak < other_peak:
        return True
    if peak > other_peak:
        return False
    from memplan.analysis.cost import modelled_seconds
    one_kernel = bool(getattr(ctx.get_backend(), "one_kernel_regions", False))
    return modelled_seconds(graph, ctx.target, one_kernel) < modelled_seconds(other, ctx.target, one_kernel)


def _fmt(n) -> str:
    from memplan.units import format_bytes
    return "unknown" if n is None else format_bytes(n)


def _planned_peak(graph: Graph, ctx, exact: bool = False) -> int | None:
    """The planned peak of ``graph`` (a copy is planned: ``graph`` is not changed) through the rest of
    the default pipeline after this pass, or None where planning fails. ``exact``: scheduled as the
    pipeline will schedule it (its method and time limit), not by the heuristic orders alone."""
    from memplan.errors import MemplanError
    from memplan.passes.registry import PASSES, PassContext

    trial = graph.copy()
    # both sides are planned alike, by the heuristic orders and a short allocation: the comparison is
    # what matters here, the pipeline plans the winner in full afterwards
    options = dict(ctx.options, allocate_time_limit=min(1.0, float(ctx.options.get("allocate_time_limit", 5.0))))
    if not exact:
        options.update(schedule_method="heuristic", joint=False)
    sub = PassContext(target=ctx.target, memory_budget=None, options=options, backend=ctx.backend)
    try:
        for name in ("inplace", "schedule", "allocate"):
            trial = PASSES[name].fn(trial, sub) or trial
    except MemplanError:
        return None
    from memplan.analysis.check import verify_plan
    return verify_plan(trial, ctx.target).planned_peak_bytes


def _adopt(graph: Graph, other: Graph) -> None:
    """Make ``graph`` hold ``other``'s nodes and params (``other`` is a planned copy of it)."""
    graph.__dict__.update(other.__dict__)


def _record(ctx, graph: Graph, loops: list[Node], explain: dict[str, str], peaks, rejected=()) -> None:
    records = ctx.records.setdefault("fusion", {})
    reasons = records.setdefault("why_not_fused", {})
    for name, why in explain.items():  # the attention pass's reasons, written first, stay
        reasons.setdefault(name, why)
    records["groups"] = [{"loop": n.name, "members": [m.name for m in n.subgraph.nodes],
                          "trips": n.kwargs.get("trips", 1)} for n in loops]
    if rejected:
        count = sum(len(n.subgraph.nodes) for n in rejected)
        line = (f"fuse: {len(rejected)} groups of {count} elementwise nodes left unfused: the planned peak would "
                f"not fall ({_fmt(peaks[0])} fused, {_fmt(peaks[1])} unfused)")
    else:
        fused = sum(len(n.subgraph.nodes) for n in loops)
        line = f"fuse: {len(loops)} groups of {fused} elementwise nodes run as tiled loops"
        if peaks is not None:
            line += f" (planned peak {_fmt(peaks[0])} fused, {_fmt(peaks[1])} unfused)"
    ctx.log.append(line)
