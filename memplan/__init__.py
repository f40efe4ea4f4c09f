"""memplan: memory-aware execution planning for neural networks.

>>> import torch, memplan
>>> cm = memplan.compile(torch.nn.Linear(4, 2), (torch.randn(3, 4),), target="cpu")
>>> cm(torch.randn(3, 4)).shape
torch.Size([3, 2])
"""
from memplan.errors import (BudgetFormatError, BudgetInfeasibleError, InputMismatchError, MemplanError,
                            ModelLoadError, TargetError, UnsupportedOpError)
from memplan.plan import Plan
from memplan.target import PRESETS, HardwareSpec, MemoryTier, load_target
from memplan.units import format_bytes, parse_bytes

__version__ = "0.1.0"

# compile, lower and CompiledModule load torch and every pass: they are imported on first use, so that
# what needs none of that (`memplan alloc`, plan files, targets) starts at once
_LAZY = {"compile": "memplan.api", "lower": "memplan.api", "CompiledModule": "memplan.api",
         "backend": "memplan.training"}


def __getattr__(name):
    if name in _LAZY:
        if _LAZY[name] == "memplan.api":
            from memplan import api as module
        else:
            from memplan import training as module
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memplan' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = ["compile", "lower", "CompiledModule", "backend", "Plan", "HardwareSpec", "MemoryTier", "PRESETS",
           "load_target", "parse_bytes", "format_bytes", "MemplanError", "BudgetFormatError",
           "BudgetInfeasibleError", "InputMismatchError", "ModelLoadError", "TargetError",
           "UnsupportedOpError"]
