"""Tensor types of the IR: a dtype and a shape whose dims are ints or sympy expressions."""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
import operator

import sympy
import torch

Dim = int | sympy.Expr

# short IR name -> torch dtype; the IR text uses the short names.
DTYPES: dict[str, torch.dtype] = {
    "f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
    "i64": torch.int64, "i32": torch.int32, "i16": torch.int16, "i8": torch.int8,
    "u8": torch.uint8, "u16": torch.uint16, "u32": torch.uint32, "u64": torch.uint64,
    "bool": torch.bool, "c64": torch.complex64, "c128": torch.complex128,
    # 8-bit floats (ONNX FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ, FLOAT8E8M0)
    "f8e4m3": torch.float8_e4m3fn, "f8e4m3fnuz": torch.float8_e4m3fnuz, "f8e5m2": torch.float8_e5m2,
    "f8e5m2fnuz": torch.float8_e5m2fnuz, "f8e8m0": torch.float8_e8m0fnu,
}
_SHORT = {dt: name for name, dt in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Short IR name of a torch dtype: ``torch.float32 -> 'f32'``."""
    try:
        return _SHORT[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} has no memplan IR name; supported: {', '.join(DTYPES)}") from None


def to_torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a short IR dtype name."""
    return DTYPES[name]


def itemsize(name: str) -> int:
    """Bytes per element of an IR dtype."""
    return DTYPES[name].itemsize


def as_dim(d) -> Dim:
    """Normalise a dim: python/sympy integers become ``int``, other sympy expressions stay."""
    if isinstance(d, bool):
        raise TypeError(f"bad dim {d!r}")
    if isinstance(d, int):
        return d
    if isinstance(d, sympy.Basic):
        expr = sympy.sympify(d)
        return int(expr) if expr.is_Integer else expr
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return int(expr) if expr.is_Integer else expr
    return int(d)


@dataclass(frozen=True)
class TensorType:
    """dtype (short IR name), shape (tuple of dims) and memory space.

    ``space`` names the memory tier the value lives in (``"dram"``, ``"hbm"``, ...) once the
    planner has placed it; ``""`` before placement. Printed ``f32[2, 3]@dram``.
    """

    dtype: str
    shape: tuple[Dim, ...]
    space: str = ""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise TypeError(f"unknown dtype {self.dtype!r}; supported: {', '.join(DTYPES)}")
        object.__setattr__(self, "shape", tuple(as_dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dim is a plain int."""
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> Dim:
        return as_dim(reduce(operator.mul, self.shape, 1))

    @property
    def nbytes(self) -> Dim:
        """Bytes of a contiguous tensor of this type (a sympy expression if dims are symbolic)."""
        return as_dim(self.numel * itemsize(self.dtype))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            if isinstance(d, sympy.Expr):
                out |= d.free_symbols
        return out

    def concrete(self, bindings: dict[str, int] | None = None) -> "TensorType":
        """This type with every symbol replaced by its value in ``bindings``."""
        if self.is_static:
            return self
        subs = {sympy.Symbol(k, integer=True, positive=True): v for k, v in (bindings or {}).items()}
        return TensorType(self.dtype, tuple(as_dim(sympy.sympify(d).subs(subs)) if not isinstance(d, int) else d
                                            for d in self.shape), self.space)

    def with_space(self, space: str) -> "TensorType":
        """This type in memory space ``space``."""
        return TensorType(self.dtype, self.shape, space)

    def same_tensor(self, other: "TensorType") -> bool:
        """Same dtype and shape (the memory space may differ)."""
        return self.dtype == other.dtype and self.shape == other.shape

    def __str__(self) -> str:
        text = f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"
        return f"{text}@{self.space}" if self.space else text

    @staticmethod
    def of(t: torch.Tensor) -> "TensorType":
        """The IR type of a tensor (real, meta or fake)."""
        return TensorType(dtype_name(t.dtype), tuple(as_dim(s) for s in t.shape))


def is_dense(shape, strides) -> bool:
    """True when ``strides`` lay ``shape`` out on exactly ``numel`` elements (a permuted contiguous layout)."""
    dims = sorted((s, d) for d, s in zip(shape, strides) if d != 1)
    expected = 1
    for s, d in dims:
        if s != expected:
            return False
        expected *= d
    return True


def sym(name: str) -> sympy.Symbol:
    """The sympy symbol the IR uses for a named dynamic dim (integer, positive)."""
    return sympy.Symbol(name, integer=True, positive=True)


def eval_bytes(n: Dim, bindings: dict[str, int] | None = None, default: int = 1) -> int:
    """An integer byte count from a possibly symbolic one: symbols take their value in
    ``bindings`` or ``default``."""
    if isinstance(n, int):
        return n
    subs = {s: (bindings or {}).get(s.name, default) for s in n.free_symbols}
    return int(n.subs(subs))
