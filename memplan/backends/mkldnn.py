"""Weights prepacked for oneDNN: what ``memplan.mkldnn_conv2d`` reads at run time.

A oneDNN convolution wants its weights in a blocked layout chosen for the
input size; given plain weights it reorders them on every call (scratch as
large as the weights: 9 MiB for a 512×512×3×3 layer). Shapes are static in a
plan, so :func:`prepack` reorders each such weight once, when the module is
compiled; the IR and ``graph.weights`` keep the plain tensors (the reference
semantics), the compiled module runs on the packed ones.
"""
from __future__ import annotations

import torch

from memplan.backends.pytorch_ops import MKLDNN_CONVS as CONVS
from memplan.ir.graph import PARAM, Graph



def prepack(graph: Graph) -> dict[str, torch.Tensor]:
    """``graph.weights`` with every weight read only by ``memplan.mkldnn_conv2d*`` nodes of one
    geometry replaced by its oneDNN-packed form."""
    weights = dict(graph.weights)
    for name, (padding, stride, dilation, groups, input_size) in packed_weights(graph).items():
        weights[name] = torch.ops.mkldnn._reorder_convolution_weight(
            weights[name], list(padding), list(stride), list(dilation), groups, list(input_size))
    return weights


def packed_weights(graph: Graph) -> dict[str, tuple]:
    """The weights :func:`prepack` packs, each with its geometry (padding, stride, dilation, groups,
    input size); the others stay plain (a oneDNN convolution then reorders them on every call)."""
    keys: dict[str, set] = {}
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for v in {v.name: v for v in node.inputs}.values():
            readers[v.name] = readers.get(v.name, 0) + 1
        if node.op in CONVS:
            x, w, _b, stride, padding, dilation, groups = node.args[:7]
            if w.kind == PARAM:
                key = (tuple(padding), tuple(stride), tuple(dilation), groups, tuple(int(d) for d in x.type.shape))
                keys.setdefault(w.name, set()).add(key)
    conv_readers: dict[str, int] = {}
    for node in graph.nodes:
        if node.op in CONVS and node.args[1].kind == PARAM:
            conv_readers[node.args[1].name] = conv_readers.get(node.args[1].name, 0) + 1
    packed = {}
    for name, ks in keys.items():
        if len(ks) != 1 or readers.get(name) != conv_readers.get(name) or name not in graph.weights:
            continue  # read elsewhere too, or by convolutions of different geometry: keep it plain
        packed[name] = next(iter(ks))
    return packed
