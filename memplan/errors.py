"""Typed errors raised by memplan.

Every error names the thing at fault (file, op, node, source location, the
limit and the value that broke it) in its message, so the CLI can print it as
one line and Python callers can catch a precise type.
"""
from __future__ import annotations


class MemplanError(Exception):
    """Base class of every error memplan raises on purpose."""


class ModelLoadError(MemplanError):
    """A model file is missing, unreadable, truncated or not a valid model."""


class UnsupportedOpError(MemplanError):
    """An op of the source model has no lowering in memplan.

    Attributes:
        op: the source op name (``aten.nonzero.default``, ``onnx::Loop``).
        node: the source node name, when known.
    """

    def __init__(self, message: str, *, op: str = "", node: str = ""):
        super().__init__(message)
        self.op = op
        self.node = node


class InputMismatchError(MemplanError):
    """An example or runtime input does not match the graph's signature."""


class TargetError(MemplanError):
    """An unknown target name, or a malformed hardware spec file."""


class BudgetFormatError(MemplanError):
    """A memory budget that cannot be read as a number of bytes."""


class BudgetInfeasibleError(MemplanError):
    """No plan fits the memory budget.

    Attributes:
        budget: the budget in bytes.
        best_peak: the smallest peak (bytes) memplan could reach.
        lower_bound: the proven lower bound on the peak (bytes).
        live_at_peak: ``[(value name, bytes, source op), ...]`` at the peak.
    """

    def __init__(self, message: str, *, budget: int, best_peak: int,
                 lower_bound: int, live_at_peak: list):
        super().__init__(message)
        self.budget = budget
        self.best_peak = best_peak
        self.lower_bound = lower_bound
        self.live_at_peak = live_at_peak


class IRVerificationError(MemplanError):
    """The IR breaks an invariant (types, shapes, SSA, acyclicity)."""


class IRParseError(MemplanError):
    """The IR text cannot be parsed; the message gives line and column."""


class PlanVerificationError(MemplanError):
    """A plan violates a dependency, overlaps buffers or exceeds a capacity."""


class PlanFormatError(MemplanError):
    """A plan file (``.plan.json``) that is not a well-formed memplan plan; the message names the
    file and the field at fault."""


class OutputPathError(MemplanError):
    """An output path that cannot be written (``-o`` names a file where a folder is needed, ...)."""
