"""Parser of the IR text form written by :mod:`memplan.ir.printer`.

>>> from memplan.ir.parser import parse
>>> g = parse('''
... graph tiny(%x: f32[2, batch]) {
...   %y: f32[2, batch] = aten.relu.default(%x)
...   return %y
... }''')
>>> g.nodes[0].op, str(g.outputs[0].type)
('aten.relu.default', 'f32[2, batch]')

IR text is a file a user hands memplan, so it is untrusted data: it is read
by a grammar, one line at a time (a tokenizer, then recursive descent), and
nothing in it is ever evaluated. Dims and arguments are built from the parse
tree: ints, symbols (:func:`memplan.ir.types.sym`), ``+ - * / // **`` and
``floor / ceiling / Max / Min / Mod`` on them (sympy's own spelling of dims),
string and float literals, lists and tuples, ``%values``, ``torch.<dtype,
layout or memory format>`` and ``torch.device('cpu' | 'meta' | 'cuda[:N]')``.
Every size is bounded (the ``MAX_*`` constants below) and every failure is an
:class:`~memplan.errors.IRParseError` that names the line.
"""
from __future__ import annotations

import ast
import math
import re
import warnings
from pathlib import Path

import sympy
import torch

from memplan.errors import IRParseError
from memplan.files import read_text
from memplan.ir.graph import INPUT, NODE, PARAM, Graph, Node, Value, iter_values
from memplan.ir.types import DTYPES, TensorType, sym

MAX_TEXT_CHARS = 16 * 2**20      # a whole IR file
MAX_LINE_CHARS = 2**20           # one line
MAX_GRAPH_DEPTH = 64             # sub-graphs inside sub-graphs
MAX_NESTING = 48                 # brackets, unary signs and powers inside one line
MAX_EXPR_TERMS = 256             # operators and function calls in one dim or argument
MAX_SYMBOLIC_OPS_PER_LINE = 4096 # sympy operations one line may ask for
MAX_SYMBOLIC_OPS = 200_000       # ... and a whole file
MAX_LIST_ITEMS = 2**16           # items of one list or tuple argument
MAX_RANK = 64                    # dims of one type
MAX_INT_DIGITS = 20              # digits of an integer literal
MAX_ARG_INT = 2**64              # |an integer argument| (int64/uint64 limits appear in slices)
MAX_DIM = 2**62                  # a dim (elements along one axis)
MAX_EXPONENT = 64                # of ``**``
MAX_NUMBER_CHARS = 40            # a float literal
QUOTE_CHARS = 60                 # quoted file text in error messages is cut to this

_DIM_FUNCTIONS = {"floor": (1, 1), "ceiling": (1, 1), "Max": (1, 8), "Min": (1, 8), "Mod": (2, 2)}
_RESERVED = {"inf", "nan", "True", "False", "None"}
_TORCH_CONSTANTS = {f"torch.{k}": v for k, v in vars(torch).items()
                    if isinstance(v, (torch.dtype, torch.layout, torch.memory_format))}
