"""Fuzz test: models whose every name is hostile text lower safely and compute the right result.

ONNX models (a small chain of Relu / Add / MatMul / Conv / Reshape / Sigmoid / Mul / Identity
over initializers) and torch modules get node names, value names, initializer names, the
graph name, doc strings, input and output names, submodule / parameter / buffer names drawn
from hostile text: line breaks of every kind, quotes, backslashes, ``#``, ``\"\"\"``, unicode
(``x²``, ``ß``, emoji, RTL marks), Python keywords, the emitted code's own names, and code
payloads that would create a marker file if they ever ran. Lowering them (through
``memplan.compile`` and through ``memplan lower``) must

- run no code (the marker file never appears);
- emit a module that compiles, whose comments are single lines of printable ASCII (tabs allowed), with no
  line break but ``\\n`` anywhere in it;
- give IR text that parses back to the same graph;
- compute what onnxruntime (or eager torch) computes.
"""
from __future__ import annotations

import io
import tempfile
import tokenize
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import memplan
from memplan.cli import main as cli_main
from memplan.ir.parser import parse

MARK = "MARKER"  # replaced by an absolute path unique to the example
PAYLOADS = [
    f"\nimport os; os.system('touch {MARK}')\n",
    f"__import__('os').system('touch {MARK}')",
    f"'); import os; os.system('touch {MARK}') #",
    f"\"); import os; os.system('touch {MARK}') #",
    f"\rimport os; os.system('touch {MARK}')",
    f"\x0cimport os; os.system('touch {MARK}')",
    f"\u2028import os; os.system('touch {MARK}')",
    f"x\n    open('{MARK}', 'w')\n",
    f"\"\"\"\nopen('{MARK}', 'w')\n\"\"\"",
    f"''')\nopen('{MARK}', 'w')\n#",
    f"{{open('{MARK}', 'w')}}",
    f"\\\nopen('{MARK}', 'w')",
]
# payloads without '.', which torch's module and parameter names cannot hold
TORCH_PAYLOADS = [
    f"\ngetattr(__import__('os'), 'system')('touch {MARK}')\n",
    f"\u2028open('{MARK}', 'w')\u2028",
    f"\x0bopen('{MARK}', 'w')",
    f"\x85open('{MARK}', 'w')#",
    f"'); open('{MARK}', 'w'); ('",
    f"'''); open('{MARK}', 'w'); ('''",
    f"__import__('os')\nopen('{MARK}', 'w')",
    f"'); open('{MARK}', 'w') #",
    f"\"\"\"\nopen('{MARK}', 'w')\n\"\"\"",
    f"\rexec(chr(111)+chr(112)) or open('{MARK}', 'w')",
    f"\u2028open('{MARK}', 'w')",
]
CODE_NAMES = ["arena", "torch", "aten", "weights", "run", "memplan_ops", "inf", "nan", "arena_f32", "math",
              "print", "exec", "self", "v_arena", "x", "x_1", "w", "graph", "main"]
KEYWORDS = ["def", "return", "lambda", "class", "import", "None", "True", "del", "if", "not", "yield",
            "async", "await", "pass", "__import__", "__builtins__", "__name__"]
ODD = ["x²", "ß", "🙂", "\u200f", "\u202e", "\u200b", "漢字", "é", "ǅ", "٣", "0x", "1", "a.b", "a b", "-", "%x",
       "@", "$", "{x}", "#", "# x", "\"\"\"", "'''", "\\", "\\n", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c",
       "\x85", "\u2028", "\u2029", "\t", " ", "'", "\"", "\x00", "a\x00b", "%", "%x: f32[2]", ")", "(",
       "loc('a', 'b')", "reuses(%x)", "# 8 B", "}", "{", "graph g(%x: f32[1]) {"]
CHARS = "\n\r\x0b\x0c\x1c\x85\u2028\u2029\t \"'\\#%{}()[]:;,.=+-*/@$!?`~^&|<>_x2²ß🙂\u200f\u202e漢0"
ASCII_PRINTABLE = {chr(c) for c in range(0x20, 0x7f)} | {"\t"}
LINE_BREAKS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00"]


def hostile_text(payloads=PAYLOADS):
    fixed = st.sampled_from(payloads + CODE_NAMES + KEYWORDS + ODD)
    return st.one_of(
        fixed,
        st.text(alphabet=CHARS, min_size=1, max_size=10),
        st.tuples(fixed, st.text(alphabet=CHARS, max_size=3), fixed).map("".join),
    )


def _with_marker(text: str, marker: Path) -> str:
    return text.replace(MARK, str(marker))


# ---------------------------------------------------------------- the ONNX chain
STEPS = ["relu", "add_init", "matmul", "reshape", "conv", "residual", "sigmoid", "mul_self", "identity"]


