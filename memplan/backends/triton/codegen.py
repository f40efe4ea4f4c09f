"""What the Triton kernel templates share: the kernel record, kernel-local names, dtypes, literals
and index arithmetic.

A template turns one IR node into a :class:`Kernel`: the text of one ``@triton.jit`` function
(specialised to the node's static shapes, reading and writing through strides passed at launch)
and the arguments of its launch, which the launcher renders with its own variable names.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

from memplan.backends.pytorch import _RESERVED, _Names, comment_text, identifier
from memplan.ir.graph import Node, Value
from memplan.ir.printer import format_call

# Triton's element types of the IR dtypes it can load and store (complex and wide unsigned: none)
TL_DTYPES = {"f64": "tl.float64", "f32": "tl.float32", "f16": "tl.float16", "bf16": "tl.bfloat16",
             "i64": "tl.int64", "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8",
             "bool": "tl.int1"}
FLOATS = frozenset({"f64", "f32", "f16", "bf16"})

# Block sizes. Elementwise kernels take BLOCK elements per program; row reductions hold a whole row
# (a power of two >= its length) and ROWS rows per program, so one program holds about ROW_TILE
# elements. Rows longer than MAX_ROW keep the aten kernel (a looped reduction is not written yet).
POINTWISE_BLOCK = 1024
ROW_TILE = 4096
MAX_ROW = 32768

# helper @triton.jit functions of the kernel module: a value of a kernel never takes their names
HELPERS = frozenset({"_tanh"})
# names a kernel body binds besides its values (index arithmetic, masks, block sizes)
_KERNEL_WORDS = frozenset({"tl", "triton", "pid", "offsets", "mask", "n_elements", "BLOCK", "ROWS", "rows", "cols",
                           "row_mask", "col_mask", "n_rows", "n_cols"})


class NotTranslatable(Exception):
    """A node the Triton templates do not cover; the message is the reason (it keeps its aten or
    per-trip PyTorch code)."""


class KernelNames(_Names):
    """Kernel-local identifiers: sanitised, collision free, never a Triton, helper or Python name.
    ``canonical``: name values by order of appearance (``v0``, ``v1``, ...), not by their IR names, so
    that the same computation on other values gives the same text (kernels are shared by that)."""

    def __init__(self, canonical: bool = False):
        super().__init__()
        self.used |= _KERNEL_WORDS | HELPERS
        self.canonical = canonical

    def __call__(self, v: Value) -> str:
        if v.name not in self.map:
            base = f"v{len(self.map)}" if self.canonical else identifier(v.name)
            if base in _RESERVED or base in _KERNEL_WORDS or base in HELPERS or base.startswith("__"):
                base = "v_" + base
            self.map[v.name] = self.unique(base)
        return self.map[v.name]


@dataclass(frozen=True)
class Arg:
    """One launch argument: ``kind`` ``tensor`` (the value's tensor: a pointer in the kernel),
    ``stride`` (its stride along ``dim``), ``int`` (the number ``n``) or ``const`` (``name=n``, a
    ``tl.constexpr``)."""

    kind: str
    value: Value | None = None
    dim: int = 0
    n: int = 0
    name: str = ""

    def render(self, names) -> str:
        """The argument as launcher source, value variables named by ``names``."""
        if self.kind == "tensor":
            return names(self.value)
        if self.kind == "stride":
            return f"{names(self.value)}.stride({self.dim})"
        if self.kind == "const":
            return f"{self.name}={self.n}"
        return str(self.n)


class KernelArgs:
    """The tensor parameters of a kernel being written, each with its launch argument: a pointer per
    tensor, a stride per dim it is addressed along. Templates take their tensors through it."""

    def __init__(self, names: KernelNames):
        self.names = names
        self.pointers: list[str] = []
        self.strides: list[str] = []
        self.tensors: list[Arg] = []
        self.stride_args: list[Arg] = []

    def pointer(self, v: Value, role: str) -> str:
        """Take ``v`` as a pointer parameter named for its ``role``; its name."""
        name = self.names.unique(f"{role}_ptr")
        self.pointers.append(name)
        self.tensors.append(Arg("tensor", v))
        return name

    def address(self, v: Value, role: str, terms) -> str:
        """The addresses of a block of ``v``: ``terms`` holds one ``(index expression, dim of v)``
        per dim it is addressed along, or ``(index, dim of v, label)`` to name the stride parameter
        after another dim (the iteration dim it stands for); no terms: the pointer alone."""
        pointer = self.pointer(v, role)
        parts = []
        for term in terms:
            index, dim = term[0], term[1]
            stride = self.names.unique(f"{role}_stride{term[2] if len(term) > 2 else dim}")
            self.strides.append(stride)
            self.stride_args.append(Arg("stride", v, dim))
            parts.append((index, stride))
        return address(pointer, parts)


@dataclass
class Kernel:
    """One ``@triton.jit`` kernel for one IR node: its parameters (in groups: pointers, strides, sizes,
    block sizes) and statements, its grid (``programs``) and launch arguments (one group per
    parameter group), a one-line ``summary``, the comment lines naming the IR it covers, and the
    helper functions it calls. Nodes whose kernels have the same parameters and statements share
    one function (``name``)."""

    name: str
    node: Node
    params: list[str]
    body: list[str]
    programs: int
    args: list[list[Arg]]
    summary: str
    covers: list[str]
    helpers: set[str] = field(default_factory=set)
    # (an index tensor the kernel gathers by, the exclusive bound of its values): checked before the
    # launch, so an index out of range is an IndexError as in eager (the kernel's loads are masked
    # to the table anyway: it never reads outside it)
    index_checks: list[tuple[Value, int]] = field(default_factory=list)

    @property
    def key(self) -> tuple:
        """What makes two kernels the same function: their parameters and statements."""
        return tuple(self.params), tuple(self.body)

    def code(self) -> list[str]:
        """The decorator, the signature (one parameter group per line) and the indented statements."""
        head = f"def {self.name}("
        groups = [g for g in self.params if g]
        signature = head + (",\n" + " " * len(head)).join(groups) + "):"
        return ["@triton.jit", *signature.split("\n"), *("    " + line for line in self.body)]

    def launch(self, names, comment: str) -> list[str]:
        """The launcher lines that launch it over its grid (``comment`` on the first)."""
        lines = []
        for v, bound in self.index_checks:
            x = names(v)
            message = comment_text(f"index out of range: the indices %{v.name} of node {self.node.name} must lie "
                                   f"in [0, {bound})")
            lines += [f"if {x}.numel() and not (0 <= int({x}.min()) and int({x}.max()) < {bound}):",
                      f"    raise IndexError({message!r})"]
        lines.append(f"{self.name}[({self.programs},)](  {comment.lstrip()}")
        groups = [", ".join(a.render(names) for a in group) for group in self.args if group]
        for i, text in enumerate(groups):
            lines.append(f"    {text}{')' if i == len(groups) - 1 else ','}")
        return lines


def literal(x) -> str:
    """A Python scalar as Triton source (``float("inf")`` for infinities, as Triton's tutorials do)."""
    if isinstance(x, bool) or x is None:
        return repr(x)
    if isinstance(x, int):
        return repr(x)
    if isinstance(x, float):
        if math.isnan(x):
            return 'float("nan")'
        if math.isinf(x):
            return 'float("inf")' if x > 0 else '-float("inf")'
        return repr(x)
    raise NotTranslatable(f"argument {comment_text(repr(x))[:40]} is not a scalar a kernel can hold")


def tl_dtype(dtype: str) -> str:
    """``tl.float32`` for ``f32``; :class:`NotTranslatable` for dtypes Triton cannot load."""
    if dtype not in TL_DTYPES:
        raise NotTranslatable(f"dtype {dtype} has no Triton element type here")
    return TL_DTYPES[dtype]


def next_power_of_2(n: int) -> int:
    """The least power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def comment_lines(text: str, width: int = 110, limit: int = 4) -> list[str]:
    """``text`` (from a user's file) as at most ``limit`` comment texts of about ``width`` characters,
    broken at spaces where it can be, each made safe by :func:`comment_text` (the last ends in
    ``...`` where the text was cut)."""
    chunks = textwrap.wrap(text, width, break_on_hyphens=False) or [""]
    if len(chunks) > limit:
        chunks = chunks[:limit]
        chunks[-1] = chunks[-1][: width - 3] + "..."
    return [comment_text(c) for c in chunks]


def node_comment(node: Node) -> list[str]:
    """``%y = aten.op(%x, 2.0)  (module)``: one IR node as comment lines (sanitised, wrapped)."""
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    where = f"  ({node.source})" if node.source else ""
    first, *rest = comment_lines(f"{outs} = {format_call(node)}{where}")
    return [first] + ["    " + line for line in rest]


def decompose(index: str, dims: list[int], sizes: dict[int, str], idx: dict[int, str]) -> list[str]:
    """Lines splitting the linear ``index`` (row-major over ``dims``, sizes named by ``sizes``) into
    one index variable per dim (named by ``idx``). Over one dim the index is that dim's own: ``idx``
    is updated to name ``index`` itself, and no line is needed."""
    if len(dims) == 1:
        idx[dims[0]] = index
        return []
    lines = []
    for pos in range(len(dims) - 1, -1, -1):
        d = dims[pos]
        inner = [sizes[e] for e in dims[pos + 1:]]
        quotient = index if not inner else f"{index} // {inner[0]}" if len(inner) == 1 else \
            f"{index} // ({' * '.join(inner)})"
        if pos == 0:
            lines.append(f"{idx[d]} = {quotient}")
        else:
            lines.append(f"{idx[d]} = {f'({quotient})' if inner else quotient} % {sizes[d]}")
    return lines


def address(pointer: str, terms: list[tuple[str, str]]) -> str:
    """``ptr + i0 * s0 + i1 * s1``: the addresses of a block, one (index, stride) term per dim."""
    return " + ".join([pointer] + [f"{i} * {s}" for i, s in terms])


def aligned_dims(v: Value, shape: tuple[int, ...], dims: list[int]) -> dict[int, int]:
    """For each of ``dims`` (dims of ``shape``) along which ``v`` spans (broadcasting aligns trailing
    dims; a dim of size 1 or missing broadcasts): ``{dim of shape: dim of v}``; raises
    :class:`NotTranslatable` if ``v`` does not broadcast to ``shape``."""
    rank, vshape = len(shape), [int(d) for d in v.type.shape]
    lead = rank - len(vshape)
    if lead < 0:
        raise NotTranslatable(f"%{comment_text(v.name)} has more dims than the iteration space {list(shape)}")
    for k, extent in enumerate(vshape):
        if extent not in (1, shape[k + lead]):
            raise NotTranslatable(f"%{comment_text(v.name)} of shape {vshape} does not broadcast to {list(shape)}")
    return {d: d - lead for d in dims if d - lead >= 0 and vshape[d - lead] == shape[d]}
