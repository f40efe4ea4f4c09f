"""The literal and expression grammar of the IR text (dims, call arguments, attribute values).

:class:`Expressions` is the half of :class:`memplan.ir.parser._Line` that reads expressions:
``+ - * / // **`` and ``floor / ceiling / Max / Min / Mod`` on ints and symbols (dims, int
arguments), string and float literals, lists and tuples, ``%values``, ``torch.<constant>`` and
``torch.device(...)``, plus the plain literals of plan annotations (byte counts, strides,
``attr`` values). It relies on the token methods of the line (``peek``, ``next``, ``accept``,
``expect``, ``string``, ``nest``, ``fail``, ``fail_here``) and its state (``depth``, ``terms``,
``symbolic_ops``, ``scope``, ``reader``). Nothing is ever evaluated; every size is bounded by the
``MAX_*`` constants below, which :mod:`memplan.ir.parser` re-exports.
"""
from __future__ import annotations

import ast
import math
import operator
import re
import warnings

import sympy
import torch

from memplan.ir.graph import Value
from memplan.ir.types import sym
from memplan.units import MAX_BYTES

MAX_NESTING = 48                 # brackets, unary signs and powers inside one line
MAX_EXPR_TERMS = 256             # operators and function calls in one dim or argument
MAX_SYMBOLIC_OPS_PER_LINE = 4096 # sympy operations one line may ask for
MAX_SYMBOLIC_OPS = 200_000       # ... and a whole file
MAX_LIST_ITEMS = 2**16           # items of one list or tuple argument
MAX_INT_DIGITS = 20              # digits of an integer literal
MAX_ARG_INT = 2**64              # |an integer argument| (int64/uint64 limits appear in slices)
MAX_DIM = 2**62                  # a dim (elements along one axis)
MAX_EXPONENT = 64                # of ``**``
MAX_NUMBER_CHARS = 40            # a float literal
QUOTE_CHARS = 60                 # quoted file text in error messages is cut to this
MAX_COUNT = MAX_BYTES            # |byte counts, offsets, strides, scratch| are below it (2**62)

_DIM_FUNCTIONS = {"floor": (1, 1), "ceiling": (1, 1), "Max": (1, 8), "Min": (1, 8), "Mod": (2, 2)}
_RESERVED = {"inf", "nan", "True", "False", "None"}
_TORCH_CONSTANTS = {f"torch.{k}": v for k, v in vars(torch).items()
                    if isinstance(v, (torch.dtype, torch.layout, torch.memory_format))}
_DEVICE = re.compile(r"(cpu|meta|cuda)(:\d{1,3})?")
EOF = "eof"


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of file text for an error message, cut to ``limit`` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")