@st.composite
def onnx_recipes(draw):
    steps = draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=5))
    n_inputs = draw(st.integers(1, 2))
    n_names = n_inputs + 7 * len(steps) + 1  # at most 7 values and initializers per step (conv)
    n_nodes = 3 * len(steps) + 1
    names = draw(st.lists(hostile_text(), min_size=n_names, max_size=n_names, unique=True))
    node_names = draw(st.lists(hostile_text(), min_size=n_nodes, max_size=n_nodes, unique=True))
    extra_output = draw(st.booleans())
    docs = draw(st.lists(hostile_text(), min_size=4, max_size=4))
    graph_name = draw(hostile_text())
    cli = draw(st.integers(0, 3)) == 0
    seed = draw(st.integers(0, 2 ** 16))
    return dict(steps=steps, n_inputs=n_inputs, names=names, node_names=node_names, extra_output=extra_output,
                docs=docs, graph_name=graph_name, cli=cli, seed=seed)


def build_onnx(recipe, marker: Path):
    """A chain over ``[2, 4]`` float values; every name from ``recipe`` (``MARKER`` -> ``marker``)."""
    rng = np.random.default_rng(recipe["seed"])
    names = iter(_with_marker(n, marker) for n in recipe["names"])
    node_names = iter(_with_marker(n, marker) for n in recipe["node_names"])
    doc = [_with_marker(d, marker) for d in recipe["docs"]]
    inputs = [next(names) for _ in range(recipe["n_inputs"])]
    nodes, inits, values = [], [], list(inputs)

    def init(array):
        name = next(names)
        t = numpy_helper.from_array(array, name)
        t.doc_string = doc[3]
        inits.append(t)
        return name

    def node(op, ins, **attrs):
        out = next(names)
        nodes.append(helper.make_node(op, ins, [out], name=next(node_names), doc_string=doc[0], **attrs))
        return out

    cur = inputs[0]
    if recipe["n_inputs"] == 2:
        cur = node("Add", [inputs[0], inputs[1]])
        values.append(cur)
    for step in recipe["steps"]:
        if step == "relu":
            cur = node("Relu", [cur])
        elif step == "sigmoid":
            cur = node("Sigmoid", [cur])
        elif step == "identity":
            cur = node("Identity", [cur])
        elif step == "mul_self":
            cur = node("Mul", [cur, cur])
        elif step == "add_init":
            cur = node("Add", [cur, init(rng.standard_normal(4).astype(np.float32))])
        elif step == "matmul":
            cur = node("MatMul", [cur, init((rng.standard_normal((4, 4)) / 2).astype(np.float32))])
        elif step == "reshape":
            mid = node("Reshape", [cur, init(np.array([4, 2], dtype=np.int64))])
            cur = node("Reshape", [mid, init(np.array([2, 4], dtype=np.int64))])
        elif step == "conv":
            img = node("Reshape", [cur, init(np.array([1, 2, 2, 2], dtype=np.int64))])
            w = init((rng.standard_normal((2, 2, 3, 3)) / 4).astype(np.float32))
            conv = node("Conv", [img, w, init(rng.standard_normal(2).astype(np.float32))],
                        kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            cur = node("Reshape", [conv, init(np.array([2, 4], dtype=np.int64))])
        elif step == "residual":
            cur = node("Add", [cur, values[len(values) // 2]])
        values.append(cur)
    outputs = [cur]
    if recipe["extra_output"] and len(values) > 2 and values[-2] not in inputs:
        outputs.append(values[-2])
    vi = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 4], doc_string=doc[1])  # noqa: E731
    graph = helper.make_graph(nodes, _with_marker(recipe["graph_name"], marker), [vi(n) for n in inputs],
                              [vi(n) for n in outputs], inits, doc_string=doc[2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=doc[1],
                              producer_name=doc[0])
    helper.set_model_props(model, {doc[2]: doc[3]})
    model.ir_version = 8
    return model, inputs


def check_source(source: str) -> None:
    """The emitted module compiles; comments are one line of printable ASCII; only ``\\n`` breaks lines."""
    compile(source, "<emitted>", "exec")
    for ch in LINE_BREAKS:
        assert ch not in source, f"emitted source contains {ch!r} outside an escaped literal"
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            bad = sorted({c for c in tok.string if c not in ASCII_PRINTABLE})
            assert not bad, f"comment {tok.string!r} (line {tok.start[0]}) holds {bad}: not printable ASCII"


def check_ir(text: str, graph) -> None:
    g = parse(text)
    assert g == graph, "the IR text does not parse back to the same graph"


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


PLAIN = dict(steps=["conv", "residual", "matmul", "reshape", "relu"], n_inputs=2,
             names=[f"v{i}" for i in range(2 + 7 * 5 + 1)], node_names=[f"n{i}" for i in range(16)],
             extra_output=True, docs=["d0", "d1", "d2", "d3"], graph_name="plain", cli=True, seed=0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@example(PLAIN)
@given(onnx_recipes())
def test_hostile_onnx_names(recipe):
    with tempfile.TemporaryDirectory(prefix="memplan_hostile_") as tmp:
        tmp = Path(tmp)
        marker = tmp / "MARKER"
        model, input_names = build_onnx(recipe, marker)
        rng = np.random.default_rng(recipe["seed"] + 1)
        feeds = {n: rng.standard_normal((2, 4)).astype(np.float32) for n in input_names}
        try:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            expected = sess.run(None, feeds)
        except Exception:  # onnxruntime rejects the model itself: not memplan's business
            assume(False)
        try:
            cm = memplan.compile(model, [torch.from_numpy(feeds[n].copy()) for n in input_names],
                                 options={"measure_scratch": False})
            assert not marker.exists(), "memplan.compile ran code from the model file"
            check_source(cm.source)
            check_ir(cm.ir, cm.graph)
            got = _as_list(cm(*[torch.from_numpy(feeds[n].copy()) for n in input_names]))
            assert not marker.exists(), "calling the compiled module ran code from the model file"
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-5)
            if recipe["cli"]:
                path = tmp / "model.onnx"
                onnx.save(model, path)
                out = tmp / "out"
                rc = cli_main(["lower", str(path), "-o", str(out), "--emit", "ir,python,plan"])
                assert not marker.exists(), "memplan lower ran code from the model file"
                assert rc == 0
                check_source((out / "model.py").read_text())
                mir = (out / "model.mir").read_text()
                parse(mir)
                assert cli_main(["show", str(out / "model.plan.json")]) == 0
                assert not marker.exists(), "memplan show ran code from the model file"
        finally:
            assert not marker.exists(), "code from the model file ran"


# ---------------------------------------------------------------- torch modules with hostile names
class HostileModel(nn.Module):
    """``relu(lin(x @ block.<p> + block.<b>)) + seq.<act>(x @ block.<p>)``, every name hostile."""

    def __init__(self, names):
        super().__init__()
        self.names = names
        block = nn.Module()
        self.add_module(names[0], block)
        block.register_parameter(names[1], nn.Parameter(torch.randn(4, 4) / 2))
        block.register_buffer(names[2], torch.randn(4))
        self.add_module(names[3], nn.Linear(4, 4))
        seq = nn.Sequential()
        seq.add_module(names[4], nn.Sigmoid())
        self.add_module(names[5], seq)
        conv = nn.Conv2d(2, 2, 3, padding=1)
        self.add_module(names[6], conv)

    def forward(self, x):
        n = self.names
        block = self._modules[n[0]]
        p = block._parameters[n[1]]
        h = x @ p + block._buffers[n[2]]
        y = torch.relu(self._modules[n[3]](h)) + self._modules[n[5]](x @ p)
        img = y.reshape(1, 2, 2, 2)
        return self._modules[n[6]](img) + img


_TORCH_BAD = set('."\\\n\r\x00')  # torch's own code generation breaks on these in parameter paths


def torch_param_text():
    """Hostile names torch can capture as paths of parameters and buffers (no '.', no double quote,
    backslash, \\n, \\r or NUL: torch.export generates code from them itself)."""
    fixed = [t for t in TORCH_PAYLOADS + CODE_NAMES + KEYWORDS + ODD if not set(t) & _TORCH_BAD]
    alphabet = "".join(c for c in CHARS if c not in _TORCH_BAD)
    fixed_st = st.sampled_from(fixed)
    return st.one_of(fixed_st, st.text(alphabet=alphabet, min_size=1, max_size=10),
                     st.tuples(fixed_st, st.text(alphabet=alphabet, max_size=3), fixed_st).map("".join))


@st.composite
def torch_names(draw):
    """Seven distinct names: [block, its parameter, its buffer, linear, activation, sequential, conv];
    the activation and the sequential hold no parameters, so they may hold anything but '.'."""
    names = []
    for i in range(7):
        strategy = hostile_text(TORCH_PAYLOADS + PAYLOADS) if i in (4, 5) else torch_param_text()
        names.append(draw(strategy.filter(lambda s: "." not in s and s not in names)))
    return names


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@example(["a", "b", "c", "d", "e", "f", "g"], 0)
@given(torch_names(), st.integers(0, 2 ** 16))
def test_hostile_torch_names(names, seed):
    with tempfile.TemporaryDirectory(prefix="memplan_hostile_") as tmp:
        marker = Path(tmp) / "MARKER"
        assert "." not in str(marker)
        names = [_with_marker(n, marker) for n in names]
        torch.manual_seed(seed)
        try:
            model = HostileModel(names).eval()
        except (KeyError, TypeError, AttributeError):
            assume(False)  # torch does not allow this name (an existing attribute, ...)
        x = torch.randn(2, 4)
        try:  # torch's own capture generates code from these names: skip what torch itself rejects
            torch.export.export(model, (x,)).module()
        except Exception:
            assume(False)
        assume(not marker.exists())  # (torch itself ran it: not memplan's business)
        try:
            cm = memplan.compile(model, (x,), options={"measure_scratch": False})
            assert not marker.exists(), "memplan.compile ran code from a module name"
            check_source(cm.source)
            check_ir(cm.ir, cm.graph)
            with torch.no_grad():
                expected = model(x)
            torch.testing.assert_close(cm(x), expected, rtol=1e-5, atol=1e-5)
        finally:
            assert not marker.exists(), "code from a module name ran"
