"""Recurrences as ``memplan.loop`` regions: ``LSTM``, ``GRU``, ``RNN`` (and :func:`build_loop`, which
the control-flow lowerings share).

An RNN lowers to one recurrent loop per direction over the time steps. A trip reads its step of
``X`` (a slice), the weights whole, and the hidden (and cell) state *carried* from the trip before;
it computes the step's input projection, gates and new state, so every gate intermediate is one
step's size (``[batch, gates x hidden]``), never the sequence's. The state lives in the loop's
``Y_h`` / ``Y_c`` buffers, written over each trip; the step outputs are written into ``Y``.

Directions: ``forward``, ``reverse`` (the loop runs over ``X`` flipped in time, and its outputs
are flipped back), ``bidirectional`` (both, stacked). ``layout=1`` (batch first) is transposed
in and out. ``sequence_lens`` (forward only): past its length a batch row keeps its state and
outputs zeros, as the spec says. Activations (``activations``, ``activation_alpha`` and
``activation_beta``, consumed in order by the functions that take them), ``clip`` (applied to the
pre-activations of the gates) and LSTM's peepholes and ``input_forget`` are supported.
"""
from __future__ import annotations

from collections import ChainMap
from contextlib import contextmanager

import torch

from memplan.frontend.onnx_common import (Importer, NodeBuilder, dtype_of, is_const, onnx_op, rank_of,
                                          shape_of)
from memplan.ir.graph import INPUT, Graph, Value
from memplan.ir.regions import LOOP
from memplan.ir.types import TensorType


class Scope(dict):
    """The environment of a body graph: its own names, then the enclosing graph's (ONNX bodies read
    outer values by name). ``capture(name, value)`` turns an outer value into what the body reads."""

    def __init__(self, outer, capture):
        super().__init__()
        self.outer, self.capture = outer, capture

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.outer

    def __missing__(self, name):
        if name not in self.outer:
            raise KeyError(name)
        value = self.capture(name, self.outer[name])
        self[name] = value
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default


@contextmanager
def inner_scope(importer):
    """Lower a body inline in ``importer``'s graph with names of its own: it reads the enclosing
    values as they are, and what it defines stays inside (an If branch, a SequenceMap body, an
    unrolled Loop trip)."""
    saved = importer.env
    importer.env = Scope(saved, lambda name, value: value)
    try:
        yield
    finally:
        importer.env = saved


