"""Decomposed activations become the one aten op they compute (part of ``canonicalize``).

GPT-2 writes its GELU as eight elementwise ops (``0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 *
x ** 3)))``): run one by one, each result is a buffer as large as the activation and each is a call;
``aten.gelu(x, approximate="tanh")`` computes the same function in one call into one buffer (which
may be ``x``'s own). Other models spell GELU, SiLU or hard-swish their own ways.

Recognition is by value and by form. A chain of elementwise ops that reads one tensor ``x``
(and numbers) is a function of one variable. It is run on probe values (a dense grid over
[-12, 12], zeros of both signs, every half decade of magnitude from 1e-30 to 1e36 of both
signs, NaN), in float64 and in the chain's own
dtype, and where it agrees with a known activation on every probe (float64: to 1e-9 relative;
its own dtype: to that dtype's rounding; float32 and float64 chains only: in 16-bit floats each op
of a chain rounds, and the one op would round once, where eager rounds at every step), and where, written as a formula in ``x`` (sympy, every op spelt out: a sigmoid as ``1 / (1 +
exp(-x))``, a clamp as Min/Max) and fully expanded, it is the activation's formula to the
constants' 8th or 9th significant digit, the chain becomes that activation. The probes catch
what the formula cannot see (NaN, overflow, the dtype's rounding); the formula catches what probes
between their points cannot (a bump that is zero on every probe). An op the formula cannot spell
keeps the chain as it is. Only chains whose
intermediate results nothing else reads are replaced, so nothing computed is lost.

What may differ: at infinite inputs a formula and the library op can disagree (the tanh formula
gives NaN at -inf, ``aten.gelu`` gives 0), and so can they within a factor of a few of float32's
largest number (``aten.gelu(3.4e38)`` overflows to inf, the erf formula does not); every other
input agrees to rounding.
"""
from __future__ import annotations

import math
from functools import lru_cache

import sympy
import torch

from memplan.ir.graph import Graph, Value, map_values

MAX_CHAIN = 40  # ops in one chain considered (activations are written in at most a few dozen)
MAX_FORMULA_OPS = 400  # a chain's formula larger than this (before expanding) is not compared
MAX_POWER = 8  # integer powers above this are not expanded

_X = sympy.Symbol("x", real=True)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)
_SIGMOID = lambda a: 1 / (1 + sympy.exp(-a))  # noqa: E731
_SOFTPLUS = lambda a: sympy.log(1 + sympy.exp(a))  # noqa: E731
FORMULAS = [  # the formula of each of KNOWN, in its order
    0.5 * _X * (1 + sympy.tanh(_SQRT_2_PI * (_X + 0.044715 * _X ** 3))),
    0.5 * _X * (1 + sympy.erf(_X / math.sqrt(2.0))),
    _X * _SIGMOID(_X),
    _X * sympy.Min(sympy.Max(_X + 3, 0), 6) / 6,
    _X * sympy.tanh(_SOFTPLUS(_X)),
]

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


def _number(a):
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
        raise _NoFormula(repr(a))
    return sympy.Integer(int(a)) if float(a).is_integer() and abs(a) < 2 ** 53 else sympy.Float(a)


class _NoFormula(Exception):
    pass


