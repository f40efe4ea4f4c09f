"""Parser of the IR text form written by :mod:`memplan.ir.printer`.

>>> from memplan.ir.parser import parse
>>> g = parse('''
... graph tiny(%x: f32[2, batch]) {
...   %y: f32[2, batch] = aten.relu.default(%x)
...   return %y
... }''')
>>> g.nodes[0].op, str(g.outputs[0].type)
('aten.relu.default', 'f32[2, batch]')
"""
from __future__ import annotations

import ast
import math
import re

import sympy
import torch

from memplan.errors import IRParseError
from memplan.ir.graph import INPUT, NODE, PARAM, Graph, Node, Value, iter_values
from memplan.ir.types import DTYPES, TensorType, sym

_TYPED_VALUE = re.compile(r"%([\w.]+)\s*:\s*(\w+)\[([^\]]*)\]")
_HEADER = re.compile(r"^graph\s+([\w.]+)\s*\((.*)\)\s*\{$")
_IDENT = re.compile(r"[A-Za-z_]\w*")


def parse(text: str) -> Graph:
    """Parse IR text (one top-level ``graph``) into a :class:`Graph`."""
    lines = [(i + 1, _strip_comment(line).strip()) for i, line in enumerate(text.splitlines())]
    lines = [(n, s) for n, s in lines if s]
    if not lines:
        raise IRParseError("empty IR text: expected 'graph NAME(...) {'")
    graph, end = _parse_graph(lines, 0, lines[0][1])
    if end != len(lines):
        raise IRParseError(f"line {lines[end][0]}: text after the end of graph {graph.name!r}")
    return graph


