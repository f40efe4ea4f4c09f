"""The core of the op registry: op kinds, :class:`OpDef`, and the table of ``memplan.*`` ops.

:mod:`memplan.backends.pytorch_ops` (the PyTorch backend's kernel dialect), :mod:`memplan.ir.planning_ops` and :mod:`memplan.ir.regions` register the ``memplan.*`` ops here with
:func:`register_op`; :mod:`memplan.ir.ops` (aten ops, :func:`~memplan.ir.ops.lookup`)
reads the table. Both build on this module, so neither imports the other's
half of the registry back. It imports nothing from memplan, so any module
may import it: its functions take IR nodes and values
(:mod:`memplan.ir.graph`) and only read their types.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable


class OpKind(str, Enum):
    ELEMENTWISE = "elementwise"
    BROADCAST = "broadcast"
    INJECTIVE = "injective"
    REDUCTION = "reduction"
    OPAQUE = "opaque"


@dataclass(frozen=True)
class OpDef:
    """What memplan knows of one op.

    ``view`` ops return an alias of their first input (no bytes of their own);
    ``flops`` maps a node to its floating-point operation count; ``infer``, if
    given, maps a node to its output types (a list of ``TensorType``) instead of
    running ``impl`` on meta tensors.
    """

    name: str
    kind: OpKind
    impl: Callable
    view: bool = False
    flops: Callable | None = None  # (node) -> int
    infer: Callable | None = None  # (node) -> list[TensorType]
    out_args: list[str] | None = None  # custom ops: keyword names of ``impl.out``'s outputs
    inplace_args: tuple[int, ...] = ()  # argument positions its kernel may write its result over

    def flop_count(self, node) -> int:
        if self.flops is not None:
            return int(self.flops(node))
        if self.kind in (OpKind.INJECTIVE,) or self.view:
            return 0
        if self.kind is OpKind.REDUCTION:
            return sum(_numel(v) for v in node.inputs[:1])
        return sum(_numel(v) for v in node.outputs)

    def bytes_moved(self, node) -> int:
        """Bytes read plus bytes written (0 for views)."""
        if self.view:
            return 0
        return sum(_nbytes(v) for v in node.inputs) + sum(_nbytes(v) for v in node.outputs)


def _numel(v) -> int:  # v: an IR Value
    n = v.type.numel
    return n if isinstance(n, int) else 0


def _nbytes(v) -> int:
    n = v.type.nbytes
    return n if isinstance(n, int) else 0


def conv_flops(node) -> int:
    """Flops of a convolution node (``inputs[1]`` is the weight): 2 per multiply-add."""
    weight = node.inputs[1].type
    per_out = math.prod(d for d in weight.shape[1:] if isinstance(d, int))
    return 2 * _numel(node.outputs[0]) * per_out


# ---------------------------------------------------------------- memplan.* ops
_CUSTOM: dict[str, OpDef] = {}


def register_op(name: str, kind: OpKind, impl: Callable, *, view: bool = False,
                flops: Callable | None = None, infer: Callable | None = None,
                out_args: list[str] | None = None, inplace_args: tuple[int, ...] = ()) -> OpDef:
    """Register a ``memplan.*`` op with a torch reference implementation. With ``out_args``,
    ``impl.out(*args, **{name: tensor})`` writes the results into given tensors (its ``out=`` form)."""
    if not name.startswith("memplan."):
        raise ValueError(f"custom ops live in the memplan namespace, got {name!r}")
    if out_args and not callable(getattr(impl, "out", None)):
        raise ValueError(f"{name}: out_args given but the implementation has no .out")
    opdef = OpDef(name, kind, impl, view, flops, infer, out_args, tuple(inplace_args))
    _CUSTOM[name] = opdef
    return opdef


__all__ = ["OpKind", "OpDef", "register_op", "conv_flops"]
