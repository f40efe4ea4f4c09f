"""Which Python binding the emitted code calls for an aten overload.

``torch.ops.aten.mul.out(a, b, out=c)`` takes the boxed dispatcher path: its
arguments are matched against the schema on every call (about 3.4 µs here),
while ``torch.mul(a, b, out=c)`` goes through the generated unboxed binding
(about 1.7 µs); ``aten.view.default(x, s)`` against ``x.view(s)`` likewise. A
small transformer runs a few hundred steps of a few µs each, so that overhead
alone is several percent of its run time.

So the backend writes ``torch.<name>(...)`` (or the method ``x.<name>(...)``)
wherever that provably reaches the planned overload: :func:`fast_binding`
makes the call once on meta tensors under a dispatch mode that records which
overloads it reaches, and keeps the short form only when that is exactly the
planned overload, once. A binding that is a Python composite, decomposes, or
picks another overload keeps the explicit ``aten.<name>.<overload>`` form.

>>> from memplan.ir.graph import Graph
>>> from memplan.ir.types import TensorType
>>> g = Graph("g")
>>> x = g.add_input("x", TensorType("f32", (2, 3)))
>>> (y,) = g.add_node("aten.mul.Tensor", (x, x), {}, [TensorType("f32", (2, 3))])
>>> fast_binding(y.producer, "aten.mul.out", {"out": y})
'torch.mul'
>>> (v,) = g.add_node("aten.view.default", (y, [6]), {}, [TensorType("f32", (6,))])
>>> fast_binding(v.producer, "aten.view.default")
'.view'
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memplan.ir.graph import Node, Value, map_values
from memplan.ir.ops import resolve_aten, to_meta

_CACHE: dict[tuple, str | None] = {}


class _OverloadRecorder(TorchDispatchMode):
    """Records every aten overload a call reaches."""

    def __init__(self):
        super().__init__()
        self.reached: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reached.append(func)
        return func(*args, **(kwargs or {}))


def _signature(obj):
    """A hashable key of an argument structure: values by dtype and shape, the rest as they are."""
    if isinstance(obj, Value):
        return ("%", obj.type.dtype, tuple(obj.type.shape))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, *(_signature(x) for x in obj))
    if isinstance(obj, dict):
        return tuple((k, _signature(v)) for k, v in obj.items())
    return (type(obj).__name__, repr(obj))


def fast_binding(node: Node, overload: str, outs: dict[str, Value] | None = None) -> str | None:
    """``"torch.<name>"`` or ``".<name>"`` (a method of the first argument) when calling it with
    ``node``'s arguments, plus the ``outs`` keyword arguments, dispatches to exactly the aten
    overload ``overload`` (``"aten.<name>.<overload>"``) and nothing else; else None."""
    parts = overload.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        return None
    outs = outs or {}
    key = (overload, _signature(node.args), _signature(node.kwargs), tuple(outs))
    if key not in _CACHE:
        _CACHE[key] = _probe(node, overload, parts[1], outs)
    return _CACHE[key]


def _probe(node: Node, overload: str, name: str, outs: dict[str, Value]) -> str | None:
    try:
        expected = resolve_aten(overload)
        args = map_values(node.args, to_meta)
        kwargs = map_values(node.kwargs, to_meta) | {k: to_meta(v) for k, v in outs.items()}
    except Exception:  # symbolic shapes, unknown overload: keep the explicit form
        return None
    if "device" in kwargs:
        kwargs["device"] = torch.device("meta")
    candidates = []
    function = getattr(torch._C._VariableFunctions, name, None)
    if function is not None and getattr(torch, name, None) is function:
        candidates.append((f"torch.{name}", lambda: function(*args, **kwargs)))
    method = getattr(torch._C.TensorBase, name, None)
    if method is not None and args and isinstance(args[0], torch.Tensor) and isinstance(node.args[0], Value):
        candidates.append((f".{name}", lambda: getattr(args[0], name)(*args[1:], **kwargs)))
    for binding, call in candidates:
        recorder = _OverloadRecorder()
        try:
            with recorder:
                call()
        except Exception:
            continue
        if recorder.reached == [expected]:
            return binding
    return None


__all__ = ["fast_binding"]
