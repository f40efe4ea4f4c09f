"""A reference interpreter of the IR: each node's op run on real tensors, regions through their body.

It defines what a graph computes, independently of any backend: tests compare
emitted code against it (a group or loop against the same graph unrolled).

>>> import torch
>>> from memplan.ir.parser import parse
>>> g = parse('''graph g(%x: f32[2, 2]) {
...   %y: f32[2, 2] = aten.neg.default(%x)
...   return %y
... }''')
>>> run_graph(g, [torch.ones(2, 2)])[0].tolist()
[[-1.0, -1.0], [-1.0, -1.0]]
"""
from __future__ import annotations

import torch

from memplan.ir.graph import Graph, Node, map_values
from memplan.ir.ops import flatten_outputs, lookup
from memplan.ir.regions import GROUP, LOOP, loop_spec


def run_graph(graph: Graph, inputs, weights: dict | None = None) -> list[torch.Tensor]:
    """The outputs of ``graph`` on ``inputs`` (weights: ``graph.weights`` unless given)."""
    env: dict[str, torch.Tensor] = {}
    weights = graph.weights if weights is None else weights
    for v, x in zip(graph.inputs, inputs):
        env[v.name] = x
    for p in graph.params:
        env[p.name] = weights[p.name]
    for node in graph.nodes:
        results = run_node(node, map_values(node.args, lambda v: env[v.name]),
                           map_values(node.kwargs, lambda v: env[v.name]))
        for v, t in zip(node.outputs, results):
            env[v.name] = t
    return [env[v.name] for v in graph.outputs]


def run_node(node: Node, args, kwargs) -> list[torch.Tensor]:
    """The results of one node on real arguments."""
    if node.op == GROUP:
        return run_graph(node.subgraph, list(args), {})
    if node.op == LOOP:
        return _run_loop(node, list(args))
    return flatten_outputs(lookup(node.op, node=node.name).impl(*args, **kwargs))


def _run_loop(node: Node, args) -> list[torch.Tensor]:
    spec = loop_spec(node)
    results: list[list[torch.Tensor]] = [[] for _ in node.outputs]
    state = {i: a for i, (a, s) in enumerate(zip(args, spec.inputs)) if s.kind == "carry"}
    for t in range(spec.trips):
        tiles = [state[i] if s.kind == "carry" else a if s.kind == "full" else a.narrow(s.dim, t * s.step, s.size)
                 for i, (a, s) in enumerate(zip(args, spec.inputs))]
        trip = run_graph(node.subgraph, tiles, {})
        for j, r in enumerate(trip):
            results[j].append(r)
        for i, s in enumerate(spec.inputs):
            if s.kind == "carry":
                state[i] = trip[s.dim]
    out = []
    for parts, combine in zip(results, spec.outputs):
        if combine.kind == "concat":
            out.append(torch.cat(parts, combine.dim))
        elif combine.kind == "last":
            out.append(parts[-1].clone())
        else:  # trip by trip, in order, as a backend accumulates
            total = parts[0].clone()
            for p in parts[1:]:
                total += p
            out.append(total)
    return out
