"""Scratch memory of each step, measured: what a kernel allocates beyond its planned output.

A plan is only a promise if it counts every byte the run allocates. Besides
the planned values, a step needs the workspace some kernels allocate inside
(a convolution's column buffer, attention's per-thread blocks and
log-sum-exp, the temporary of an ``out=`` form that computes and copies).
A kernel-owned result (an op with no ``out=`` form allocates it) is a planned
value, not scratch: it is never copied into a slot.

Scratch is not visible in the op's signature, so memplan measures it the way
the backend will run it: each distinct (op, input types, arguments, where the
outputs go) runs once on this host under the profiler's memory timeline, with
its output slots allocated beforehand (or, for a kernel-owned result, minus the
result itself), and the bytes it allocates at its peak are its scratch
(``profiling.allocation_peak``: the running sum of the profiler's allocation
events, which agrees with the memory timeline the benchmarks measure with, at a
fraction of its cost).
Results are cached per process. ``estimate_scratch`` gives 0 where measuring
is switched off (no result is ever copied).

Measuring allocates the node's tensors for real, so it is bounded: a node
whose inputs and outputs together exceed :func:`measure_cap` (256 MiB, or a
quarter of the host's available memory if that is less; option
``scratch_measure_cap``) gets the static estimate instead, and the log says so.
"""
from __future__ import annotations

import os

import torch

from memplan.ir.graph import Graph, Node, map_values
from memplan.ir.regions import REGION_OPS
from memplan.backends.pytorch_kernels import out_variant, resolve_out
from memplan.ir.ops import lookup
from memplan.ir.printer import format_arg
from memplan.ir.types import eval_bytes
from memplan.analysis.strides import slot_strides
from memplan.analysis.liveness import storage_roots
from memplan.profiling import available_memory
from memplan.units import format_bytes

_CACHE: dict[tuple, int] = {}
MEASURE_CAP = 256 * 2**20  # bytes of real tensors one measurement may allocate