def _strip_comment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote and line[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#":
            return line[:i]
    return line


def _parse_type(dtype: str, dims: str, lineno: int) -> TensorType:
    if dtype not in DTYPES:
        raise IRParseError(f"line {lineno}: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    shape = []
    for d in (x.strip() for x in dims.split(",")) if dims.strip() else ():
        if re.fullmatch(r"-?\d+", d):
            shape.append(int(d))
        else:
            try:
                shape.append(sympy.sympify(d, locals={n: sym(n) for n in _IDENT.findall(d)}))
            except (sympy.SympifyError, SyntaxError, TypeError):
                raise IRParseError(f"line {lineno}: bad dim {d!r}") from None
    return TensorType(dtype, tuple(shape))


def _parse_graph(lines, pos: int, header: str) -> tuple[Graph, int]:
    lineno = lines[pos][0]
    match = _HEADER.match(header)
    if not match:
        raise IRParseError(f"line {lineno}: expected 'graph NAME(%x: f32[...], ...) {{', got {header!r}")
    graph = Graph(match.group(1))
    scope: dict[str, Value] = {}

    def define(value: Value):
        if value.name in scope:
            raise IRParseError(f"line {lines[pos][0]}: value %{value.name} is defined twice")
        scope[value.name] = value
        graph._names.add(value.name)

    for name, dtype, dims in _TYPED_VALUE.findall(match.group(2)):
        value = Value(name, _parse_type(dtype, dims, lineno), INPUT)
        define(value)
        graph.inputs.append(value)
    pos += 1
    while pos < len(lines):
        lineno, line = lines[pos]
        if line == "}":
            return graph, pos + 1
        if line.startswith("param "):
            found = _TYPED_VALUE.findall(line)
            if len(found) != 1:
                raise IRParseError(f"line {lineno}: expected 'param %name: dtype[dims]'")
            name, dtype, dims = found[0]
            value = Value(name, _parse_type(dtype, dims, lineno), PARAM)
            define(value)
            graph.params.append(value)
        elif line.startswith("return"):
            names = [n.strip() for n in line[len("return"):].split(",") if n.strip()]
            for n in names:
                if not n.startswith("%") or n[1:] not in scope:
                    raise IRParseError(f"line {lineno}: return of undefined value {n!r}")
            graph.outputs = [scope[n[1:]] for n in names]
        else:
            node, pos = _parse_node(lines, pos, scope)
            for v in node.outputs:
                define(v)
            graph._names.add(node.name)
            graph.nodes.append(node)
            continue
        pos += 1
    raise IRParseError(f"line {lines[-1][0]}: graph {graph.name!r} is not closed with '}}'")


def _parse_node(lines, pos: int, scope: dict[str, Value]) -> tuple[Node, int]:
    lineno, line = lines[pos]
    eq = line.find("=")
    if eq < 0:
        raise IRParseError(f"line {lineno}: expected '%out: type = op(args)', got {line!r}")
    lhs, rhs = line[:eq], line[eq + 1:].strip()
    out_types = _TYPED_VALUE.findall(lhs)
    if not out_types:
        raise IRParseError(f"line {lineno}: no typed outputs before '='")
    op_match = re.match(r"([\w.]+)\(", rhs)
    if not op_match:
        raise IRParseError(f"line {lineno}: expected an op call after '=', got {rhs!r}")
    op = op_match.group(1)
    close = _matching_paren(rhs, op_match.end() - 1, lineno)
    args, kwargs = _parse_args(rhs[op_match.end():close], scope, lineno)
    rest = rhs[close + 1:].strip()
    name = None
    label = re.match(r"\[([\w.]+)\]\s*", rest)
    if label:
        name, rest = label.group(1), rest[label.end():]
    reuses = None
    reuse = re.match(r"reuses\(%([\w.]+)\)\s*", rest)
    if reuse:
        reuses, rest = reuse.group(1), rest[reuse.end():]
        if not any(v.name == reuses for v in iter_values((args, kwargs))):
            raise IRParseError(f"line {lineno}: reuses(%{reuses}) names a value the call does not read")
    source = source_op = ""
    loc = re.match(r"loc\(", rest)
    if loc:
        end = _matching_paren(rest, loc.end() - 1, lineno)
        try:
            source, source_op = ast.literal_eval("(" + rest[loc.end():end] + ")")
        except (ValueError, SyntaxError):
            raise IRParseError(f"line {lineno}: bad loc(...): expected loc('source', 'source_op')") from None
        rest = rest[end + 1:].strip()
    outputs = tuple(Value(n, _parse_type(d, dims, lineno), NODE) for n, d, dims in out_types)
    subgraph = None
    pos += 1
    if rest.startswith("graph"):
        subgraph, pos = _parse_graph(lines, pos - 1, rest)
    elif rest:
        raise IRParseError(f"line {lineno}: unexpected text {rest!r} after the call")
    node = Node(name or outputs[0].name, op, tuple(args), kwargs, outputs, source, source_op, subgraph, reuses)
    for v in outputs:
        v.producer = node
    return node, pos


def _matching_paren(text: str, start: int, lineno: int) -> int:
    depth, quote = 0, None
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if c == quote and text[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth == 0:
                return i
    raise IRParseError(f"line {lineno}: unbalanced parentheses")


def _parse_args(text: str, scope: dict[str, Value], lineno: int):
    # %name -> __v__("name") outside string literals
    out, quote, i = [], None, 0
    while i < len(text):
        c = text[i]
        if quote:
            out.append(c)
            if c == quote and text[i - 1] != "\\":
                quote = None
        elif c in "'\"":
            quote = c
            out.append(c)
        elif c == "%":
            m = re.match(r"[\w.]+", text[i + 1:])
            if not m:
                raise IRParseError(f"line {lineno}: '%' without a value name")
            out.append(f'__v__("{m.group(0)}")')
            i += m.end()
        else:
            out.append(c)
        i += 1
    try:
        call = ast.parse(f"__f__({''.join(out)})", mode="eval").body
    except SyntaxError as exc:
        raise IRParseError(f"line {lineno}: bad arguments: {exc.msg}") from None
    ev = _Evaluator(scope, lineno)
    return [ev(a) for a in call.args], {k.arg: ev(k.value) for k in call.keywords}


class _Evaluator:
    """Evaluates the literal subset of Python that IR arguments use."""

    _TORCH_ATTRS = (torch.dtype, torch.layout, torch.memory_format)

    def __init__(self, scope, lineno):
        self.scope, self.lineno = scope, lineno

    def fail(self, what):
        raise IRParseError(f"line {self.lineno}: {what}")

    def __call__(self, n):
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.List):
            return [self(x) for x in n.elts]
        if isinstance(n, ast.Tuple):
            return tuple(self(x) for x in n.elts)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -self(n.operand)
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv)):
            left, right = self(n.left), self(n.right)
            ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                   ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b}
            return ops[type(n.op)](left, right)
        if isinstance(n, ast.Name):
            if n.id == "inf":
                return math.inf
            if n.id == "nan":
                return math.nan
            return sym(n.id)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "torch":
            obj = getattr(torch, n.attr, None)
            if isinstance(obj, self._TORCH_ATTRS):
                return obj
            self.fail(f"unknown torch constant torch.{n.attr}")
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "__v__":
            name = n.args[0].value
            if name not in self.scope:
                self.fail(f"use of undefined value %{name}")
            return self.scope[name]
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "device"
                and len(n.args) == 1 and isinstance(n.args[0], ast.Constant)):
            return torch.device(n.args[0].value)
        self.fail(f"unsupported argument syntax: {ast.unparse(n)}")
