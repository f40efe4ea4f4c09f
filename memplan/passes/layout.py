"""Strides eager PyTorch gives each value, found by running the graph on fake tensors.

The IR types carry shapes, not strides, but later view ops in a captured
graph rely on the strides eager produced (``permute`` then ``view`` only works
on the layout the exporter saw). A planned slot must therefore have those
strides. ``FakeTensorMode`` reproduces the CPU kernels' output strides without
computing anything (meta kernels alone do not: fused attention differs).
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from memplan.ir.graph import Graph, map_values
from memplan.ir.ops import flatten_outputs, lookup


_PLAIN_VIEWS = {"aten.view.default", "aten._unsafe_view.default"}


def eager_strides(graph: Graph, *, repair_views: bool = False) -> dict[str, tuple[int, ...]]:
    """value name -> strides of that value when the graph runs eagerly on the CPU.

    ``repair_views``: a ``view`` whose input's layout cannot serve it (a pass changed that
    layout) gets a contiguous copy of its input inserted before it, in ``graph`` itself.
    """
    strides: dict[str, tuple[int, ...]] = {}
    nodes = []
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        env = {}
        for v in graph.inputs:
            env[v.name] = torch.empty(tuple(int(d) for d in v.type.shape), dtype=v.type.torch_dtype)
        for v in graph.params:
            data = graph.weights.get(v.name)
            env[v.name] = (mode.from_tensor(data) if data is not None else
                           torch.empty(tuple(int(d) for d in v.type.shape), dtype=v.type.torch_dtype))
        for node in list(graph.nodes):
            opdef = lookup(node.op, node=node.name)
            args = map_values(node.args, lambda v: env[v.name])
            kwargs = map_values(node.kwargs, lambda v: env[v.name])
            try:
                results = flatten_outputs(opdef.impl(*args, **kwargs))
            except (RuntimeError, ValueError):
                if not (repair_views and node.op in _PLAIN_VIEWS):
                    raise
                src = node.args[0]
                (dense,) = graph.add_node("aten.clone.default", (src,), {"memory_format": torch.contiguous_format},
                                          [src.type], name=f"{node.name}_contiguous", source=node.source,
                                          source_op=node.source_op)
                nodes.append(graph.nodes.pop())
                env[dense.name] = env[src.name].contiguous()
                node.args = (dense, *node.args[1:])
                results = flatten_outputs(opdef.impl(env[dense.name], *args[1:], **kwargs))
            nodes.append(node)
            for v, t in zip(node.outputs, results):
                env[v.name] = t
    graph.nodes = nodes
    for name, t in env.items():
        strides[name] = tuple(t.stride())
    return strides


def is_dense(shape, strides) -> bool:
    """True when ``strides`` lay ``shape`` out on exactly ``numel`` elements (a permuted contiguous layout)."""
    dims = sorted((s, d) for d, s in zip(shape, strides) if d != 1)
    expected = 1
    for s, d in dims:
        if s != expected:
            return False
        expected *= d
    return True


def contiguous_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= max(int(d), 1)
    return tuple(reversed(out))


def slot_strides(shape, eager: tuple[int, ...] | None) -> tuple[int, ...]:
    """The strides a planned slot gets: eager's where they lay the value out densely, else contiguous."""
    shape = [int(d) for d in shape]
    if eager is None or any(d == 0 for d in shape) or not is_dense(shape, eager):
        return contiguous_strides(shape)
    return tuple(eager)
