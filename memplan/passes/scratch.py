"""Scratch memory of each step, measured: what a kernel allocates beyond its planned output.

A plan is only a promise if it counts every byte the run allocates. Besides
the planned buffers, a step needs

- the result of an op with no ``out=`` variant, which the backend copies into
  its slot (fused attention, ``arange``, ...), and
- the workspace some kernels allocate inside (a convolution's column buffer,
  attention's per-thread blocks and log-sum-exp).

Neither is visible in the op's signature, so memplan measures it the way the
backend will run it: each distinct (op, input types, arguments) runs once on
this host under the profiler's memory timeline, with its output slots
allocated beforehand, and the bytes it allocates at its peak are its scratch.
Results are cached per process. ``estimate_scratch`` gives the static part
(copied results only) where measuring is switched off.

Measuring allocates the node's tensors for real, so it is bounded: a node
whose inputs and outputs together exceed :func:`measure_cap` (256 MiB, or a
quarter of the host's available memory if that is less; option
``scratch_measure_cap``) gets the static estimate instead, and the log says so.
"""
from __future__ import annotations

import os

import torch

from memplan.ir.graph import Graph, Node, map_values
from memplan.ir.ops import lookup, out_variant, resolve_out
from memplan.ir.printer import format_arg
from memplan.ir.types import eval_bytes
from memplan.passes.layout import slot_strides
from memplan.passes.liveness import storage_roots
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


def estimate_scratch(graph: Graph) -> dict[str, int]:
    """Static scratch: the fresh result of each op without an ``out=`` variant that goes to the arena."""
    roots = storage_roots(graph)
    keep = {roots[v.name] for v in graph.outputs}
    temps: dict[str, int] = {}
    for node in graph.nodes:
        copied = _static_scratch(node, roots, [v.name not in keep for v in node.outputs])
        if copied:
            temps[node.name] = copied
    return temps


def measure_scratch(graph: Graph, strides: dict[str, tuple[int, ...]], *, cap: int | None = None,
                    log: list[str] | None = None) -> dict[str, int]:
    """Scratch bytes of every step, measured on this host (see the module docstring).

    A node whose tensors exceed ``cap`` bytes (default :func:`measure_cap`) is not run: it gets
    the static estimate, and a line in ``log`` says so.
    """
    from memplan.backends.mkldnn import prepack

    cap = measure_cap({}) if cap is None else cap
    roots = storage_roots(graph)
    keep = {roots[v.name] for v in graph.outputs}
    weights = None
    temps: dict[str, int] = {}
    for node in graph.nodes:
        if node.subgraph is not None or lookup(node.op).view:
            continue
        # an in-place output is written into its input's slot, like any slot of the arena
        in_arena = [(roots[v.name] == v.name or node.reuses is not None) and v.name not in keep
                    for v in node.outputs]
        key = _signature(node, in_arena, strides)
        if key not in _CACHE:
            touched = measured_bytes(node, graph.weights)
            if touched > cap:
                estimate = _static_scratch(node, roots, in_arena)
                _note(log, f"scratch: node {node.name} ({node.op}) has {format_bytes(touched)} of tensors, "
                           f"above the {format_bytes(cap)} measuring cap: its scratch is the static estimate "
                           f"({format_bytes(estimate)}, copied results only; kernel workspace not counted)")
                if estimate:
                    temps[node.name] = estimate
                continue
            if weights is None:
                weights = prepack(graph)  # what the compiled module runs on
            _CACHE[key] = _measure_any(node, graph, weights, strides, in_arena)
        if _CACHE[key]:
            temps[node.name] = _CACHE[key]
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


def _signature(node: Node, in_arena, strides) -> tuple:
    """What decides a kernel's scratch: the op, its argument types, layouts and values, where outputs go."""
    def typed(v):
        return f"{v.type}{strides.get(v.name, '')}"
    args = format_arg(map_values(list(node.args), typed))
    kwargs = format_arg([(k, map_values(v, typed)) for k, v in sorted(node.kwargs.items())])
    return (node.op, args, kwargs, tuple(in_arena))


def _measure_any(node: Node, graph: Graph, weights, strides, in_arena) -> int:
    """Measure with integer inputs 0 (valid indices), then 1 (valid divisors); if the op rejects
    both, count its copied result only (the static estimate)."""
    for fill in (0, 1):
        try:
            return _measure(node, weights, strides, in_arena, fill)
        except (RuntimeError, IndexError, ValueError):
            continue
    return _static_scratch(node, storage_roots(graph), in_arena)


def _example(value, weights, strides, fill: int) -> torch.Tensor:
    """A real tensor for ``value``: the weight itself, else ``fill`` for integers or random floats."""
    if value.name in weights:
        return weights[value.name]
    t = value.type
    shape = [int(d) for d in t.shape]
    out = torch.empty_strided(shape, slot_strides(shape, strides.get(value.name)), dtype=t.torch_dtype)
    if t.torch_dtype.is_floating_point and out.numel():
        try:
            out.normal_()  # in place: no float32 temporary as large as the tensor
        except (RuntimeError, NotImplementedError):
            out.copy_(torch.randn(shape).to(t.torch_dtype))
    else:
        out.fill_(fill)
    return out


def _measure(node: Node, weights, strides, in_arena, fill: int) -> int:
    from memplan.profiling import timeline_peak

    opdef = lookup(node.op)
    args = map_values(node.args, lambda v: _example(v, weights, strides, fill))
    kwargs = map_values(node.kwargs, lambda v: _example(v, weights, strides, fill))
    out = out_variant(node.op) if any(in_arena) else None
    if out is None:
        def call():
            with torch.inference_mode():
                return opdef.impl(*args, **kwargs)
        result = timeline_peak(call)
        # everything allocated counts, except outputs that stay outside the arena (planned as outputs)
        kept = sum(eval_bytes(v.nbytes) for v, arena in zip(node.outputs, in_arena) if not arena)
        return max(0, result["activation_peak"] - kept)
    out_name, out_args = out
    outs = {name: torch.empty_strided([int(d) for d in v.type.shape], slot_strides(v.type.shape, strides.get(v.name)),
                                      dtype=v.type.torch_dtype)
            for name, v in zip(out_args, node.outputs)}
    target = resolve_out(out_name)

    def call_out():
        with torch.inference_mode():
            target(*args, **kwargs, **outs)
    return max(0, timeline_peak(call_out)["activation_peak"])


def step_scratch(graph: Graph, options: dict, log: list[str] | None = None) -> dict[str, int]:
    """Scratch per node: measured (default) or, with ``options["measure_scratch"] = False``, estimated.

    Measuring is bounded by :func:`measure_cap`; ``log`` collects a line per node estimated instead.
    """
    if options.get("measure_scratch", True):
        from memplan.passes.layout import eager_strides
        return measure_scratch(graph, eager_strides(graph), cap=measure_cap(options), log=log)
    return estimate_scratch(graph)
