"""Running Triton kernels on a machine without a GPU: Triton's interpreter.

Triton 3.9 decides per function, when ``@triton.jit`` runs, whether it is compiled for a GPU or
interpreted (``TRITON_INTERPRET=1``, read through ``triton.knobs`` at decoration time). The emitted
kernel module sets the variable itself before its kernels are defined when ``torch.cuda`` is not
available, and never touches it when a GPU is present.

Triton's own library functions (``tl.sum``, ``tl.max``, ``tl.sigmoid``, ...) are decorated when
``triton.language`` is first imported. In a process that imported Triton before the variable was
set (``torch.export`` imports it), they are GPU functions, which an interpreted kernel cannot call.
:func:`use_interpreter` gives each of them its interpreted form, once, as importing Triton with the
variable set would have: the same function objects wrapped, shared by every name they go by (the
interpreter recognises its fast reductions by identity).
"""
from __future__ import annotations

import gc
import os
import sys

import torch

from memplan.backends import pytorch_ops  # noqa: F401  (registers the memplan.* kernels memplan_ops reaches)
from memplan.backends.pytorch import _CustomOps, fresh  # noqa: F401  (fresh: re-exported for launcher files)
from memplan.ir.ops import _CUSTOM

# ``memplan_ops.<name>`` in emitted code: the registered implementation of ``memplan.<name>``
memplan_ops = _CustomOps(_CUSTOM)


def needs_interpreter() -> bool:
    """True when Triton kernels must be interpreted here: no GPU (``torch.cuda`` is not available)."""
    return not torch.cuda.is_available()


def use_interpreter() -> bool:
    """Without a GPU: set ``TRITON_INTERPRET=1`` (unless the user set it) and make Triton's library
    functions interpreted if Triton was imported before. Returns whether kernels will be interpreted.
    With a GPU present it changes nothing and returns False."""
    if not needs_interpreter():
        return False
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] not in ("1", "true", "True", "on"):
        return False  # the user said no: kernels will be compiled (and need a GPU)
    if "triton" in sys.modules:
        _interpret_library()
    return True


def _interpret_library() -> None:
    """Wrap every ``@triton.jit`` function of ``triton.language`` that was compiled-for-GPU at import
    into an interpreted function (idempotent)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    modules = [m for m in (getattr(tl, "standard", None), getattr(tl, "random", None), getattr(tl, "math", None), tl)
               if m is not None]
    for module in modules:
        for name, obj in list(vars(module).items()):
            if type(obj) is JITFunction:  # exactly: an InterpretedFunction is already what we want
                if id(obj) not in _WRAPPED:
                    _WRAPPED[id(obj)] = (obj, InterpretedFunction(obj.fn))
                setattr(module, name, _WRAPPED[id(obj)][1])


class CollectingLaunch:
    """An interpreted kernel whose launches free their arguments' references when they return.

    Triton 3.9's interpreter keeps the storages of a launch's tensor arguments in a reference cycle
    (a recursive closure in ``GridExecutor._init_args_hst``), so a tensor the launcher deletes
    after the launch is freed only at the next garbage collection: the run would hold more than the
    plan says. Each launch runs with the collector paused and then collects the youngest generation,
    where that cycle is (a few objects: cheap, unlike a full collection)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            paused = gc.isenabled()
            gc.disable()
            try:
                return launch(*args, **kwargs)
            finally:
                if paused:
                    gc.enable()
                gc.collect(0)
        return run


# id of a library JITFunction -> (it, kept alive so the id stays its own; its interpreted form)
_WRAPPED: dict[int, tuple[object, object]] = {}