def build_loop(b, trips: int, args: list, slicings: list, body_fn, combines: list, *, what: str = "loop"):
    """A ``memplan.loop`` node in ``b``'s graph running ``body_fn`` ``trips`` times; its results.

    ``args``: the loop's inputs (values or constants), ``slicings`` their loop slicing
    (``["full"]``, ``["slice", dim, step, size]``, ``["carry", j]``); ``body_fn(bb, *tiles)``
    builds one trip with node builder ``bb`` on the body graph and returns its outputs;
    ``combines``: per output, ``["concat", dim]``, ``["sum"]`` or ``["last"]``. Constants the body
    makes become inputs of the loop (a body holds no weights)."""
    body = Graph(f"{b._hint}_{what}")
    sub = Importer(body, b.importer.opset, {}, fold_limit=b.importer.fold_limit)
    sub.lower_node = b.importer.lower_node
    outer = [b.importer.materialize(a) if is_const(a) else a for a in args]
    tiles = []
    for i, (a, s) in enumerate(zip(outer, slicings)):
        shape = list(a.type.shape)
        if s[0] == "slice":
            shape[s[1]] = s[3]
        tiles.append(body.add_input(f"in{i}", TensorType(a.type.dtype, tuple(shape))))
    captured: list[Value] = []  # values of the enclosing graph the body reads by name (ONNX's outer scope)

    def capture(name: str, value):
        if is_const(value):
            return value
        inner = body.add_input(name, value.type)
        captured.append(value)
        return inner

    sub.env = Scope(b.importer.env, capture)
    sub.elem_types = ChainMap({}, b.importer.elem_types)
    bb = NodeBuilder(sub, b.node, b.attrs)
    results = list(body_fn(bb, *tiles))
    inputs = {v.name for v in body.inputs}
    fresh = []
    for r in results:
        if is_const(r):  # a constant the body returns: computed by the body (its weight becomes an input)
            r = bb.call("aten.clone.default", sub.materialize(r))
        if r.name in inputs or r.name in {f.name for f in fresh}:
            r = bb.call("aten.clone.default", r)  # a body output is a value of its own
        fresh.append(r)
    outer += captured
    slicings = list(slicings) + [["full"]] * len(captured)
    for p in list(body.params):  # constants the body made: loop inputs read whole
        data = body.weights.pop(p.name)
        p.kind = INPUT
        body.inputs.append(p)
        outer.append(b.importer.materialize(data))
        slicings = list(slicings) + [["full"]]
    body.params = []
    body.outputs = fresh
    for i, s in enumerate(slicings):
        if s[0] == "carry" and not outer[i].type.same_tensor(fresh[s[1]].type):
            raise b.fail(f"a loop state changes from {outer[i].type} to {fresh[s[1]].type} across iterations; "
                         "memplan plans a state of one type")
    types = []
    for r, c in zip(fresh, combines):
        shape = list(r.type.shape)
        if c[0] == "concat":
            shape[c[1]] *= trips
        types.append(TensorType(r.type.dtype, tuple(shape)))
    outs = b.graph.add_node(LOOP, tuple(outer), {"trips": trips, "inputs": [list(s) for s in slicings],
                                                 "outputs": [list(c) for c in combines]},
                            types, name=f"{b._hint}_{what}", subgraph=body, source=b.name,
                            source_op=f"onnx::{b.op_type}")
    b.created.append(outs[0].producer)
    return list(outs)


# ---------------------------------------------------------------- activations
_TAKES = {"Sigmoid": 0, "Tanh": 0, "Relu": 0, "Softsign": 0, "Softplus": 0, "LeakyRelu": 1, "ThresholdedRelu": 1,
          "Elu": 1, "ScaledTanh": 2, "HardSigmoid": 2, "Affine": 2}
_DEFAULT_AB = {"LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None), "Elu": (1.0, None),
               "HardSigmoid": (0.2, 0.5), "ScaledTanh": (1.0, 1.0), "Affine": (1.0, 0.0)}


def _activations(b, defaults: list[str], num_dir: int):
    """Per direction, the activation functions (name, alpha, beta) the node asks for."""
    names = b.attr("activations", None) or defaults * num_dir
    if len(names) != len(defaults) * num_dir:
        raise b.fail(f"activations lists {len(names)} functions; {b.op_type} takes {len(defaults)} per direction "
                     f"({len(defaults) * num_dir} for {num_dir} direction(s))")
    alphas, betas = list(b.attr("activation_alpha", [])), list(b.attr("activation_beta", []))
    out = []
    for name in names:
        canonical = next((k for k in _TAKES if k.lower() == str(name).lower()), None)
        if canonical is None:
            raise b.fail(f"activation {name!r} is not one of {', '.join(_TAKES)}")
        alpha, beta = _DEFAULT_AB.get(canonical, (None, None))
        if _TAKES[canonical] >= 1 and alphas:
            alpha = alphas.pop(0)
        if _TAKES[canonical] >= 2 and betas:
            beta = betas.pop(0)
        out.append((canonical, alpha, beta))
    return [out[i * len(defaults):(i + 1) * len(defaults)] for i in range(num_dir)]