def measure_cap(options: dict) -> int:
    """The most bytes of real tensors (inputs + outputs) a node may have and still be measured."""
    cap = options.get("scratch_measure_cap")
    if cap is not None:
        return int(cap)
    available = available_memory()
    return MEASURE_CAP if available is None else min(MEASURE_CAP, available // 4)


def measured_bytes(node: Node, weights) -> int:
    """Bytes of the real tensors measuring ``node`` allocates: its distinct non-weight inputs and
    its outputs."""
    inputs = {v.name: v for v in node.inputs if v.name not in weights}
    return sum(eval_bytes(v.nbytes) for v in (*inputs.values(), *node.outputs))


def out_flags(graph: Graph, slotted: set[str]) -> dict[str, list[bool]]:
    """Per node, per output: does the kernel write it through its ``out=`` form into a buffer given
    to it (a slot of ``slotted``, or the input it overwrites in place)?"""
    return {n.name: [n.reuses is not None or v.name in slotted for v in n.outputs] for n in graph.nodes}


def estimate_scratch(graph: Graph, flags: dict[str, list[bool]] | None = None) -> dict[str, int]:
    """Static scratch: the fresh result an op with no ``out=`` form would need copying into a slot
    (none in plans memplan makes: such results are kernel-owned)."""
    roots = storage_roots(graph)
    temps: dict[str, int] = {}
    for node in graph.nodes:
        in_arena = (flags or {}).get(node.name, [False] * len(node.outputs))
        copied = _static_scratch(node, roots, in_arena)
        if copied:
            temps[node.name] = copied
    return temps


def measure_scratch(graph: Graph, strides: dict[str, tuple[int, ...]], flags: dict[str, list[bool]], *,
                    cap: int | None = None, log: list[str] | None = None,
                    only: set[str] | None = None) -> dict[str, int]:
    """Scratch bytes of every step, measured on this host (see the module docstring).

    A node whose tensors exceed ``cap`` bytes (default :func:`measure_cap`) is not run: it gets
    the static estimate, and a line in ``log`` says so.
    """
    from memplan.backends.mkldnn import packed_weights, prepack

    cap = measure_cap({}) if cap is None else cap
    packed = set(packed_weights(graph))
    roots = storage_roots(graph)
    temps: dict[str, int] = {}
    pending: dict[tuple, tuple[Node, list[bool]]] = {}  # distinct signatures to measure, in order
    named: list[tuple[str, tuple]] = []
    for node in graph.nodes:
        if only is not None and node.name not in only:
            continue
        if node.subgraph is not None or lookup(node.op).view:
            continue
        in_arena = flags.get(node.name, [False] * len(node.outputs))
        key = _signature(node, in_arena, strides, packed)
        if key not in _CACHE and key not in pending:
            touched = measured_bytes(node, graph.weights)
            if touched > cap:
                estimate = _static_scratch(node, roots, in_arena)
                _note(log, f"scratch: node {node.name} ({node.op}) has {format_bytes(touched)} of tensors, "
                           f"above the {format_bytes(cap)} measuring cap: its scratch is the static estimate "
                           f"({format_bytes(estimate)}, copied results only; kernel workspace not counted)")
                if estimate:
                    temps[node.name] = estimate
                continue
            pending[key] = (node, in_arena)
        named.append((node.name, key))
    if pending:
        _measure_all(pending, graph, prepack(graph), strides, roots)
    for name, key in named:
        if _CACHE[key]:
            temps[name] = _CACHE[key]
    return temps


def _note(log: list[str] | None, line: str) -> None:
    if log is not None and line not in log:
        log.append(line)


def _static_scratch(node: Node, roots: dict[str, str], in_arena) -> int:
    """The copied result of an op without an ``out=`` variant whose output goes to the arena."""
    if _writes_in_place(node):
        return 0
    return sum(eval_bytes(v.nbytes) for v, arena in zip(node.outputs, in_arena)
               if arena and (roots[v.name] == v.name or node.reuses is not None))


def _writes_in_place(node: Node) -> bool:
    return node.subgraph is not None or lookup(node.op).view or out_variant(node.op) is not None


def _signature(node: Node, in_arena, strides, packed=frozenset()) -> tuple:
    """What decides a kernel's scratch: the op, its argument types, layouts and values, whether a
    weight is prepacked for oneDNN (a plain one is reordered on every call), where outputs go."""
    def typed(v):
        return f"{v.type}{strides.get(v.name, '')}{' packed' if v.name in packed else ''}"
    args = format_arg(map_values(list(node.args), typed))
    kwargs = format_arg([(k, map_values(v, typed)) for k, v in sorted(node.kwargs.items())])
    # the outputs' types too: the bytes of kernel-owned results, not scratch, are what they say
    return (node.op, args, kwargs, tuple(in_arena), tuple(str(v.type) for v in node.outputs))


def _measure_all(pending: dict[tuple, tuple[Node, list[bool]]], graph: Graph, weights, strides, roots) -> None:
    """Measure every pending signature, all in one profiler session, with integer inputs 0 (valid
    indices); again with 1 (valid divisors) those the op rejected; an op that rejects both gets
    its copied result only (the static estimate). Results go to the cache."""
    from memplan.profiling import allocation_peaks

    todo = list(pending)
    for fill in (0, 1):
        prepared = [_prepare(*pending[key], weights, strides, fill) for key in todo]
        peaks = allocation_peaks([prep for prep, _ in prepared])
        failed = []
        for key, (_, kept), peak in zip(todo, prepared, peaks):
            if isinstance(peak, (RuntimeError, IndexError, ValueError)):
                failed.append(key)
            elif isinstance(peak, BaseException):
                raise peak
            else:
                _CACHE[key] = max(0, peak - kept)
        todo = failed
        if not todo:
            return
    for key in todo:
        node, in_arena = pending[key]
        _CACHE[key] = _static_scratch(node, roots, in_arena)


def _example(value, weights, strides, fill: int) -> torch.Tensor:
    """A real tensor for ``value``: the weight itself, else ``fill`` for integers or random floats."""
    if value.name in weights:
        return weights[value.name]
    t = value.type
    shape = [int(d) for d in t.shape]
    eager = strides.get(value.name)
    if eager is not None and len(eager) == len(shape) and all(s >= 0 for s in eager) and 0 not in shape:
        # eager's strides, dense or not: a kernel may copy a non-dense input first (its scratch). The
        # buffer is filled, not the view: an expanded view (stride 0) cannot be written
        extent = 1 + sum((d - 1) * s for d, s in zip(shape, eager))
        base = torch.empty(extent, dtype=t.torch_dtype)
        if t.torch_dtype.is_floating_point:
            base.copy_(_random_pool(extent, t.torch_dtype))
        else:
            base.fill_(fill)
        return base.as_strided(shape, eager)
    out = torch.empty_strided(shape, slot_strides(shape, eager), dtype=t.torch_dtype)
    if t.torch_dtype.is_floating_point and out.numel():
        out.copy_(_random_pool(out.numel(), t.torch_dtype).view(shape))
    else:
        out.fill_(fill)
    return out


_POOL: dict[torch.dtype, torch.Tensor] = {}


def _random_pool(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """``numel`` standard-normal values of ``dtype``, sliced from one pool drawn once per dtype and
    grown as needed: drawing random numbers costs far more than copying them (DenseNet-121: 5.8 s of
    ``normal_`` for 700 example tensors against 0.3 s of copies)."""
    pool = _POOL.get(dtype)
    if pool is None or pool.numel() < numel:
        generator = torch.Generator().manual_seed(0)
        pool = torch.randn(max(numel, 1 << 16), generator=generator).to(dtype)
        _POOL[dtype] = pool
    return pool[:numel]


def _prepare(node: Node, in_arena, weights, strides, fill: int):
    """``(prepare, kept)``: ``prepare()`` makes the node's example inputs (and its output buffers,
    for the ``out=`` form) and returns the kernel call to measure; ``kept`` is the bytes of the
    call's results that are not scratch (kernel-owned outputs, planned as values)."""
    opdef = lookup(node.op)
    out = out_variant(node.op) if any(in_arena) else None
    if out is None:
        # everything allocated counts, except outputs that stay outside the arena (planned as outputs)
        kept = sum(eval_bytes(v.nbytes) for v, arena in zip(node.outputs, in_arena) if not arena)

        def prepare():
            args = map_values(node.args, lambda v: _example(v, weights, strides, fill))
            kwargs = map_values(node.kwargs, lambda v: _example(v, weights, strides, fill))

            def call():
                with torch.inference_mode():
                    opdef.impl(*args, **kwargs)
            return call
        return prepare, kept
    out_name, out_args = out
    target = resolve_out(out_name)

    def prepare_out():
        args = map_values(node.args, lambda v: _example(v, weights, strides, fill))
        kwargs = map_values(node.kwargs, lambda v: _example(v, weights, strides, fill))
        outs = {name: torch.empty_strided([int(d) for d in v.type.shape],
                                          slot_strides(v.type.shape, strides.get(v.name)), dtype=v.type.torch_dtype)
                for name, v in zip(out_args, node.outputs)}

        def call_out():
            with torch.inference_mode():
                target(*args, **kwargs, **outs)
        return call_out
    return prepare_out, 0


def step_scratch(graph: Graph, options: dict, log: list[str] | None = None,
                 slotted: set[str] = frozenset(), only: set[str] | None = None,
                 input_strides: dict[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """Scratch per node when the values of ``slotted`` are written into given buffers through the
    ``out=`` form and every other result is kernel-owned: measured (default) or, with
    ``options["measure_scratch"] = False``, estimated.

    Measuring is bounded by :func:`measure_cap`; ``log`` collects a line per node estimated instead.
    ``input_strides``: how the graph's inputs are strided, where not dense (a loop body's tiles).
    """
    flags = out_flags(graph, set(slotted))
    strides = None
    if options.get("measure_scratch", True):
        from memplan.analysis.strides import eager_strides
        strides = eager_strides(graph, input_strides)
        temps = measure_scratch(graph, strides, flags, cap=measure_cap(options), log=log, only=only)
    else:
        temps = estimate_scratch(graph, flags)
    for node in graph.nodes:
        if node.op in REGION_OPS and (only is None or node.name in only):
            temps[node.name] = region_scratch(node, options, log, strides)
    return {name: n for name, n in temps.items() if n}


def region_scratch(node: Node, options: dict, log: list[str] | None = None,
                   strides: dict[str, tuple[int, ...]] | None = None) -> int:
    """What a region node needs beyond its outputs: its body run with every value kernel-owned and
    freed at its last use (a loop: one trip, its results included, which are copied into the
    output buffers; a group: its intermediates, its results being its outputs). ``strides``: the
    eager strides of the graph holding ``node``; the body's inputs are views of its arguments, laid
    out alike (a kernel may copy an input it finds strided, and that copy is scratch)."""
    from memplan.analysis.liveness import liveness
    from memplan.ir.regions import LOOP

    body = node.subgraph
    tiles = {b.name: strides.get(a.name) for a, b in zip(node.args, body.inputs)} if strides else None
    live = liveness(body, temps=step_scratch(body, options, log, set(), input_strides=tiles))
    if node.op == LOOP:
        return live.peak_bytes
    results = {r for r in (live.alias_of.get(v.name, v.name) for v in body.outputs)}
    worst = 0
    for i, total in enumerate(live.live_bytes):
        held = sum(r.nbytes for r in live.ranges.values() if r.value in results and r.start <= i <= r.end)
        worst = max(worst, total - held)
    return worst
