"""ONNX sequences and optionals, resolved at import time.

A sequence's length is known when the graph is planned (its graph input's example gives it, or
the ops that build it do), so a sequence is a Python list of tensors
(:class:`~memplan.frontend.onnx_common.OnnxSequence`) and every element is planned as a tensor of
its own; the sequence ops only pick, insert and erase elements. ``SplitToSequence`` and
``ConcatFromSequence`` become slices and a ``cat``/``stack``; ``SequenceMap`` lowers its body once
per element. An optional is the value it holds, or :class:`EmptyOptional`.
Positions must be known at import time (constants, or graph inputs memplan binds).
"""
from __future__ import annotations

import torch

from memplan.frontend.onnx_common import (EmptyOptional, OnnxSequence, dtype_of, is_const, is_tensor_like,
                                          norm_axis, onnx_elem_type, onnx_op, rank_of, shape_of)


def _seq(b, x, what: str = "input") -> OnnxSequence:
    if not isinstance(x, OnnxSequence):
        raise b.fail(f"its {what} is not a sequence")
    return x


def _elem(x) -> int:
    try:
        return onnx_elem_type(dtype_of(x))
    except KeyError:
        return 0


def _position(b, seq, pos, *, insert: bool = False) -> int:
    n = len(seq)
    p = int(b.scalar(pos, "position"))
    hi = n if insert else n - 1
    if not -n <= p <= hi:
        raise b.fail(f"position {p} is out of range for a sequence of {n} tensors")
    return p + n if p < 0 else p


@onnx_op("SequenceConstruct")
def lower_sequence_construct(b, *xs):
    return OnnxSequence(xs, _elem(xs[0]) if xs else 0)


@onnx_op("SequenceEmpty")
def lower_sequence_empty(b):
    return OnnxSequence([], int(b.attr("dtype", 1)))


@onnx_op("SequenceAt")
def lower_sequence_at(b, seq, pos):
    seq = _seq(b, seq)
    return seq[_position(b, seq, pos)]


@onnx_op("SequenceInsert")
def lower_sequence_insert(b, seq, x, pos=None):
    seq = _seq(b, seq)
    items = list(seq)
    items.insert(len(items) if pos is None else _position(b, seq, pos, insert=True), x)
    return OnnxSequence(items, seq.elem_type or _elem(x))


@onnx_op("SequenceErase")
def lower_sequence_erase(b, seq, pos=None):
    seq = _seq(b, seq)
    if not seq:
        raise b.fail("erasing from an empty sequence")
    items = list(seq)
    del items[len(items) - 1 if pos is None else _position(b, seq, pos)]
    return OnnxSequence(items, seq.elem_type)


@onnx_op("SequenceLength")
def lower_sequence_length(b, seq):
    return torch.tensor(len(_seq(b, seq)), dtype=torch.int64)


@onnx_op("SplitToSequence")
def lower_split_to_sequence(b, x, split=None):
    axis = norm_axis(int(b.attr("axis", 0)), rank_of(x))
    extent = shape_of(x)[axis]
    if split is None:
        sizes, keep = [1] * extent, bool(b.attr("keepdims", 1))
    else:
        s = b.const(split, "split")
        if s.dim() == 0:
            step = int(s)
            if step <= 0:
                raise b.fail(f"split {step} must be positive")
            sizes = [step] * (extent // step) + ([extent % step] if extent % step else [])
        else:
            sizes = [int(v) for v in s.tolist()]
            if sum(sizes) != extent or any(v < 0 for v in sizes):
                raise b.fail(f"split sizes {sizes} do not add up to the {extent} elements of axis {axis}")
        keep = True
    items, start = [], 0
    for n in sizes:
        part = b.call("aten.slice.Tensor", x, axis, start, start + n)
        if not keep:
            shape = list(shape_of(part))
            del shape[axis]
            part = b.reshape(part, shape)
        items.append(part)
        start += n
    return OnnxSequence(items, _elem(x))


@onnx_op("ConcatFromSequence")
def lower_concat_from_sequence(b, seq):
    seq = _seq(b, seq)
    if not seq:
        raise b.fail("concatenating an empty sequence")
    rank = rank_of(seq[0])
    if int(b.attr("new_axis", 0)):
        return b.call("aten.stack.default", list(seq), norm_axis(int(b.attr("axis")), rank + 1))
    return b.call("aten.cat.default", list(seq), norm_axis(int(b.attr("axis")), rank))


@onnx_op("SequenceMap")
def lower_sequence_map(b, seq, *extra):
    from memplan.frontend.onnx_control import _body, lower_subgraph
    from memplan.frontend.onnx_loops import inner_scope
    graph = _body(b, "body")
    seq = _seq(b, seq)
    seqs = [seq] + [e for e in extra if isinstance(e, OnnxSequence)]
    if any(len(s) != len(seq) for s in seqs):
        raise b.fail(f"its sequences differ in length ({[len(s) for s in seqs]})")
    outs = [[] for _ in graph.output]
    for i in range(len(seq)):
        args = [seq[i]] + [e[i] if isinstance(e, OnnxSequence) else e for e in extra]
        with inner_scope(b.importer):
            results = lower_subgraph(b, graph, args)
        for j, r in enumerate(results):
            outs[j].append(r)
    return tuple(OnnxSequence(o, _elem(o[0]) if o else 0) for o in outs)


# ---------------------------------------------------------------- optionals
@onnx_op("Optional")
def lower_optional(b, x=None):
    if x is not None:
        return x
    t = b.attr("type")
    kind = "sequence" if t is not None and t.HasField("sequence_type") else "tensor"
    return EmptyOptional(kind)


@onnx_op("OptionalHasElement")
def lower_optional_has_element(b, x=None):
    return torch.tensor(x is not None and not isinstance(x, EmptyOptional))


@onnx_op("OptionalGetElement")
def lower_optional_get_element(b, x):
    if isinstance(x, EmptyOptional):
        raise b.fail("the optional holds nothing")
    return x


__all__ = ["OnnxSequence", "EmptyOptional", "is_tensor_like", "is_const"]