def _apply(bb, fn, x):
    name, alpha, beta = fn
    if name == "Sigmoid":
        return bb.call("aten.sigmoid.default", x)
    if name == "Tanh":
        return bb.call("aten.tanh.default", x)
    if name == "Relu":
        return bb.call("aten.relu.default", x)
    if name == "Softsign":
        return bb.call("aten.div.Tensor", x, bb.call("aten.add.Tensor", bb.call("aten.abs.default", x), 1.0))
    if name == "Softplus":
        return bb.call("aten.log1p.default", bb.call("aten.exp.default", x))
    if name == "LeakyRelu":
        return bb.call("aten.leaky_relu.default", x, alpha)
    if name == "ThresholdedRelu":
        return bb.call("aten.where.self", bb.call("aten.gt.Scalar", x, alpha), x, torch.tensor(0.0, dtype=dtype_of(x)))
    if name == "Elu":
        return bb.call("aten.elu.default", x, alpha)
    if name == "ScaledTanh":
        return bb.call("aten.mul.Tensor", bb.call("aten.tanh.default", bb.call("aten.mul.Tensor", x, beta)), alpha)
    if name == "HardSigmoid":
        return bb.call("aten.clamp.default", bb.call("aten.add.Tensor", bb.call("aten.mul.Tensor", x, alpha), beta),
                       0.0, 1.0)
    return bb.call("aten.add.Tensor", bb.call("aten.mul.Tensor", x, alpha), beta)  # Affine


def _clip(bb, x, clip):
    return x if clip is None else bb.call("aten.clamp.default", x, -clip, clip)


# ---------------------------------------------------------------- the shared driver
def _rnn(b, x, w, r, bias, seq_lens, init_states: list, *, gates: int, defaults: list[str], step, extra=None):
    """Lower an RNN-family node: per direction one recurrent loop whose body is ``step``."""
    hidden = int(b.attr("hidden_size", 0) or shape_of(r)[-1])
    direction = b.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise b.fail(f"direction {direction!r} is not forward, reverse or bidirectional")
    num_dir = 2 if direction == "bidirectional" else 1
    layout = int(b.attr("layout", 0))
    if layout not in (0, 1):
        raise b.fail(f"layout {layout} is not 0 (sequence first) or 1 (batch first)")
    if layout == 1:  # batch first: X [batch, seq, input], initial states [batch, directions, hidden]
        x = b.call("aten.permute.default", x, [1, 0, 2])
        init_states = [None if s is None else b.call("aten.permute.default", s, [1, 0, 2]) for s in init_states]
    if rank_of(x) != 3:
        raise b.fail(f"X has rank {rank_of(x)}; it is [seq, batch, input]")
    seq, batch, _ = shape_of(x)
    if shape_of(w)[:2] != (num_dir, gates * hidden) or shape_of(r) != (num_dir, gates * hidden, hidden):
        raise b.fail(f"W {list(shape_of(w))} and R {list(shape_of(r))} do not match {num_dir} direction(s), "
                     f"{gates} gates and hidden_size {hidden}")
    dt = dtype_of(x)
    clip = b.attr("clip", None)
    if clip is not None and not clip > 0:
        raise b.fail(f"clip {clip} must be positive")
    acts = _activations(b, defaults, num_dir)
    mask = None
    if seq_lens is not None:
        if direction != "forward":
            lens = b.const(seq_lens, "sequence_lens") if is_const(seq_lens) else None
            if lens is None or not bool((lens == seq).all()):
                raise b.fail("sequence_lens shorter than the sequence are supported for the forward direction only")
        else:
            steps = torch.arange(seq).reshape(seq, 1)
            mask = b.call("aten.lt.Tensor", steps, b.reshape(b.cast(seq_lens, torch.int64), [1, batch]))
            mask = b.reshape(mask, [seq, batch, 1])
    ys, finals = [], [[] for _ in init_states]
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        wd = b.call("aten.permute.default", b.call("aten.select.int", w, 0, d), [1, 0])  # [input, gates*hidden]
        rd = b.call("aten.permute.default", b.call("aten.select.int", r, 0, d), [1, 0])
        if bias is not None:
            bd = b.call("aten.select.int", bias, 0, d)
            wb = b.call("aten.slice.Tensor", bd, 0, 0, gates * hidden)
            rb = b.call("aten.slice.Tensor", bd, 0, gates * hidden, 2 * gates * hidden)
        else:
            wb = rb = torch.zeros(gates * hidden, dtype=dt)
        states = []
        for s in init_states:
            states.append(torch.zeros(batch, hidden, dtype=dt) if s is None else b.call("aten.select.int", s, 0, d))
        xs = b.call("aten.flip.default", x, [0]) if reverse else x
        extra_d = [] if extra is None else [b.call("aten.select.int", extra, 0, d)]
        args = [xs, wd, rd, wb, rb, *extra_d] + states
        slicings = [["slice", 0, 1, 1], ["full"], ["full"], ["full"], ["full"]] + [["full"]] * len(extra_d)
        n_states = len(states)
        slicings += [["carry", j] for j in range(n_states)]
        if mask is not None:
            args.append(mask)
            slicings.append(["slice", 0, 1, 1])

        def body(bb, xt, wt, rt, wbt, rbt, *rest, _acts=acts[d], _extra=len(extra_d)):
            extra_t = list(rest[:_extra])
            state_t = list(rest[_extra:_extra + n_states])
            m = rest[_extra + n_states] if mask is not None else None
            xt = bb.reshape(xt, [batch, shape_of(xt)[2]])
            xw = bb.call("aten.add.Tensor", bb.call("aten.mm.default", xt, wt), wbt)
            new = step(bb, xw, rt, rbt, state_t, hidden, _acts, clip, *extra_t)
            if m is not None:
                m = bb.reshape(m, [batch, 1])
                new = [bb.call("aten.where.self", m, n, s) for n, s in zip(new, state_t)]
                y = bb.call("aten.where.self", m, new[0], torch.tensor(0.0, dtype=dt))
            else:
                y = new[0]
            return new + [bb.reshape(y, [1, batch, hidden])]

        outs = build_loop(b, seq, args, slicings, body, [["last"]] * n_states + [["concat", 0]],
                          what=f"{'reverse' if reverse else 'forward'}_steps")
        y = outs[-1]
        ys.append(b.call("aten.flip.default", y, [0]) if reverse else y)
        for j in range(n_states):
            finals[j].append(outs[j])
    y = b.call("aten.stack.default", ys, 1)  # [seq, num_dir, batch, hidden]
    finals = [b.call("aten.stack.default", f, 0) for f in finals]  # [num_dir, batch, hidden]
    if layout == 1:
        y = b.call("aten.permute.default", y, [2, 0, 1, 3])
        finals = [b.call("aten.permute.default", f, [1, 0, 2]) for f in finals]
    return (y, *finals)