_DEVICE = re.compile(r"(cpu|meta|cuda)(:\d{1,3})?")

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#.*)
  | (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
  | (?P<name>[^\W\d][\w.]*)
  | (?P<value>%[\w.]+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>//|\*\*|[-+*/()\[\],:={}])
""", re.VERBOSE)
_RAW_NAME = re.compile(r"\s*([\w.]+)")
_EQUALS = re.compile(r"\s*=")
EOF = "eof"


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of file text for an error message, cut to ``limit`` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def parse(text: str) -> Graph:
    """Parse IR text (one top-level ``graph``) into a :class:`Graph`; raise :class:`IRParseError`."""
    if not isinstance(text, str):
        raise IRParseError(f"IR text must be a str, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise IRParseError(f"IR text of {len(text)} characters is above the limit of {MAX_TEXT_CHARS}")
    lines = []
    for i, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            if len(line) > MAX_LINE_CHARS:
                raise IRParseError(f"line {i + 1}: {len(line)} characters, above the limit of {MAX_LINE_CHARS}")
            lines.append((i + 1, line))
    if not lines:
        raise IRParseError("empty IR text: expected 'graph NAME(...) {'")
    reader = _Reader(lines)
    head = reader.line(0)
    graph, end = reader.graph(0, head, depth=0)
    if end != len(lines):
        raise IRParseError(f"line {lines[end][0]}: text after the end of graph {quote(graph.name)}")
    return graph


def parse_file(path: str | Path) -> Graph:
    """Read and parse an IR file; unreadable, oversized or non-UTF-8 files are an :class:`IRParseError`."""
    path = Path(path)
    text = read_text(path, 4 * MAX_TEXT_CHARS, IRParseError, "memplan IR text (.mir)")
    try:
        return parse(text)
    except IRParseError as exc:
        raise IRParseError(f"{path}: {exc}") from None


class _Reader:
    """The graph structure: headers, params, nodes, returns, closing braces (one line each)."""

    def __init__(self, lines: list[tuple[int, str]]):
        self.lines = lines
        self.symbolic_ops = 0                      # shared by every line: the whole-file budget

    def line(self, pos: int) -> "_Line":
        lineno, text = self.lines[pos]
        return _Line(text, lineno, self)

    def graph(self, pos: int, line: "_Line", depth: int) -> tuple[Graph, int]:
        """The graph whose header ``line`` (at ``pos``) is positioned on; returns it and the next position."""
        if depth > MAX_GRAPH_DEPTH:
            line.fail(f"sub-graphs nested deeper than {MAX_GRAPH_DEPTH}")
        if not line.accept_word("graph"):
            line.fail(f"expected 'graph NAME(%x: f32[...], ...) {{', got {quote(line.text.strip())}")
        graph = Graph(line.raw_name("a graph name"))
        scope: dict[str, Value] = {}

        def define(value: Value, at: _Line):
            if value.name in scope:
                at.fail(f"value {_value(value.name)} is defined twice")
            scope[value.name] = value
            graph._names.add(value.name)

        line.expect("(")
        for name, type_ in line.typed_values(")"):
            value = Value(name, type_, INPUT)
            define(value, line)
            graph.inputs.append(value)
        line.expect(")")
        line.expect("{")
        line.end()
        returned = False
        pos += 1
        while pos < len(self.lines):
            line = self.line(pos)
            if line.accept("}"):
                line.end()
                return graph, pos + 1
            if line.accept_word("param"):
                (name, type_), = line.typed_values(None, limit=1)
                line.end()
                value = Value(name, type_, PARAM)
                define(value, line)
                graph.params.append(value)
            elif line.accept_word("return"):
                if returned:
                    line.fail(f"graph {quote(graph.name)} has a second 'return'")
                returned = True
                graph.outputs = line.returned(scope)
            else:
                node, pos = self.node(pos, line, scope, depth)
                for v in node.outputs:
                    define(v, line)
                graph._names.add(node.name)
                graph.nodes.append(node)
                continue
            pos += 1
        raise IRParseError(f"line {self.lines[-1][0]}: graph {quote(graph.name)} is not closed with '}}'")

    def node(self, pos: int, line: "_Line", scope: dict[str, Value], depth: int) -> tuple[Node, int]:
        """``%out: type, ... = op(args) [label] reuses(%x) loc('source', 'op') [graph ... {]``."""
        if line.peek()[0] != "value":
            line.fail(f"expected '%out: type = op(args)', got {quote(line.text.strip())}")
        out_types = line.typed_values("=")
        line.expect("=")
        kind, op = line.next()
        if kind != "name":
            line.fail(f"expected an op name after '=', got {quote(op)}")
        if any(part.startswith("__") for part in op.split(".")):
            line.fail(f"op name {quote(op)} has a dunder part; op names are registry names such as aten.relu.default")
        line.expect("(")
        args, kwargs = line.call_arguments(scope)
        name = reuses = None
        if line.accept("["):
            name = line.raw_name("a node name")
            line.expect("]")
        if line.accept_word("reuses"):
            line.expect("(")
            reuses = line.value_name()
            line.expect(")")
            if not any(v.name == reuses for v in iter_values((args, kwargs))):
                line.fail(f"reuses({_value(reuses)}) names a value the call does not read")
        source = source_op = ""
        if line.accept_word("loc"):
            line.expect("(")
            source = line.string()
            line.expect(",")
            source_op = line.string()
            line.expect(")")
        outputs = tuple(Value(n, t, NODE) for n, t in out_types)
        subgraph = None
        if line.peek() == ("name", "graph"):
            subgraph, pos = self.graph(pos, line, depth + 1)
        else:
            line.end()
            pos += 1
        node = Node(name or outputs[0].name, op, tuple(args), kwargs, outputs, source, source_op, subgraph, reuses)
        for v in outputs:
            v.producer = node
        return node, pos


class _Line:
    """Tokens of one line, read on demand, and the grammar of types, dims and arguments."""

    def __init__(self, text: str, lineno: int, reader: _Reader):
        self.text, self.lineno, self.reader = text, lineno, reader
        self.pos = 0
        self.token: tuple[str, str] | None = None   # the token after self.pos, once peeked
        self.token_end = 0
        self.depth = 0
        self.terms = 0
        self.symbolic_ops = 0

    # ---- errors ---------------------------------------------------------------
    def fail(self, what: str):
        raise IRParseError(f"line {self.lineno}: {what}")

    def fail_here(self, what: str):
        self.fail(f"{what} at column {self.pos + 1}")

    # ---- tokens -----------------------------------------------------------------
    def peek(self) -> tuple[str, str]:
        while self.token is None:
            if self.pos >= len(self.text):
                self.token, self.token_end = (EOF, ""), self.pos
                break
            match = _TOKEN.match(self.text, self.pos)
            if match is None:
                c = self.text[self.pos]
                if c in "'\"":
                    self.fail_here("unterminated string")
                self.fail_here(f"unexpected character {c!r}")
            kind = match.lastgroup
            if kind in ("space", "comment"):
                self.pos = match.end()
                continue
            self.token, self.token_end = (kind, match.group()), match.end()
        return self.token

    def next(self) -> tuple[str, str]:
        token = self.peek()
        self.pos, self.token = self.token_end, None
        return token

    def accept(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.next()
            return True
        return False

    def accept_word(self, word: str) -> bool:
        if self.peek() == ("name", word):
            self.next()
            return True
        return False

    def expect(self, op: str) -> None:
        kind, text = self.peek()
        if (kind, text) != ("op", op):
            self.fail_here(f"expected {op!r}, got {quote(text) if kind != EOF else 'the end of the line'}")
        self.next()

    def end(self) -> None:
        kind, text = self.peek()
        if kind != EOF:
            self.fail_here(f"unexpected text {quote(self.text[self.pos:].strip())}")

    def raw_name(self, what: str) -> str:
        """A ``[\\w.]+`` name (graph or node name: it may start with a digit)."""
        if self.token is not None:           # names are read from the text, not the token stream
            self.token = None
        match = _RAW_NAME.match(self.text, self.pos)
        if not match:
            self.fail_here(f"expected {what}")
        self.pos = match.end()
        return match.group(1)

    def value_name(self) -> str:
        kind, text = self.next()
        if kind != "value":
            self.fail_here(f"expected a %value, got {quote(text)}")
        return text[1:]

    def string(self) -> str:
        kind, text = self.next()
        if kind != "string":
            self.fail_here(f"expected a quoted string, got {quote(text)}")
        return _string_literal(text, self)

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.fail_here(f"brackets or signs nested deeper than {MAX_NESTING}")

    # ---- types ---------------------------------------------------------------
    def typed_values(self, until: str | None, limit: int | None = None) -> list[tuple[str, TensorType]]:
        """``%name: dtype[dims]`` separated by commas, up to the op ``until`` (or the end of the line)."""
        out: list[tuple[str, TensorType]] = []
        while self.peek() != ("op", until) and self.peek()[0] != EOF:
            if out:
                self.expect(",")
            name = self.value_name()
            self.expect(":")
            kind, dtype = self.next()
            if kind != "name" or dtype not in DTYPES:
                self.fail(f"unknown dtype {quote(dtype)}; known: {', '.join(DTYPES)}")
            self.expect("[")
            dims = []
            while not self.accept("]"):
                if dims:
                    self.expect(",")
                if len(dims) >= MAX_RANK:
                    self.fail(f"type of {_value(name)} has more than {MAX_RANK} dims")
                dims.append(self.dim())
            out.append((name, TensorType(dtype, tuple(dims))))
            if limit is not None and len(out) > limit:
                self.fail_here(f"expected {limit} typed value(s)")
        if not out and until != ")":
            self.fail_here("expected a typed value '%name: dtype[dims]'")
        return out

    def dim(self):
        self.terms = 0
        value = self.finish(self.sum(dims=True), dims=True)
        if isinstance(value, int):
            if value < 0:
                self.fail(f"dim {value} is negative")
            return value
        if value.is_Number:
            self.fail(f"dim {quote(str(value))} is not an integer")
        return value

    # ---- arguments -------------------------------------------------------------
    def call_arguments(self, scope: dict[str, Value]) -> tuple[list, dict]:
        """``arg, ..., key=arg, ...)`` (the opening parenthesis is read)."""
        self.scope = scope
        args: list = []
        kwargs: dict = {}
        while not self.accept(")"):
            if args or kwargs:
                self.expect(",")
                if self.accept(")"):
                    break
            if len(args) + len(kwargs) >= MAX_LIST_ITEMS:
                self.fail(f"more than {MAX_LIST_ITEMS} arguments")
            kind, text = self.peek()
            if kind == "name" and "." not in text and self._followed_by_equals():
                self.next()
                self.expect("=")
                if text in kwargs:
                    self.fail(f"keyword argument {quote(text)} given twice")
                kwargs[text] = self.argument()
            else:
                if kwargs:
                    self.fail_here("positional argument after a keyword argument")
                args.append(self.argument())
        return args, kwargs

    def _followed_by_equals(self) -> bool:
        return _EQUALS.match(self.text, self.token_end) is not None

    def argument(self):
        self.terms = 0
        return self.finish(self.sum(dims=False), dims=False)

    def returned(self, scope: dict[str, Value]) -> list[Value]:
        outputs = []
        while self.peek()[0] != EOF:
            if outputs:
                self.expect(",")
            kind, text = self.next()
            if kind != "value" or text[1:] not in scope:
                self.fail(f"return of undefined value {quote(text)}")
            outputs.append(scope[text[1:]])
        return outputs

    # ---- expressions (dims and arguments share them) -------------------------------
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
            value = {"+": a + b, "-": a - b, "*": a * b, "//": a // b, "**": a ** b}[op]
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


def _string_literal(token: str, line: _Line) -> str:
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