class Expressions:
    """Expressions and literals of one line (a mixin of the parser's ``_Line``)."""

    def sum(self, dims: bool):
        value = self.product(dims)
        while True:
            if self.accept("+"):
                value = self.arith("+", value, self.product(dims), dims)
            elif self.accept("-"):
                value = self.arith("-", value, self.product(dims), dims)
            else:
                return value

    def product(self, dims: bool):
        value = self.unary(dims)
        while True:
            kind, text = self.peek()
            if kind == "op" and text in ("*", "/", "//"):
                self.next()
                value = self.arith(text, value, self.unary(dims), dims)
            else:
                return value

    def unary(self, dims: bool):
        if self.peek() == ("op", "-") or self.peek() == ("op", "+"):
            _, sign = self.next()
            self.nest()
            operand = self.unary(dims)
            self.depth -= 1
            if sign == "+":
                return self.numeric(operand, "+")
            if isinstance(operand, float):
                return -operand
            return self.arith("-", 0, operand, dims)
        value = self.atom(dims)
        if self.accept("**"):
            self.nest()
            exponent = self.unary(dims)
            self.depth -= 1
            value = self.arith("**", value, exponent, dims)
        return value

    def numeric(self, v, op: str):
        if isinstance(v, bool) or not isinstance(v, (int, float, sympy.Expr)):
            self.fail(f"operator {op!r} applied to {_describe(v)}; arithmetic is on ints and dims only")
        return v

    def arith(self, op: str, a, b, dims: bool):
        """``a op b`` on ints (bounded) or sympy dims; never on lists, strings, floats or values."""
        self.terms += 1
        if self.terms > MAX_EXPR_TERMS:
            self.fail(f"expression with more than {MAX_EXPR_TERMS} terms")
        for v in (a, b):
            if isinstance(v, bool) or not isinstance(v, (int, sympy.Expr)):
                self.fail(f"operator {op!r} applied to {_describe(v)}; arithmetic is on ints and dims only")
        if op == "**":
            if not isinstance(b, int) or not 0 <= b <= MAX_EXPONENT:
                self.fail(f"exponent {quote(str(b))} is not an int in 0..{MAX_EXPONENT}")
            if isinstance(a, int) and abs(a) > 1 and abs(a).bit_length() * b > 2 * MAX_ARG_INT.bit_length():
                self.fail(f"{a}**{b} is above the integer limit {MAX_ARG_INT}")
        if op in ("/", "//") and b == 0:
            self.fail(f"division by zero in {'a dim' if dims else 'an argument'}")
        if isinstance(a, int) and isinstance(b, int):
            if op == "/":
                return self.bounded(sympy.Rational(a, b), dims)
            value = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv,
                     "**": operator.pow}[op](a, b)  # only the op asked for (0 ** -1 is not computed for 0 - -1)
            return self.bounded(value, dims)
        self.symbolic()
        try:
            value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                     "//": lambda: sympy.floor(a / b), "**": lambda: a ** b}[op]()
        except (ZeroDivisionError, ValueError, TypeError) as exc:
            self.fail(f"bad dim arithmetic ({type(exc).__name__})")
        return self.bounded(value, dims)

    def symbolic(self, weight: int = 1) -> None:
        self.symbolic_ops += weight
        self.reader.symbolic_ops += weight
        if self.symbolic_ops > MAX_SYMBOLIC_OPS_PER_LINE:
            self.fail(f"more than {MAX_SYMBOLIC_OPS_PER_LINE} symbolic operations on one line")
        if self.reader.symbolic_ops > MAX_SYMBOLIC_OPS:
            self.fail(f"more than {MAX_SYMBOLIC_OPS} symbolic operations in the file")

    def bounded(self, value, dims: bool):
        """``value`` as an int where it is one, within the limits of dims or integer arguments."""
        limit = MAX_DIM if dims else MAX_ARG_INT
        if isinstance(value, sympy.Basic):
            if not isinstance(value, sympy.Expr):
                self.fail(f"bad dim expression {quote(str(value))}")
            if not value.is_Integer:
                return value
            value = int(value)
        if abs(value) > limit:
            self.fail(f"integer above the limit {limit}")
        return value

    def finish(self, value, dims: bool):
        """A whole dim or argument: a symbolic one must be finite, with bounded constants and powers."""
        if isinstance(value, sympy.Basic):
            limit = MAX_DIM if dims else MAX_ARG_INT
            if value.has(sympy.zoo, sympy.oo, sympy.nan, -sympy.oo):
                self.fail(f"dim expression {quote(str(value))} is not finite")
            for number in value.atoms(sympy.Rational):
                if max(abs(number.p), number.q) > limit:
                    self.fail(f"a constant in a dim expression is above the limit {limit}")
            for power in value.atoms(sympy.Pow):
                if not power.exp.is_Integer or abs(int(power.exp)) > MAX_EXPONENT:
                    self.fail(f"a power in a dim expression is not an int in 0..{MAX_EXPONENT}")
        return value

    def atom(self, dims: bool):
        kind, text = self.next()
        if kind == "number":
            return self.number(text, dims)
        if kind == "op" and text == "(":
            self.nest()
            value = self.parenthesised(dims)
            self.depth -= 1
            return value
        if kind == "name":
            if self.peek() == ("op", "("):
                self.next()
                self.nest()
                value = self.call(text, dims)
                self.depth -= 1
                return value
            return self.name(text, dims)
        if dims:
            self.fail_here(f"unexpected {quote(text) if kind != EOF else 'end of the line'} in a dim; "
                           "dims are ints, names and + - * // on them")
        if kind == "string":
            return _string_literal(text, self)
        if kind == "value":
            if text[1:] not in self.scope:
                self.fail(f"use of undefined value {_value(text[1:])}")
            return self.scope[text[1:]]
        if kind == "op" and text == "[":
            self.nest()
            items = self.items("]")
            self.depth -= 1
            return items
        self.fail_here(f"unsupported argument syntax: {quote(text) if kind != EOF else 'end of the line'}")

    def number(self, text: str, dims: bool):
        if any(c in text for c in ".eE"):
            if dims:
                self.fail(f"dim {quote(text)} is not an integer")
            if len(text) > MAX_NUMBER_CHARS:
                self.fail(f"float literal {quote(text)} is longer than {MAX_NUMBER_CHARS} characters")
            return float(text)
        if len(text) > MAX_INT_DIGITS:
            self.fail(f"integer literal of {len(text)} digits ({quote(text, 20)}); the limit is {MAX_INT_DIGITS}")
        return self.bounded(int(text), dims)

    def name(self, text: str, dims: bool):
        if not dims:
            if text in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[text]
            if text == "inf":
                return math.inf
            if text == "nan":
                return math.nan
            if text.startswith("torch."):
                if text in _TORCH_CONSTANTS:
                    return _TORCH_CONSTANTS[text]
                self.fail(f"unknown torch constant {quote(text)}")
        if "." in text or text in _RESERVED:
            self.fail(f"unsupported {'dim' if dims else 'argument'} syntax: {quote(text)}")
        return sym(text)

    def call(self, function: str, dims: bool):
        if not dims and function == "torch.device":
            device = self.string()
            self.expect(")")
            if not _DEVICE.fullmatch(device):
                self.fail(f"unknown device {quote(device)}; expected 'cpu', 'meta' or 'cuda[:N]'")
            try:
                return torch.device(device)
            except (RuntimeError, ValueError):
                self.fail(f"unknown device {quote(device)}")
        if function not in _DIM_FUNCTIONS:
            self.fail(f"unsupported {'dim' if dims else 'argument'} syntax: call of {quote(function)}")
        low, high = _DIM_FUNCTIONS[function]
        args = []
        while not self.accept(")"):
            if args:
                self.expect(",")
            if len(args) >= high:
                self.fail(f"{function}() takes at most {high} arguments")
            args.append(self.numeric(self.sum(dims), function))
        if len(args) < low:
            self.fail(f"{function}() needs {low} argument(s)")
        self.terms += 1
        if self.terms > MAX_EXPR_TERMS:
            self.fail(f"expression with more than {MAX_EXPR_TERMS} terms")
        for a in args:
            if isinstance(a, float):
                self.fail(f"{function}() applied to a float; it takes ints and dims")
        if function == "Mod" and args[1] == 0:
            self.fail("Mod(_, 0): division by zero")
        self.symbolic(4)
        fn = {"floor": sympy.floor, "ceiling": sympy.ceiling, "Max": sympy.Max, "Min": sympy.Min,
              "Mod": sympy.Mod}[function]
        try:
            value = fn(*args)
        except (ZeroDivisionError, ValueError, TypeError) as exc:
            self.fail(f"bad {function}() ({type(exc).__name__})")
        return self.bounded(value, dims)

    def parenthesised(self, dims: bool):
        """``(expr)``, or in arguments a tuple ``()``, ``(a,)``, ``(a, b)``."""
        if dims:
            value = self.sum(dims)
            self.expect(")")
            return value
        items = self.items(")", tuples=True)
        return items

    def items(self, close: str, tuples: bool = False):
        items: list = []
        trailing_comma = False
        while not self.accept(close):
            if items:
                self.expect(",")
                trailing_comma = True
                if self.accept(close):
                    break
            if len(items) >= MAX_LIST_ITEMS:
                self.fail(f"list of more than {MAX_LIST_ITEMS} items")
            terms = self.terms
            self.terms = 0
            items.append(self.finish(self.sum(dims=False), dims=False))
            self.terms = terms
            trailing_comma = False
        if not tuples:
            return items
        if len(items) == 1 and not trailing_comma:
            return items[0]                       # a parenthesised expression
        return tuple(items)


    # ---- plain literals: plan annotations and attributes ------------------------------
    def integer(self, what: str) -> int:
        """An integer literal, maybe negative, no expression: ``|n| < MAX_COUNT`` (2**62)."""
        negative = self.accept("-")
        kind, text = self.next()
        if kind != "number" or any(c in text for c in ".eE"):
            self.fail_here(f"expected an integer for {what}, got "
                           f"{quote(text) if kind != EOF else 'the end of the line'}")
        if len(text) > MAX_INT_DIGITS:
            self.fail(f"{what}: integer literal of {len(text)} digits ({quote(text, 20)}); "
                      f"the limit is {MAX_INT_DIGITS}")
        value = -int(text) if negative else int(text)
        if abs(value) >= MAX_COUNT:
            self.fail(f"{what}: {value} is not below the limit of 2**62")
        return value

    def count(self, what: str) -> int:
        """A non-negative integer literal below 2**62: a byte count, an offset, scratch bytes."""
        value = self.integer(what)
        if value < 0:
            self.fail(f"{what}: {value} is negative")
        return value

    def int_list(self, what: str, limit: int) -> list[int]:
        """``[n, ...]``: at most ``limit`` integer literals."""
        self.expect("[")
        items: list[int] = []
        while not self.accept("]"):
            if items:
                self.expect(",")
            if len(items) >= limit:
                self.fail(f"more than {limit} entries in a list of {what}s")
            items.append(self.integer(what))
        return items

    def literal(self, what: str):
        """A plain literal: an int, a float (``inf``, ``nan`` too), maybe negative, a quoted string,
        ``True``, ``False`` or ``None``."""
        kind, text = self.peek()
        if kind == "string":
            self.next()
            return _string_literal(text, self)
        if kind == "name" and text in ("True", "False", "None"):
            self.next()
            return {"True": True, "False": False, "None": None}[text]
        negative = self.accept("-")
        kind, text = self.next()
        if kind == "number":
            value = self.number(text, dims=False)
        elif kind == "name" and text in ("inf", "nan"):
            value = math.inf if text == "inf" else math.nan
        else:
            self.fail_here(f"expected an int, a float, a quoted string, True, False or None for {what}, got "
                           f"{quote(text) if kind != EOF else 'the end of the line'}")
        return -value if negative else value


def _string_literal(token: str, line: Expressions) -> str:
    """A quoted string token (matched by the tokenizer, so exactly one literal) as its str value."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ast.literal_eval(token)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        line.fail(f"bad string literal {quote(token)}")
    if not isinstance(value, str):
        line.fail(f"bad string literal {quote(token)}")
    return value


def _value(name: str) -> str:
    """``%name`` for a message, cut like :func:`quote`."""
    return "%" + (name if len(name) <= QUOTE_CHARS else name[:QUOTE_CHARS] + "...")


def _describe(v) -> str:
    if isinstance(v, Value):
        return f"the value {_value(v.name)}"
    if isinstance(v, (list, tuple)):
        return f"a {type(v).__name__} of {len(v)} items"
    if isinstance(v, str):
        return f"the string {quote(v, 20)}"
    return f"{type(v).__name__} {quote(str(v), 20)}"
