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
Every size is bounded (the ``MAX_*`` constants below and in
:mod:`memplan.ir.parse_literals`, which reads expressions and literals) and
every failure is an :class:`~memplan.errors.IRParseError` that names the line.

A planned graph adds ``attr key = literal`` lines (int, float, string, bool or
None), ``storage %name = memplan.storage("tier", bytes)`` lines, a memory
space after a type (``f32[2, 3]@dram``), an allocation after an output's type
(``slot(%storage, offset, [strides])``, ``own([strides])``, ``kernel``; a
slot's storage is declared before it) and, after a call,
``reuses(%x) recomputes(%y) scratch(N)``. Byte counts, offsets, strides and
scratch are plain integer literals below 2**62 (:data:`MAX_COUNT`).
"""
from __future__ import annotations

import re
from pathlib import Path

from memplan.errors import IRParseError
from memplan.files import read_text
from memplan.ir.graph import INPUT, KERNEL, NODE, OWN, PARAM, SLOT, Alloc, Graph, Node, Storage, Value, iter_values
from memplan.ir.parse_literals import (  # noqa: F401  (the limits are re-exported: they are this parser's)
    EOF, MAX_ARG_INT, MAX_COUNT, MAX_DIM, MAX_EXPONENT, MAX_EXPR_TERMS, MAX_INT_DIGITS, MAX_LIST_ITEMS,
    MAX_NESTING, MAX_NUMBER_CHARS, MAX_SYMBOLIC_OPS, MAX_SYMBOLIC_OPS_PER_LINE, QUOTE_CHARS, Expressions,
    _string_literal, _value, quote)
from memplan.ir.types import DTYPES, TensorType

MAX_TEXT_CHARS = 16 * 2**20      # a whole IR file
MAX_LINE_CHARS = 2**20           # one line
MAX_GRAPH_DEPTH = 64             # sub-graphs inside sub-graphs
MAX_RANK = 64                    # dims of one type (and entries of a strides list)
MAX_SPACE_CHARS = 64             # a memory space (tier) name

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
_SPACE_TEXT = re.compile(r"@([^\s,=()\[\]{}#]*)")   # what follows '@' after a type, checked below
_SPACE_NAME = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_SPACE_CHARS)


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
            if value.name in graph.storages:
                at.fail(f"value {_value(value.name)} has the name of a storage")
            scope[value.name] = value
            graph._names.add(value.name)

        line.expect("(")
        for name, type_, _ in line.typed_values(")"):
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
                (name, type_, _), = line.typed_values(None, limit=1)
                line.end()
                value = Value(name, type_, PARAM)
                define(value, line)
                graph.params.append(value)
            elif line.accept_word("attr"):
                key, literal = line.attr()
                if key in graph.attrs:
                    line.fail(f"attr {quote(key)} is given twice")
                graph.attrs[key] = literal
            elif line.accept_word("storage"):
                storage = line.storage()
                if storage.name in graph._names or storage.name in graph.storages:
                    line.fail(f"storage {_value(storage.name)}: the name is already used in graph {quote(graph.name)}")
                graph.storages[storage.name] = storage
                graph._names.add(storage.name)
            elif line.accept_word("return"):
                if returned:
                    line.fail(f"graph {quote(graph.name)} has a second 'return'")
                returned = True
                graph.outputs = line.returned(scope)
            else:
                node, pos = self.node(pos, line, scope, graph.storages, depth)
                for v in node.outputs:
                    define(v, line)
                if node.name in graph.storages:
                    line.fail(f"node {quote(node.name)} has the name of a storage")
                graph._names.add(node.name)
                graph.nodes.append(node)
                continue
            pos += 1
        raise IRParseError(f"line {self.lines[-1][0]}: graph {quote(graph.name)} is not closed with '}}'")

    def node(self, pos: int, line: "_Line", scope: dict[str, Value], storages: dict[str, Storage],
             depth: int) -> tuple[Node, int]:
        """``%out: type [alloc], ... = op(args) [label] reuses(%x) recomputes(%y) scratch(N)
        loc('source', 'op') [graph ... {]``."""
        if line.peek()[0] != "value":
            line.fail(f"expected '%out: type = op(args)', got {quote(line.text.strip())}")
        out_types = line.typed_values("=", storages=storages)
        line.expect("=")
        kind, op = line.next()
        if kind != "name":
            line.fail(f"expected an op name after '=', got {quote(op)}")
        if any(part.startswith("__") for part in op.split(".")):
            line.fail(f"op name {quote(op)} has a dunder part; op names are registry names such as aten.relu.default")
        line.expect("(")
        args, kwargs = line.call_arguments(scope)
        name = reuses = recomputes = None
        scratch = 0
        if line.accept("["):
            name = line.raw_name("a node name")
            line.expect("]")
        if line.accept_word("reuses"):
            reuses = line.value_in("reuses", list(iter_values((args, kwargs))), "names a value the call does not read")
        if line.accept_word("recomputes"):
            recomputes = line.value_in("recomputes", scope, "names a value not defined before it")
        if line.accept_word("scratch"):
            line.expect("(")
            scratch = line.count("scratch")
            line.expect(")")
        source = source_op = ""
        if line.accept_word("loc"):
            line.expect("(")
            source = line.string()
            line.expect(",")
            source_op = line.string()
            line.expect(")")
        outputs = tuple(Value(n, t, NODE, alloc=a) for n, t, a in out_types)
        subgraph = None
        if line.peek() == ("name", "graph"):
            subgraph, pos = self.graph(pos, line, depth + 1)
        else:
            line.end()
            pos += 1
        node = Node(name or outputs[0].name, op, tuple(args), kwargs, outputs, source, source_op, subgraph,
                    reuses, recomputes, scratch)
        for v in outputs:
            v.producer = node
        return node, pos


class _Line(Expressions):
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

    def value_in(self, what: str, values, problem: str) -> Value:
        """``(%name)`` after ``what``: the value of that name among ``values`` (a list or a scope)."""
        self.expect("(")
        name = self.value_name()
        self.expect(")")
        found = values.get(name) if isinstance(values, dict) else next((v for v in values if v.name == name), None)
        if found is None:
            self.fail(f"{what}({_value(name)}) {problem}")
        return found

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
    def typed_values(self, until: str | None, limit: int | None = None,
                     storages: dict[str, Storage] | None = None) -> list[tuple[str, TensorType, Alloc | None]]:
        """``%name: dtype[dims]@space alloc`` separated by commas, up to the op ``until`` (or the end of
        the line); the ``@space`` is optional, the alloc too and only read where ``storages`` is given."""
        out: list[tuple[str, TensorType, Alloc | None]] = []
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
            type_ = TensorType(dtype, tuple(dims), self.space(name))
            alloc = self.alloc(name, type_.rank, storages) if storages is not None else None
            out.append((name, type_, alloc))
            if limit is not None and len(out) > limit:
                self.fail_here(f"expected {limit} typed value(s)")
        if not out and until != ")":
            self.fail_here("expected a typed value '%name: dtype[dims]'")
        return out

    def space(self, name: str) -> str:
        """``@tier`` right after a type's ``]`` (read from the text: a tier may hold ``-``), or ``""``."""
        match = _SPACE_TEXT.match(self.text, self.pos)
        if match is None:
            return ""
        if not _SPACE_NAME.fullmatch(match.group(1)):
            self.fail_here(f"bad memory space name {quote(match.group(1))} in the type of {_value(name)}; "
                           f"a space is 1 to {MAX_SPACE_CHARS} letters, digits, '_' or '-'")
        self.pos = match.end()
        return match.group(1)

    def alloc(self, name: str, rank: int, storages: dict[str, Storage]) -> Alloc | None:
        """``slot(%storage, offset, [strides])``, ``own([strides])``, ``kernel`` or nothing."""
        if self.accept_word(KERNEL):
            return Alloc(KERNEL)
        if self.accept_word(OWN):
            self.expect("(")
            strides = self.strides(name, rank)
            self.expect(")")
            return Alloc(OWN, strides=strides)
        if not self.accept_word(SLOT):
            kind, text = self.peek()
            if kind == "name":
                self.fail_here(f"unknown allocation {quote(text)} of {_value(name)}; "
                               "expected slot(%storage, offset, [strides]), own([strides]) or kernel")
            return None
        self.expect("(")
        storage = self.value_name()
        if storage not in storages:
            self.fail(f"slot of {_value(name)} is in storage {_value(storage)}, which is not declared before it "
                      "('storage %NAME = memplan.storage(\"tier\", bytes)')")
        self.expect(",")
        offset = self.count(f"offset of {_value(name)}")
        self.expect(",")
        strides = self.strides(name, rank)
        self.expect(")")
        return Alloc(SLOT, storage, offset, strides)

    def strides(self, name: str, rank: int) -> tuple[int, ...]:
        """``[s, ...]``: one int per dim of the value's type."""
        strides = self.int_list(f"a stride of {_value(name)}", rank)
        if len(strides) != rank:
            self.fail(f"{len(strides)} strides for {_value(name)}, whose type has {rank} dims")
        return tuple(strides)

    # ---- plan declarations ---------------------------------------------------
    def attr(self) -> tuple[str, object]:
        """``key = literal`` (after ``attr``): a plan attribute."""
        kind, key = self.next()
        if kind != "name":
            self.fail_here(f"expected an attribute name (letters, digits, '_' and '.'), got {quote(key)}")
        self.expect("=")
        value = self.literal(f"attr {quote(key)}")
        self.end()
        return key, value

    def storage(self) -> Storage:
        """``%name = memplan.storage("tier", bytes)`` (after ``storage``)."""
        name = self.value_name()
        self.expect("=")
        if not self.accept_word("memplan.storage"):
            self.fail_here(f"expected memplan.storage(\"tier\", bytes) for storage {_value(name)}")
        self.expect("(")
        tier = self.string()
        if not _SPACE_NAME.fullmatch(tier):
            self.fail(f"bad tier name {quote(tier)} of storage {_value(name)}; "
                      f"a tier is 1 to {MAX_SPACE_CHARS} letters, digits, '_' or '-'")
        self.expect(",")
        nbytes = self.count(f"size of storage {_value(name)}")
        self.expect(")")
        self.end()
        return Storage(name, tier, nbytes)

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
