"""memplan: memory-aware execution planning for neural networks.

>>> import torch, memplan
>>> cm = memplan.compile(torch.nn.Linear(4, 2), (torch.randn(3, 4),), target="cpu")
>>> cm(torch.randn(3, 4)).shape
torch.Size([3, 2])
"""
from memplan.api import CompiledModule, compile, lower
from memplan.errors import (BudgetFormatError, BudgetInfeasibleError, InputMismatchError, MemplanError,
                            ModelLoadError, TargetError, UnsupportedOpError)
from memplan.plan import Plan
from memplan.target import PRESETS, HardwareSpec, MemoryTier, load_target
from memplan.units import format_bytes, parse_bytes

__version__ = "0.1.0"
__all__ = ["compile", "lower", "CompiledModule", "Plan", "HardwareSpec", "MemoryTier", "PRESETS",
           "load_target", "parse_bytes", "format_bytes", "MemplanError", "BudgetFormatError",
           "BudgetInfeasibleError", "InputMismatchError", "ModelLoadError", "TargetError",
           "UnsupportedOpError"]