def _formula_of(node, env) -> sympy.Expr:
    short, overload = node.op.split(".")[1:3] if node.op.startswith("aten.") else (node.op, "")
    args = [env[a.name] if isinstance(a, Value) else _number(a) for a in node.args]
    kw = {k: (env[v.name] if isinstance(v, Value) else v) for k, v in node.kwargs.items()}

    def opt(i, name, default):
        v = args[i] if len(args) > i else kw.get(name, default)
        if v is None:
            return None
        return v if isinstance(v, sympy.Expr) else _number(v)

    unary = {"tanh": sympy.tanh, "erf": sympy.erf, "exp": sympy.exp, "log": sympy.log, "sigmoid": _SIGMOID,
             "neg": lambda a: -a, "sqrt": sympy.sqrt, "rsqrt": lambda a: 1 / sympy.sqrt(a), "abs": sympy.Abs,
             "reciprocal": lambda a: 1 / a, "log1p": lambda a: sympy.log(1 + a), "expm1": lambda a: sympy.exp(a) - 1,
             "relu": lambda a: sympy.Max(a, 0), "square": lambda a: a ** 2}
    if short in unary and len(args) == 1 and not kw:
        return unary[short](args[0])
    if short in ("add", "sub", "rsub") and len(args) == 2 and set(kw) <= {"alpha"}:
        a, b = args
        b = b * opt(2, "alpha", 1)
        return a + b if short == "add" else (a - b if short == "sub" else b - a)
    if short == "mul" and len(args) == 2 and not kw:
        return args[0] * args[1]
    if short == "div" and len(args) == 2 and kw.get("rounding_mode") is None and set(kw) <= {"rounding_mode"}:
        return args[0] / args[1]
    if short == "pow" and len(args) == 2 and not kw:
        base, e = args
        if e.is_Integer and abs(int(e)) > MAX_POWER:
            raise _NoFormula("a high power")
        return base ** e
    if short in ("clamp", "hardtanh", "clamp_min", "clamp_max"):
        low_default, high_default = (-1, 1) if short == "hardtanh" else (None, None)
        names = ("min_val", "max_val") if short == "hardtanh" else ("min", "max")
        if short == "clamp_max":
            low, high = None, opt(1, "max", None)
        else:
            low, high = opt(1, names[0], low_default), opt(2, names[1], high_default)
        if set(kw) - set(names) - {"min", "max"}:
            raise _NoFormula(node.op)
        a = args[0]
        if low is not None:
            a = sympy.Max(a, low)
        if high is not None:
            a = sympy.Min(a, high)
        return a
    if short == "softplus" and args and opt(1, "beta", 1) == 1:
        return _SOFTPLUS(args[0])  # its threshold is a shortcut where the two agree to rounding
    raise _NoFormula(node.op)


def formula(chain: list, x: Value) -> sympy.Expr | None:
    """The chain as a formula in ``x`` (None: an op it cannot spell, or a formula too large)."""
    env = {x.name: _X}
    try:
        for node in chain:
            env[node.outputs[0].name] = _formula_of(node, env)
    except (_NoFormula, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    out = env[chain[-1].outputs[0].name]
    return out if sympy.count_ops(out) <= MAX_FORMULA_OPS else None


@lru_cache(maxsize=256)  # the known formulas are rounded once per digit count, not per chain
def _rounded(expr: sympy.Expr, digits: int) -> sympy.Expr:
    """``expr`` expanded, every float constant rounded to ``digits`` significant digits."""
    def walk(e):
        if e.is_Float or (e.is_Rational and not e.is_Integer):  # 1/6 and 0.1666... alike
            if e != 0 and not 1e-30 < abs(e) < 1e30:
                raise _NoFormula("a constant beyond float range")  # exp(-4e6): no float rounds it
            r = float(f"{float(e):.{digits}g}")
            return sympy.Integer(int(r)) if r.is_integer() else sympy.Float(r)
        if not e.args:
            return e
        return e.func(*[walk(a) for a in e.args])

    for _ in range(2):  # rounding can make terms alike that expand then combines
        expr = sympy.expand(walk(sympy.expand(expr, deep=True)), deep=True)
    return expr


def same_formula(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Are ``a`` and ``b`` the same formula, up to their float constants' 8th or 9th significant
    digit? (Two constants that differ in the 12th digit round alike at one of the two.)"""
    try:
        return any(sympy.expand(_rounded(a, d) - _rounded(b, d)) == 0 for d in (8, 9))
    except _NoFormula:
        return False


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
    for k, (op, kwargs, want_wide, want_own) in enumerate(_references(dtype)):
        if _same(wide, want_wide, 1e-9, 1e-12) and _same(own, want_own, 64 * eps, 64 * eps):
            mine = formula(chain, x)
            if mine is not None and same_formula(mine, FORMULAS[k]):
                return op, kwargs
            return None  # the probes agree and the formula does not (or cannot be written): kept
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