def _gate(bb, t, k, hidden):
    return bb.call("aten.slice.Tensor", t, 1, k * hidden, (k + 1) * hidden)


def _recurrent(bb, h, rt, rbt):
    return bb.call("aten.add.Tensor", bb.call("aten.mm.default", h, rt), rbt)


def _lstm_step(bb, xw, rt, rbt, states, hidden, acts, clip, peep=None):
    f, g, h = acts
    hp, c = states
    pre = bb.call("aten.add.Tensor", xw, _recurrent(bb, hp, rt, rbt))
    i_, o_, f_, c_ = (_gate(bb, pre, k, hidden) for k in range(4))  # ONNX's gate order: i, o, f, c
    if peep is not None:
        pi, po, pf = (bb.call("aten.slice.Tensor", peep, 0, k * hidden, (k + 1) * hidden) for k in range(3))
        i_ = bb.call("aten.add.Tensor", i_, bb.call("aten.mul.Tensor", pi, c))
        f_ = bb.call("aten.add.Tensor", f_, bb.call("aten.mul.Tensor", pf, c))
    it = _apply(bb, f, _clip(bb, i_, clip))
    if bb.attr("input_forget", 0):
        ft = bb.call("aten.rsub.Scalar", it, 1.0)
    else:
        ft = _apply(bb, f, _clip(bb, f_, clip))
    ct = _apply(bb, g, _clip(bb, c_, clip))
    c_new = bb.call("aten.add.Tensor", bb.call("aten.mul.Tensor", ft, c), bb.call("aten.mul.Tensor", it, ct))
    if peep is not None:
        o_ = bb.call("aten.add.Tensor", o_, bb.call("aten.mul.Tensor", po, c_new))
    ot = _apply(bb, f, _clip(bb, o_, clip))
    h_new = bb.call("aten.mul.Tensor", ot, _apply(bb, h, c_new))
    return [h_new, c_new]


