"""Ops the planner writes into the IR: ``memplan.copy`` moves a value between memory tiers.

``%y: f32[64]@disk = memplan.copy(%x, src='dram', dst='disk')`` is an explicit
transfer (a prefetch when ``dst`` is the faster tier, an evict when it is the
slower one): its input's type names the source tier, its output's the
destination tier, and :func:`~memplan.analysis.check.verify_plan` checks that
they agree with ``src``/``dst``. Every other node reads and writes one tier.
"""
from __future__ import annotations

from memplan.ir.opdef import OpKind, register_op

COPY = "memplan.copy"


def _copy(x, *, src: str, dst: str):
    """A fresh copy of ``x`` (the reference semantics: tiers are all host memory to torch)."""
    return x.clone()


def _copy_out(x, *, src: str, dst: str, out):
    """``x`` copied into ``out``, a buffer planned in tier ``dst``."""
    return out.copy_(x)


_copy.out = _copy_out
register_op(COPY, OpKind.INJECTIVE, _copy, out_args=["out"])
