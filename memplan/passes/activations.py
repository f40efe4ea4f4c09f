"""Decomposed activations become the one aten op they compute (part of ``canonicalize``).

GPT-2 writes its GELU as eight elementwise ops (``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 *
x ** 3)))``): run one by one, each result is a buffer as large as the activation and each is a call;
``aten.gelu(x, approximate="tanh")`` computes the same function in one call into one buffer (which
may be ``x``'s own). Other models spell GELU, SiLU or hard-swish their own ways.

Recognition is by value, not by spelling: a chain of elementwise ops that reads one tensor ``x``
(and numbers) is a function of one variable. It is run on probe values (a dense grid over
[-12, 12], zeros of both signs, every half decade of magnitude from 1e-30 to 1e36 of both
signs, NaN), in float64 and in the chain's own
dtype, and where it agrees with a known activation on every probe (float64: to 1e-9 relative;
its own dtype: to that dtype's rounding; float32 and float64 chains only: in 16-bit floats each op
of a chain rounds, and the one op would round once, where eager rounds at every step), the chain becomes that activation. Only chains whose
intermediate results nothing else reads are replaced, so nothing computed is lost.

What may differ: at infinite inputs a formula and the library op can disagree (the tanh formula
gives NaN at -inf, ``aten.gelu`` gives 0), and so can they within a factor of a few of float32's
largest number (``aten.gelu(3.4e38)`` overflows to inf, the erf formula does not); every other
input agrees to rounding.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from memplan.ir.graph import Graph, Value, map_values

MAX_CHAIN = 40  # ops in one chain considered (activations are written in at most a few dozen)

# (op, kwargs, reference in float64): the functions a chain is compared with
KNOWN = [
    ("aten.gelu.default", {"approximate": "tanh"},
     lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))),
    ("aten.gelu.default", {}, lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))),
    ("aten.silu.default", {}, lambda x: x * torch.sigmoid(x)),
    ("aten.hardswish.default", {}, lambda x: x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0),
    ("aten.mish.default", {}, lambda x: x * torch.tanh(torch.nn.functional.softplus(x))),
]


@lru_cache(maxsize=None)
def _probes(dtype: torch.dtype) -> torch.Tensor:
    grid = torch.linspace(-12.0, 12.0, 2401, dtype=torch.float64)
    extra = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 30.0, -30.0, 80.0, -80.0, 1e4, -1e4,
                          float("nan")], dtype=torch.float64)
    mags = torch.logspace(-30, 36, 133, dtype=torch.float64)  # every half decade from 1e-30 to 1e36
    x = torch.cat([grid, extra, mags, -mags])
    return x.to(dtype)


@lru_cache(maxsize=None)
def _references(dtype: torch.dtype) -> list[tuple[str, dict, torch.Tensor, torch.Tensor]]:
    """Per known activation: its op, kwargs, its reference on the float64 probes and the op itself
    on the probes in ``dtype``."""
    from memplan.ir.ops import lookup

    with torch.no_grad():
        return [(op, kwargs, ref(_probes(torch.float64)), lookup(op).impl(_probes(dtype), **kwargs))
                for op, kwargs, ref in KNOWN]


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    keep = ~torch.isnan(a)
    return bool(torch.allclose(a[keep], b[keep], rtol=rtol, atol=atol))


def _run(chain: list, x: Value, probe: torch.Tensor):
    from memplan.ir.interpret import run_node

    env = {x.name: probe}
    for node in chain:
        (env[node.outputs[0].name],) = run_node(node, map_values(node.args, lambda v: env[v.name]),
                                                map_values(node.kwargs, lambda v: env[v.name]))
    return env[chain[-1].outputs[0].name]


def identify(chain: list, x: Value) -> tuple[str, dict] | None:
    """The known activation the elementwise ``chain`` (in order, reading only ``x`` and numbers)
    computes, as (op, kwargs), or None."""
    dtype = x.type.torch_dtype
    if dtype not in (torch.float32, torch.float64):
        return None  # in 16-bit floats each op of the chain rounds: one op would round once, not as eager
    try:
        with torch.no_grad():
            wide = _run(chain, x, _probes(torch.float64))
            own = _run(chain, x, _probes(dtype))
    except Exception:  # an op that refuses a 1-D probe or float64: not a function of x alone
        return None
    eps = torch.finfo(dtype).eps
    for op, kwargs, want_wide, want_own in _references(dtype):
        if _same(wide, want_wide, 1e-9, 1e-12) and _same(own, want_own, 64 * eps, 64 * eps):
            return op, kwargs
    return None


def recognize_activations(graph: Graph) -> list[tuple[str, str]]:
    """Replace each chain computing a known activation of one tensor by that op; return
    (the chain's last node, the op) per replacement."""
    from memplan.passes.fusable import why_not_pointwise

    users = graph.users()
    outputs = {v.name for v in graph.outputs}
    source: dict[str, Value] = {}  # value -> the one tensor its chain reads
    chain_of: dict[str, list] = {}  # value -> its chain's nodes, in graph order
    for node in graph.nodes:
        if why_not_pointwise(node) is not None or node.outputs[0].type.torch_dtype.is_complex:
            continue
        tensors = list(dict.fromkeys(node.inputs))
        if not tensors:
            continue
        roots = {source[v.name].name if v.name in source else v.name for v in tensors}
        if len(roots) != 1:
            continue
        first = tensors[0]
        x = source.get(first.name, first)
        out = node.outputs[0]
        if tuple(out.type.shape) != tuple(x.type.shape) or out.type.dtype != x.type.dtype or any(
                tuple(v.type.shape) != tuple(x.type.shape) or v.type.dtype != x.type.dtype for v in tensors):
            continue
        members = list(dict.fromkeys(m for v in tensors for m in chain_of.get(v.name, []))) + [node]
        if len(members) > MAX_CHAIN:
            continue
        source[out.name], chain_of[out.name] = x, members
    done: set[str] = set()
    made = []
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    for name in sorted(chain_of, key=lambda n: -order[chain_of[n][-1].name]):
        chain = sorted(chain_of[name], key=lambda n: order[n.name])
        if len(chain) < 2 or any(n.name in done for n in chain):
            continue
        inside = {n.name for n in chain}
        last = chain[-1]
        if any(v.name in outputs or any(u.name not in inside for u in users.get(v.name, []))
               for n in chain[:-1] for v in n.outputs):
            continue  # an intermediate is read elsewhere: replacing would compute it anyway
        x = source[name]
        found = identify(chain, x)
        if found is None:
            continue
        op, kwargs = found
        (new,) = graph.add_node(op, (x,), dict(kwargs), [last.outputs[0].type], name=f"{last.name}_{op.split('.')[1]}",
                                before=last, source=last.source,
                                source_op=" + ".join(dict.fromkeys(n.source_op or n.op for n in chain)))
        graph.replace_all_uses(last.outputs[0], new)
        graph.erase_nodes(chain)
        done |= inside
        made.append((last.name, op + ("(approximate=tanh)" if kwargs else "")))
    return made