def _gru_step(bb, xw, rt, rbt, states, hidden, acts, clip):
    f, g = acts
    (h,) = states
    if bb.attr("linear_before_reset", 0):
        hr = _recurrent(bb, h, rt, rbt)
    else:  # the candidate's recurrent product reads r . H: only the z and r gates' products come first
        hr = _recurrent(bb, h, bb.call("aten.slice.Tensor", rt, 1, 0, 2 * hidden),
                        bb.call("aten.slice.Tensor", rbt, 0, 0, 2 * hidden))
    z = _apply(bb, f, _clip(bb, bb.call("aten.add.Tensor", _gate(bb, xw, 0, hidden), _gate(bb, hr, 0, hidden)), clip))
    r = _apply(bb, f, _clip(bb, bb.call("aten.add.Tensor", _gate(bb, xw, 1, hidden), _gate(bb, hr, 1, hidden)), clip))
    if bb.attr("linear_before_reset", 0):
        cand = bb.call("aten.add.Tensor", _gate(bb, xw, 2, hidden), bb.call("aten.mul.Tensor", r, _gate(bb, hr, 2, hidden)))
    else:
        rh = _recurrent(bb, bb.call("aten.mul.Tensor", r, h), bb.call("aten.slice.Tensor", rt, 1, 2 * hidden, 3 * hidden),
                        bb.call("aten.slice.Tensor", rbt, 0, 2 * hidden, 3 * hidden))
        cand = bb.call("aten.add.Tensor", _gate(bb, xw, 2, hidden), rh)
    ht = _apply(bb, g, _clip(bb, cand, clip))
    one_minus_z = bb.call("aten.rsub.Scalar", z, 1.0)
    return [bb.call("aten.add.Tensor", bb.call("aten.mul.Tensor", one_minus_z, ht), bb.call("aten.mul.Tensor", z, h))]


def _rnn_step(bb, xw, rt, rbt, states, hidden, acts, clip):
    (f,) = acts
    return [_apply(bb, f, _clip(bb, bb.call("aten.add.Tensor", xw, _recurrent(bb, states[0], rt, rbt)), clip))]


def claim_rnn(attrs, types, opset, ranks):
    if len(types) > 4 and types[4] is not None and attrs.get("direction", "forward") != "forward":
        return "sequence_lens with a reverse direction"
    if attrs.get("layout", 0) not in (0, 1):
        return "layout"
    return None


@onnx_op("LSTM", claim=claim_rnn)
def lower_lstm(b, x, w, r, bias=None, seq_lens=None, initial_h=None, initial_c=None, peepholes=None):
    return _rnn(b, x, w, r, bias, seq_lens, [initial_h, initial_c], gates=4, defaults=["Sigmoid", "Tanh", "Tanh"],
                step=_lstm_step, extra=peepholes)


@onnx_op("GRU", claim=claim_rnn)
def lower_gru(b, x, w, r, bias=None, seq_lens=None, initial_h=None):
    return _rnn(b, x, w, r, bias, seq_lens, [initial_h], gates=3, defaults=["Sigmoid", "Tanh"], step=_gru_step)


@onnx_op("RNN", claim=claim_rnn)
def lower_rnn(b, x, w, r, bias=None, seq_lens=None, initial_h=None):
    return _rnn(b, x, w, r, bias, seq_lens, [initial_h], gates=1, defaults=["Tanh"], step=_rnn_step)


__all__ = ["build_loop"]
