"""Pass ``fold_constants``: what no input reaches is computed once, at compile time, and kept as a weight.

A transformer builds its position ids, causal-mask indices and rotary ``cos``/``sin`` tables from
``arange``, ``full`` and its own weights on every call: a dozen small kernels (GPT-2 2L: 15 of its
35 launches) whose results are the same each time. TVM's ``FoldConstant`` and XLA's constant
folding evaluate such subgraphs once; memplan does the same. A node folds when it is a plain pure
op (no region, nothing random, static shapes) whose every tensor argument is a weight or an earlier
fold, and each of its results is at most ``fold_constants_max_bytes`` (default 64 KiB): a fold
trades an activation of that size for a resident weight of the same size, so large results (a
whole ``[L, L]`` position bias) stay computed per call, inside the plan; nor is an attention's mask
materialised from the small vectors it is built of (the ``attention`` pass computes it per query
block from them, and recognises causal positions). The folded values read by
the rest of the graph become params holding their data (their names kept: ``param %index``), the
folded nodes go, and weights only they read are dropped. A cast that widens a weight (the
dequantization of an int8 weight) is not folded: the weight stays in its own bytes. Values that are graph outputs (or views
of them) are left alone, so an output stays fresh.

Option ``fold_constants``: ``on`` (default) or ``off``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from memplan.ir.graph import PARAM, Graph, map_values
from memplan.ir.ops import lookup
from memplan.passes.canonicalize import output_aliases
from memplan.passes.fusable import RANDOM_OPS
from memplan.passes.registry import register_pass

MAX_BYTES = 64 * 1024
_NOT_VALUES = (*RANDOM_OPS, "empty")  # random draws, and buffers whose contents are undefined


@dataclass(frozen=True)
class FoldConstantsOptions:
    """Options of ``fold_constants``."""

    fold_constants: Literal["on", "off"] = "on"
    fold_constants_max_bytes: int = MAX_BYTES  # the largest result a fold may make a weight of


def why_not_foldable(node) -> str | None:
    """Why ``node`` cannot be evaluated at compile time, whatever its arguments (None: it can)."""
    if node.subgraph is not None:
        return "a region"
    short = node.op.split(".")[1] if node.op.count(".") == 2 else node.op
    if any(word in short for word in _NOT_VALUES):
        return "a random or uninitialised op"
    if not all(v.type.is_static for v in list(node.outputs) + node.inputs):
        return "symbolic shapes"
    try:
        opdef = lookup(node.op, node=node.name)
    except Exception:  # an op the registry does not know is left to the passes that check it
        return "an unknown op"
    if opdef.impl is None:
        return "no reference implementation"
    return None


def fold_constants_graph(graph: Graph, max_bytes: int = MAX_BYTES, total_bytes: int | None = None) -> tuple[int, int, int]:
    """Fold every foldable node of ``graph`` (each result at most ``max_bytes``, the new weights at
    most ``total_bytes`` in all: 4 x ``max_bytes`` unless given); return (nodes folded, new params,
    their bytes)."""
    from memplan.ir.interpret import run_node

    keep = output_aliases(graph)
    masks = _attention_mask_sources(graph)
    data: dict[str, torch.Tensor] = {p.name: graph.weights[p.name] for p in graph.params if p.name in graph.weights}
    folded = []
    for node in graph.nodes:
        if not all(v.name in data for v in node.inputs) or why_not_foldable(node) is not None:
            continue
        if any(v.name in keep or v.nbytes > max_bytes for v in node.outputs):
            continue
        if any(v.name in masks for v in node.outputs) and _expands(node):
            continue  # the attention pass computes such a mask per query block from what it is built of
        if _widens_weight(graph, node):
            continue  # a quantized weight stays in its own bytes, widened (dequantized) where it is read
        try:
            with torch.no_grad():
                results = run_node(node, map_values(node.args, lambda v: data[v.name]),
                                   map_values(node.kwargs, lambda v: data[v.name]))
        except Exception:  # the op refuses these arguments at run time too: leave it to run (and fail) there
            continue
        if len(results) != len(node.outputs) or any(
                not isinstance(r, torch.Tensor) or tuple(r.shape) != tuple(int(d) for d in v.type.shape)
                for r, v in zip(results, node.outputs)):
            continue
        for v, r in zip(node.outputs, results):
            data[v.name] = r
        folded.append(node)
    folded = _frontier(graph, folded, 4 * max_bytes if total_bytes is None else total_bytes)
    if not folded:
        return 0, 0, 0
    gone = {n.name for n in folded}
    made = {v.name for n in folded for v in n.outputs}
    new_params = []
    positions = []
    for v in _read(graph, gone):
        if v.name not in made:
            continue
        if _is_positions(data[v.name]):  # 0, 1, ..., n - 1: generated again, so that it stays recognisable
            positions.append(v)
            continue
        # the value becomes a weight of its own (dense, its own copy of the data)
        v.kind, v.producer = PARAM, None
        graph.params.append(v)
        graph.weights[v.name] = data[v.name].detach().clone(memory_format=torch.contiguous_format)
        new_params.append(v)
    first = next(n for n in graph.nodes if n.name not in gone) if len(gone) < len(graph.nodes) else None
    graph.nodes = [n for n in graph.nodes if n.name not in gone]
    for v in positions:
        _generate_positions(graph, v, first)
    needed = {v.name for n in graph.nodes for v in n.inputs} | {v.name for v in graph.outputs}
    dropped = [p for p in graph.params if p.name not in needed and p.name not in made]
    graph.params = [p for p in graph.params if p.name in needed]
    for p in dropped:
        graph.weights.pop(p.name, None)
    return len(folded), len(new_params), sum(v.nbytes for v in new_params)


def _widens_weight(graph: Graph, node) -> bool:
    """Is ``node`` a cast of a weight to a wider dtype (an int8 weight's dequantization)? Folding it
    would keep the wide copy resident: 4 bytes an element for an int8 weight's 1."""
    if node.op != "aten._to_copy.default" or not node.inputs or node.inputs[0].name not in graph.weights:
        return False
    return node.outputs[0].type.torch_dtype.itemsize > node.inputs[0].type.torch_dtype.itemsize


def _is_positions(t: torch.Tensor) -> bool:
    """Is ``t`` an integer ``arange(0, n)`` along its one dim of extent n > 1 (the others of extent 1)?"""
    if t.dtype not in (torch.int64, torch.int32) or sum(e != 1 for e in t.shape) != 1:
        return False
    return bool(torch.equal(t.reshape(-1), torch.arange(t.numel(), dtype=t.dtype)))


def _generate_positions(graph: Graph, v, before) -> None:
    """Make ``v`` (positions ``0 .. n - 1``, folded) the result of ``arange(0, n)`` and a view to its
    shape, placed ``before`` a node (at the start of the graph; the end if None): a generator costs
    one tiny kernel, and the attention kernels recognise positions by their ``arange``."""
    from memplan.ir.types import TensorType

    shape = [int(d) for d in v.type.shape]
    n = max(shape)
    kwargs = {} if v.type.dtype == "i64" else {"dtype": torch.int32}
    (flat,) = graph.add_node("aten.arange.start_step", (0, n), kwargs, [TensorType(v.type.dtype, (n,))],
                             name=f"{v.name}_positions", before=before, source=v.producer.source,
                             source_op="positions folded at compile time")
    if shape == [n]:
        graph.replace_all_uses(v, flat)
        return
    view = graph.make_node("aten.view.default", (flat, shape), {}, [v.type], name=v.name)
    graph.insert_node(view, after=flat.producer)
    graph.replace_all_uses(v, view.outputs[0])


def _attention_mask_sources(graph: Graph) -> set[str]:
    """Names of the values an attention's mask is computed from (the mask included)."""
    producer = {v.name: n for n in graph.nodes for v in n.outputs}
    stack = []
    for n in graph.nodes:
        if n.op == "aten.scaled_dot_product_attention.default":
            mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
            if mask is not None and not isinstance(mask, (int, float)):
                stack.append(mask)
    seen: set[str] = set()
    while stack:
        v = stack.pop()
        if v.name in seen:
            continue
        seen.add(v.name)
        p = producer.get(v.name)
        if p is not None:
            stack.extend(p.inputs)
    return seen


def _expands(node) -> bool:
    """Does ``node`` make more elements than it reads (a broadcast: a ``[L, L]`` mask from two
    ``[L]`` position vectors)? A generator (``arange``, ``full``) reads none: it expands beyond 4 KiB."""
    inputs = list(dict.fromkeys(node.inputs))
    if not inputs:
        return sum(v.nbytes for v in node.outputs) > 4096
    return sum(v.type.numel for v in node.outputs) > 2 * sum(v.type.numel for v in inputs)


def _read(graph: Graph, gone: set[str]) -> list:
    """The values the nodes not in ``gone`` and the graph outputs read, each once, in first-read order."""
    values = [v for n in graph.nodes if n.name not in gone for v in n.inputs] + list(graph.outputs)
    return list({v.name: v for v in values}.values())


def _frontier(graph: Graph, folded: list, total_bytes: int) -> list:
    """The folds worth keeping: a view is never made a weight of its own (it costs nothing per call,
    and its copy would be a second weight), so a view read by the rest of the graph keeps running;
    and while the new weights exceed ``total_bytes``, the fold making the largest one is undone."""
    views = {n.name for n in folded if lookup(n.op, node=n.name).view}
    kept = list(folded)
    while True:
        gone = {n.name for n in kept}
        made = {v.name: n for n in kept for v in n.outputs}
        frontier = [v for v in _read(graph, gone) if v.name in made]
        undo = {made[v.name].name for v in frontier if made[v.name].name in views}
        if not undo and sum(v.nbytes for v in frontier) > total_bytes:
            undo = {made[max(frontier, key=lambda v: v.nbytes).name].name}
        if not undo:
            return kept
        kept = [n for n in kept if n.name not in undo]


@register_pass("fold_constants", options=FoldConstantsOptions)
def fold_constants(graph: Graph, ctx) -> Graph:
    """Nodes that read only weights and earlier folds (position ids, mask indices, rotary tables) are
    evaluated once and become weights (each result at most ``fold_constants_max_bytes``)."""
    if ctx.options.get("fold_constants", "on") == "off":
        return graph
    max_bytes = int(ctx.options.get("fold_constants_max_bytes", MAX_BYTES))
    if max_bytes < 0:
        from memplan.errors import MemplanError
        raise MemplanError(f"option fold_constants_max_bytes must be at least 0 bytes, got {max_bytes}")
    count, params, nbytes = fold_constants_graph(graph, max_bytes)
    if count:
        from memplan.units import format_bytes
        ctx.log.append(f"fold_constants: {count} nodes that read no input computed once at compile time: "
                       f"{params} constants ({format_bytes(nbytes)}) are now weights")
    return graph
