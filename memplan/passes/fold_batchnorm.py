"""Pass ``fold_batchnorm``: inference batch norm folded into the convolution before it.

``bn(conv(x, W, c))`` with constant statistics equals ``conv(x, W·s, (c − μ)·s + β)``
with ``s = γ / sqrt(σ² + ε)`` per output channel. Folding removes a full-size
activation and a pass over it per convolution (and the temporary that
``batch_norm.out`` allocates internally). The folded weights replace the old
ones (same bytes); the convolution's output must feed only the batch norm.
"""
from __future__ import annotations

import torch

from memplan.ir.graph import PARAM, Graph
from memplan.ir.types import TensorType
from memplan.passes.layout import erase_nodes
from memplan.passes.registry import register_pass

BN = "aten._native_batch_norm_legit_no_training.default"
CONV = "aten.convolution.default"


def _const(graph: Graph, v):
    if v is None:
        return None
    if getattr(v, "kind", None) == PARAM and v.name in graph.weights:
        return graph.weights[v.name]
    raise KeyError


@register_pass("fold_batchnorm", kind="graph")
def fold_batchnorm(graph: Graph, ctx) -> Graph:
    """Fold ``conv → batch norm (inference)`` pairs into one convolution."""
    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    folded = []  # (batch norm, the convolution output that replaces its result)
    for bn in graph.nodes:
        if bn.op != BN or len(bn.args) < 7:
            continue
        x, gamma, beta, mean, var, _momentum, eps = bn.args[:7]
        conv = x.producer
        if conv is None or conv.op != CONV or conv.args[6] or len(users[x.name]) != 1 or x.name in outputs:
            continue
        if any(users[v.name] or v.name in outputs for v in bn.outputs[1:]):
            continue
        try:
            w, c = _const(graph, conv.args[1]), _const(graph, conv.args[2])
            g, b, mu, sigma2 = (_const(graph, v) for v in (gamma, beta, mean, var))
        except KeyError:
            continue
        if not w.is_floating_point() or mu is None or sigma2 is None:
            continue
        scale = (g if g is not None else torch.ones_like(mu)) / torch.sqrt(sigma2 + eps)
        bias = (c if c is not None else torch.zeros_like(mu)) - mu
        bias = bias * scale + (b if b is not None else torch.zeros_like(mu))
        new_w = (w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(w.dtype).contiguous()
        w_value = graph.add_param(conv.args[1].name + ".bn_folded", conv.args[1].type, new_w)
        b_value = graph.add_param((conv.args[2].name if conv.args[2] is not None else conv.name) + ".bias_bn_folded",
                                  TensorType(conv.args[1].type.dtype, (int(mu.numel()),)), bias.to(w.dtype))
        conv.args = (conv.args[0], w_value, b_value, *conv.args[3:])
        conv.source_op = f"{conv.source_op or conv.op} + {BN.rsplit('.', 1)[0]}"
        folded.append((bn, x))
    if not folded:
        return graph
    # rewired once every pair is found: ``users`` above describes the graph as it came in
    for bn, x in folded:
        graph.replace_all_uses(bn.outputs[0], x, after=bn)
    erase_nodes(graph, [bn for bn, _ in folded])
    ctx.log.append(f"fold_batchnorm: folded {len(folded)} batch norms into their convolutions")
    return graph
