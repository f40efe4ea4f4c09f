"""``memplan.*`` ops: semantics aten lacks (mostly ONNX ops with no aten twin).

Each op registers a torch reference implementation with
:func:`memplan.ir.ops.register_op`; the PyTorch backend calls it as
``memplan_ops.<name>(...)`` and shape inference runs it on meta tensors.
"""
from __future__ import annotations

from memplan.ir.ops import OpKind, register_op  # noqa: F401
