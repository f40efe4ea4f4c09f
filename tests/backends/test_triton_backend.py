"""The Triton backend: each kernel template against eager numerics (tails, broadcasts, strided
inputs), whole small models with ``backend="triton"`` against eager, plans no higher than the PyTorch
backend's, the emitted source, ``--emit triton``. No GPU here: every kernel runs in Triton's
interpreter, so shapes stay small."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
from onnx import numpy_helper

import memplan
from memplan import zoo
from memplan.backends.base import get_backend
from memplan.backends.triton import TritonBackend, emit_triton, load_triton
from memplan.backends.triton.kernels import choose_kernels
from memplan.backends.triton.matmul import is_matmul_group
from memplan.ir import Graph, TensorType
from memplan.ir.interpret import run_graph
from memplan.ir.parser import parse
from memplan.passes.fusion import fuse_graph

pytest.importorskip("triton")


def run_emitted(graph: Graph, *inputs):
    """The graph's emitted Triton module run on ``inputs`` (the graph unplanned: fresh buffers)."""
    kernels, launcher = emit_triton(graph)
    out = load_triton(kernels + "\n\n" + launcher)({}, *inputs)
    return out if isinstance(out, tuple) else (out,)


def fused(text: str, tile_bytes: int = 1024) -> tuple[Graph, Graph]:
    """(the graph of ``text``, its copy with its elementwise chains fused into loops)."""
    graph = parse(text)
    loops = fuse_graph(graph.copy(), tile_bytes)
    fused_graph = graph.copy()
    assert fuse_graph(fused_graph, tile_bytes) and loops
    return graph, fused_graph


def check_pointwise(text: str, inputs, rtol=1e-5, atol=1e-6, tile_bytes=1024):
    graph, loops = fused(text, tile_bytes)
    choice = choose_kernels(loops)
    assert choice.kernels and not choice.not_kernels, choice.not_kernels
    expected = run_graph(graph, [x.contiguous() for x in inputs])
    for got, want in zip(run_emitted(loops, *inputs), expected):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    return loops


# ---------------------------------------------------------------- the templates' cases

# GPT-2's tanh gelu over 3 * 37 * 29 = 3219 elements: 4 programs of 1024, the last one masked
GELU = """graph gelu(%x: f32[3, 37, 29]) {
  %mul: f32[3, 37, 29] = aten.mul.Tensor(%x, 0.5)
  %pow_1: f32[3, 37, 29] = aten.pow.Tensor_Scalar(%x, 3.0)
  %mul_1: f32[3, 37, 29] = aten.mul.Tensor(%pow_1, 0.044715)
  %add: f32[3, 37, 29] = aten.add.Tensor(%x, %mul_1)
  %mul_2: f32[3, 37, 29] = aten.mul.Tensor(%add, 0.7978845608028654)
  %tanh: f32[3, 37, 29] = aten.tanh.default(%mul_2)
  %add_1: f32[3, 37, 29] = aten.add.Tensor(%tanh, 1.0)
  %y: f32[3, 37, 29] = aten.mul.Tensor(%mul, %add_1)
  return %y
}"""

BROADCAST = """graph bc(%x: f32[5, 7, 33], %b: f32[33], %c: f32[5, 1, 33], %s: f32[]) {
  %m: f32[5, 7, 33] = aten.mul.Tensor(%x, %b)
  %a: f32[5, 7, 33] = aten.add.Tensor(%m, %c, alpha=2)
  %sg: f32[5, 7, 33] = aten.sigmoid.default(%a)
  %e: f32[5, 7, 33] = aten.exp.default(%sg)
  %g: f32[5, 7, 33] = aten.gelu.default(%e)
  %r: f32[5, 7, 33] = aten.rsqrt.default(%g)
  %d: f32[5, 7, 33] = aten.div.Tensor(%r, %s)
  %k: f32[5, 7, 33] = aten.clamp.default(%d, -0.5, 0.75)
  %n: f32[5, 7, 33] = aten.neg.default(%k)
  %gt: bool[5, 7, 33] = aten.gt.Scalar(%x, 0.0)
  %w: f32[5, 7, 33] = aten.where.self(%gt, %n, %x)
  %mn: f32[5, 7, 33] = aten.minimum.default(%w, %c)
  %sq: f32[5, 7, 33] = aten.pow.Tensor_Scalar(%mn, 2)
  %silu: f32[5, 7, 33] = aten.silu.default(%sq)
  %rs: f32[5, 7, 33] = aten.rsub.Scalar(%silu, 1.0)
  return %rs, %gt
}"""

# T5's relative-position buckets: integers, booleans, a log that meets zeros
BUCKETS = """graph buckets(%q: i64[1, 300], %k: i64[61, 1]) {
  %rel: i64[61, 300] = aten.sub.Tensor(%q, %k)
  %pos: bool[61, 300] = aten.gt.Scalar(%rel, 0)
  %mag: i64[61, 300] = aten.abs.default(%rel)
  %small: bool[61, 300] = aten.lt.Scalar(%mag, 8)
  %f: f32[61, 300] = aten.div.Tensor(%mag, 8)
  %lg: f32[61, 300] = aten.log.default(%f)
  %scaled: f32[61, 300] = aten.mul.Tensor(%lg, 2.5)
  %big: i64[61, 300] = aten.mul.Tensor(%mag, 16)
  %both: bool[61, 300] = aten.logical_and.default(%pos, %small)
  %pick: i64[61, 300] = aten.where.self(%small, %mag, %big)
  return %pos, %small, %scaled, %pick, %both
}"""

HALF = """graph half(%x: f16[9, 130], %w: f16[130]) {
  %m: f16[9, 130] = aten.mul.Tensor(%x, %w)
  %t: f16[9, 130] = aten.tanh.default(%m)
  %y: f16[9, 130] = aten.add.Tensor(%t, %x)
  return %y
}"""

GROUP = """graph g(%x: f32[8, 300], %w: f32[300]) {
  %y: f32[8, 300], %z: f32[8, 300] = memplan.group(%x, %w) graph body(%a: f32[8, 300], %b: f32[300]) {
    %m: f32[8, 300] = aten.mul.Tensor(%a, %b)
    %e: f32[8, 300] = aten.exp.default(%m)
    return %e, %m
  }
  return %y, %z
}"""

CONVERSIONS = """graph g(%x: f32[8, 300]) {
  %y: i64[8, 300], %z: f16[8, 300], %b: bool[8, 300] = memplan.group(%x) graph body(%a: f32[8, 300]) {
    %m: f32[8, 300] = aten.mul.Tensor(%a, 10.0)
    %i: i64[8, 300] = aten._to_copy.default(%m, dtype=torch.int64)
    %j: i64[8, 300] = aten.add.Tensor(%i, 3)
    %h: f16[8, 300] = aten._to_copy.default(%m, dtype=torch.float16)
    %q: bool[8, 300] = aten._to_copy.default(%j, dtype=torch.bool)
    return %j, %h, %q
  }
  return %y, %z, %b
}"""

SOFTMAX = """graph sm(%x: f32[3, 35, 600]) {{
  %y: f32[3, 35, 600] = {op}(%x, {dim}, False)
  return %y
}}"""
SOFTMAXES = [("aten._softmax.default", -1), ("aten._softmax.default", 1), ("aten._log_softmax.default", 2)]

LAYER_NORM = """graph ln(%x: f32[4, 7, 19], %w: f32[19], %b: f32[19]) {
  %y: f32[4, 7, 19], %mean: f32[4, 7, 1], %rstd: f32[4, 7, 1] = aten.native_layer_norm.default(%x, [19], %w, %b, 1e-05)
  %y2: f32[4, 7, 19], %mean2: f32[4, 1, 1], %rstd2: f32[4, 1, 1] = aten.native_layer_norm.default(%x, [7, 19], None, None, 0.001)
  return %y, %mean, %rstd, %y2, %mean2, %rstd2
}"""

SUM_MEAN = """graph red(%x: f32[6, 5, 130]) {
  %m: f32[6, 5, 1] = aten.mean.dim(%x, [-1], True)
  %s: f32[5] = aten.sum.dim_IntList(%x, [0, 2])
  return %m, %s
}"""

# every case: (IR text, the fusion tile in bytes: None for a graph that is already what runs)
CASES = {"gelu": (GELU, 1024), "broadcast": (BROADCAST, 1024), "buckets": (BUCKETS, 4096), "half": (HALF, 512),
         "group": (GROUP, None), "conversions": (CONVERSIONS, None), "layer_norm": (LAYER_NORM, None),
         "sum_mean": (SUM_MEAN, None),
         **{f"softmax_{i}": (SOFTMAX.format(op=op, dim=dim), None) for i, (op, dim) in enumerate(SOFTMAXES)}}


# ---------------------------------------------------------------- pointwise template

def test_gelu_chain_one_launch_with_tail():
    x = torch.randn(3, 37, 29) * 3
    loops = check_pointwise(GELU, [x])
    kernels, launcher = emit_triton(loops)
    (loop,) = [n for n in loops.nodes if n.op == "memplan.loop"]
    assert loop.kwargs["trips"] > 1, "the fuse pass tiled it"
    assert launcher.count("kernel_0_fused_mul[(4,)](") == 1 and "for t in range" not in launcher
    assert "BLOCK: tl.constexpr" in kernels and "mask=mask" in kernels
    assert "#   %tanh = aten.tanh.default(%mul_2)" in kernels, "the kernel names the IR it covers"
    # and through strides: the same values from a transposed input
    xt = x.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    torch.testing.assert_close(run_emitted(loops, xt)[0], run_graph(parse(GELU), [x])[0], rtol=1e-5, atol=1e-6)


def test_broadcast_inputs_scalars_and_math():
    # strided views: a transposed x and a broadcast weight read with stride 2
    x = torch.randn(33, 7, 5).permute(2, 1, 0)
    b = torch.randn(66)[::2]
    loops = check_pointwise(BROADCAST, [x, b, torch.randn(5, 1, 33), torch.tensor(1.5)])
    kernels, _ = emit_triton(loops)
    assert "tl.load(b_ptr + i2 * b_stride2, mask=mask)" in kernels, "broadcast dims contribute no address term"
    assert "tl.load(s_ptr)" in kernels, "a 0-dim input is one scalar load"


def test_integer_and_boolean_chain_like_t5_buckets():
    q = torch.arange(300).view(1, 300) - 150
    k = torch.arange(61).view(61, 1) * 3
    check_pointwise(BUCKETS, [q, k], tile_bytes=4096)


def test_float16_rounds_per_op():
    check_pointwise(HALF, [torch.randn(9, 130).half(), torch.randn(130).half()], rtol=2e-3, atol=2e-3, tile_bytes=512)


def test_group_region_with_two_results():
    graph = parse(GROUP)
    x, w = torch.randn(8, 300), torch.randn(300)
    for got, want in zip(run_emitted(graph, x, w), run_graph(graph, [x, w])):
        torch.testing.assert_close(got, want)
    assert "memplan.group %y as one launch" in emit_triton(graph)[0]


def test_conversions_in_a_group():
    graph = parse(CONVERSIONS)
    x = torch.randn(8, 300)
    for got, want in zip(run_emitted(graph, x), run_graph(graph, [x])):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_untranslatable_body_keeps_its_per_trip_loop_with_a_reason():
    text = """graph odd(%x: f32[64, 16], %y: f32[64, 16]) {
      %a: f32[64, 16] = aten.atan2.default(%x, %y)
      %b: f32[64, 16] = aten.mul.Tensor(%a, 2.0)
      return %b
    }"""
    graph, loops = fused(text, 1024)
    choice = choose_kernels(loops)
    assert not choice.kernels
    (why,) = choice.not_kernels.values()
    assert "aten.atan2.default" in why and "no Triton translation" in why
    x, y = torch.randn(64, 16), torch.randn(64, 16)
    torch.testing.assert_close(run_emitted(loops, x, y)[0], run_graph(graph, [x, y])[0])
    assert "for t in range(" in emit_triton(loops)[1], "the region runs its per-trip PyTorch code"


# ---------------------------------------------------------------- row reductions

@pytest.mark.parametrize("op,dim", SOFTMAXES)
def test_softmax_rows_with_tails_and_strides(op, dim):
    # 3 * 35 rows of 600 (a block of 1024 columns, masked) or 3 * 600 rows of 35
    graph = parse(SOFTMAX.format(op=op, dim=dim))
    x = (torch.randn(600, 35, 3) * 4).permute(2, 1, 0)  # strided: rows are not contiguous
    x[0, 3, :] = -float("inf")  # a masked-out position in some rows, as an attention mask gives
    x[0, 3, 0] = 0.0
    (got,) = run_emitted(graph, x)
    torch.testing.assert_close(got, run_graph(graph, [x.contiguous()])[0], rtol=1e-5, atol=1e-6)
    assert choose_kernels(graph).kernels


def test_layer_norm_all_outputs_with_and_without_affine():
    graph = parse(LAYER_NORM)
    x = torch.randn(19, 7, 4).permute(2, 1, 0) * 3 + 1
    w, b = torch.randn(19), torch.randn(19)
    for got, want in zip(run_emitted(graph, x, w, b), run_graph(graph, [x.contiguous(), w, b])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    kernels = choose_kernels(graph).kernels
    assert len(kernels) == 2 and len({k.name for k in kernels.values()}) == 2


def test_sum_and_mean_rows():
    graph = parse(SUM_MEAN)
    x = torch.randn(130, 5, 6).permute(2, 1, 0)
    for got, want in zip(run_emitted(graph, x), run_graph(graph, [x.contiguous()])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the same kernels, compiled for a GPU

NATIVE = r"""
import json, linecache, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from memplan.backends.triton.kernels import choose_kernels, kernel_module
from memplan.ir.parser import parse
from memplan.passes.fusion import fuse_graph

POINTERS = {"f64": "*fp64", "f32": "*fp32", "f16": "*fp16", "bf16": "*bf16", "i64": "*i64", "i32": "*i32",
            "i16": "*i16", "i8": "*i8", "u8": "*u8", "bool": "*i1"}
for case, (text, tile) in json.load(sys.stdin).items():
    graph = parse(text)
    if tile:
        fuse_graph(graph, tile)
    choice = choose_kernels(graph)
    source = "\n".join(kernel_module(case, choice))
    filename = f"<{case}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": case}
    exec(compile(source, filename, "exec"), namespace)
    for kernel in {k.name: k for k in choice.kernels.values()}.values():
        jit = namespace[kernel.name]
        signature, constants = {}, {}
        for name, arg in zip(jit.arg_names, [a for group in kernel.args for a in group]):
            if arg.kind == "tensor":
                signature[name] = POINTERS[arg.value.type.dtype]
            elif arg.kind == "const":
                signature[name], constants[name] = "constexpr", arg.n
            else:
                signature[name] = "i32"
        compiled = triton.compile(ASTSource(jit, signature, constants), target=GPUTarget("cuda", 90, 32))
        assert "cubin" in compiled.asm, case
        print("compiled", case, kernel.name)
"""


def test_kernels_compile_for_a_gpu():
    # the interpreter runs Python: this checks the same source is valid Triton all the way to an sm_90
    # binary (Triton's compiler needs no GPU for that), in a process where nothing is interpreted
    import json

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", NATIVE], input=json.dumps(CASES), capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    compiled = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("compiled ")}
    assert compiled == set(CASES)


# ---------------------------------------------------------------- whole models

SMALL_FUSION = {"fusion": "on", "fusion_tile_bytes": 4096, "schedule_method": "heuristic"}


def compare_backends(model, inputs, options=SMALL_FUSION, atol=1e-5):
    """The model compiled for both backends: Triton's outputs equal eager's, and its plan is no higher."""
    cm = memplan.compile(model, inputs, backend="triton", options=options)
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(cm(*inputs), expected, rtol=1e-4, atol=atol)
    pytorch = memplan.compile(model, inputs, options=options)
    assert cm.plan.stats["planned_peak_bytes"] <= pytorch.plan.stats["planned_peak_bytes"]
    return cm


def test_gpt2_matches_eager():
    model, inputs = zoo.gpt2(n_layer=2, n_embd=64, n_head=2, seq=64)
    cm = compare_backends(model, inputs)
    kernels = choose_kernels(cm.graph).kernels
    ops = {k.node.op for k in kernels.values()}
    assert ops >= {"memplan.loop", "memplan.group"}
    # each layer norm runs with its residual add as one kernel (a group: the add, then the norm)
    groups = [k for k in kernels.values() if k.node.op == "memplan.group"]
    norms = [k for k in groups if k.node.subgraph.nodes[-1].op == "aten.native_layer_norm.default"]
    assert norms and any(n.op == "aten.add.Tensor" for k in norms for n in k.node.subgraph.nodes)
    # the MLP's first product runs with its gelu as one kernel
    products = [k for k in groups if is_matmul_group(k.node)]
    assert products and all(any(n.op == "aten.gelu.default" for n in k.node.subgraph.nodes) for k in products)
    assert all(k.node.scratch == 0 for k in kernels.values()), "a kernel needs no scratch"
    # nodes with the same kernel code launch one function (the two layers' products)
    functions = {k.name for k in kernels.values()}
    assert len(functions) < len(kernels)
    assert cm.source.count("\n@triton.jit\n") == len(functions) + 1  # and the tanh helper
    assert any(line.startswith("triton: ") for line in cm.log)


class NormGelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(48)

    def forward(self, x):
        h = self.ln(x * 2.0)
        return torch.nn.functional.gelu(h * 3.0 + 1.0, approximate="tanh") - h


def test_measured_peak_equals_planned():
    # what the run allocates is what the plan says, kernel launches included (in the interpreter: its
    # launches would keep their arguments alive until the next garbage collection, were it not for
    # runtime.CollectingLaunch)
    from memplan.profiling import timeline_peak

    model, x = NormGelu().eval(), torch.randn(1, 40, 48)
    cm = memplan.compile(model, (x,), backend="triton", options={"fusion": "on", "fusion_tile_bytes": 1024})
    assert len(choose_kernels(cm.graph).kernels) == 2
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)


def test_llama_matches_eager():
    model, inputs = zoo.llama(n_layer=1, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, seq=32)
    cm = compare_backends(model, inputs)
    kernels = choose_kernels(cm.graph).kernels.values()
    ops = {m.op for k in kernels for m in (k.node.subgraph.nodes if k.node.subgraph is not None else [k.node])}
    assert ops >= {"aten.mean.dim", "aten.rsqrt.default", "aten.silu.default"}, "RMS norm and SwiGLU run as kernels"


def test_t5_matches_eager():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(num_layers=1, num_decoder_layers=1, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                      vocab_size=128, attn_implementation="eager")

    class Seq2Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = T5ForConditionalGeneration(config)

        def forward(self, ids, dec):
            return self.model(input_ids=ids, decoder_input_ids=dec, use_cache=False).logits

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Seq2Seq().eval()
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randint(0, 128, (1, 24), generator=gen), torch.randint(0, 128, (1, 12), generator=gen))
    cm = compare_backends(model, inputs, atol=1e-4)
    kernels = choose_kernels(cm.graph).kernels.values()
    ops = {m.op for k in kernels for m in (k.node.subgraph.nodes if k.node.subgraph is not None else [k.node])}
    assert {"aten.mean.dim", "aten.scaled_dot_product_attention.default"} <= ops


@pytest.mark.slow
def test_resnet50_small_image_matches_eager():
    model, inputs = zoo.resnet50(image=32)
    compare_backends(model, inputs, options={"schedule_method": "heuristic"}, atol=1e-4)


# ---------------------------------------------------------------- contract, names, interpreter, CLI

def test_backend_contract_and_registry():
    backend = get_backend("triton")
    assert isinstance(backend, TritonBackend) and backend.name == "triton"
    with pytest.raises(memplan.errors.MemplanError, match="backends: pytorch, triton"):
        get_backend("cuda")
    graph, loops = fused("""graph g(%x: f32[64, 32]) {
      %a: f32[64, 32] = aten.mul.Tensor(%x, 2.0)
      %b: f32[64, 32] = aten.exp.default(%a)
      return %b
    }""")
    (loop,) = [n for n in loops.nodes if n.op == "memplan.loop"]
    assert backend.writes_into(loop)
    assert backend.scratch(loops, set(), {}) == {}, "the loop is a kernel: no scratch"
    assert get_backend("pytorch").scratch(loops, set(), {}).get(loop.name, 0) > 0, "per trip it has some"


def test_hostile_names_become_identifiers_and_comments():
    hostile = 'x"\nimport os; os.system("echo pwned")  # \u202e'
    g = Graph("g\nimport os")
    x = g.add_input(hostile, TensorType("f32", (64, 24)))
    (a,) = g.add_node("aten.mul.Tensor", (x, 3.0), {}, [TensorType("f32", (64, 24))], name="tl", out_names=["tl"])
    (b,) = g.add_node("aten.tanh.default", (a,), {}, [TensorType("f32", (64, 24))], name="_tanh",
                      out_names=["_tanh"], source=hostile)
    (c,) = g.add_node("aten.add.Tensor", (b, x), {}, [TensorType("f32", (64, 24))], name="kernel_0",
                      out_names=["kernel_0"])
    g.outputs = [c]
    assert fuse_graph(g, 1024)
    kernels, launcher = emit_triton(g)
    for source in (kernels, launcher):
        assert all("os.system" not in line.split("#")[0] for line in source.splitlines()), "only in comments"
        assert "\u202e" not in source and source.isascii()
    assert "v_tl = " in kernels and "v__tanh = _tanh(" in kernels, "values never shadow Triton's names"
    xv = torch.randn(64, 24)
    torch.testing.assert_close(run_emitted(g, xv)[0], torch.tanh(xv * 3) + xv)


def test_interpreter_is_set_up_only_without_a_gpu(monkeypatch):
    from memplan.backends.triton import runtime
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.use_interpreter() is False and "TRITON_INTERPRET" not in os.environ, "a GPU: nothing changes"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.use_interpreter() is True and os.environ["TRITON_INTERPRET"] == "1"
    assert isinstance(tl.sum, InterpretedFunction) and tl.sum is tl.standard.sum


def save_norm_onnx(folder):
    """``folder/my-net.onnx``: LayerNormalization, MatMul, Softmax, Sigmoid, Mul, Add."""
    rng = np.random.default_rng(0)
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 24, 16])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(rng.random(16, dtype=np.float32), "scale"),
             numpy_helper.from_array(rng.random(16, dtype=np.float32), "bias"),
             numpy_helper.from_array(rng.random((16, 16), dtype=np.float32), "w")]
    nodes = [oh.make_node("LayerNormalization", ["x", "scale", "bias"], ["h"], name="ln", axis=-1),
             oh.make_node("MatMul", ["h", "w"], ["s"], name="fc"),
             oh.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
             oh.make_node("Sigmoid", ["h"], ["g"], name="gate"),
             oh.make_node("Mul", ["p", "g"], ["m"], name="mul"),
             oh.make_node("Add", ["m", "h"], ["y"], name="add")]
    model = oh.make_model(oh.make_graph(nodes, "net", [x], [y], inits), opset_imports=[oh.make_opsetid("", 17)])
    path = folder / "my-net.onnx"
    onnx.save(model, path)
    return path


def test_cli_emit_triton_writes_kernels_and_launcher(tmp_path):
    path = save_norm_onnx(tmp_path)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "memplan.cli", "lower", str(path), "--emit", "ir,triton", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    kernels, launcher = out / "my_net_kernels.py", out / "my_net_launcher.py"
    assert kernels.is_file() and launcher.is_file() and (out / "my-net.mir").is_file()
    assert "from my_net_kernels import (" in launcher.read_text()
    assert "@triton.jit" in kernels.read_text() and "softmax" in kernels.read_text()
    sys.path.insert(0, str(out))
    try:
        module = importlib.import_module("my_net_launcher")
        cm = memplan.compile(path, backend="triton")
        x = torch.randn(2, 24, 16)
        torch.testing.assert_close(module.run(cm._weights, x), cm(x))
    finally:
        sys.path.remove(str(out))
        for name in ("my_net_launcher", "my_net_kernels"):
            sys.modules.pop(name, None)
    bad = subprocess.run([sys.executable, "-m", "memplan.cli", "lower", str(path), "--emit", "python,triton",
                          "-o", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "one of them" in bad.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


class ResidualNorm(torch.nn.Module):
    """add + layer norm (a transformer's residual stream) and scale + mask + softmax."""

    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(40)

    def forward(self, x, y, mask):
        h = x + y * 0.5
        scores = torch.softmax(self.ln(h) * 0.125 + mask, dim=-1)
        return scores, h


def test_a_row_reduction_takes_its_elementwise_prologue_into_one_kernel():
    from memplan.ir.regions import GROUP
    from memplan.profiling import timeline_peak
    torch.manual_seed(0)
    model = ResidualNorm().eval()
    inputs = (torch.randn(3, 17, 40), torch.randn(3, 17, 40), torch.randn(17, 40))
    cm = memplan.compile(model, inputs, backend="triton", options={"fusion": "on"})
    groups = [n for n in cm.graph.nodes if n.op == GROUP]
    assert {g.subgraph.nodes[-1].op for g in groups} == {"aten.native_layer_norm.default", "aten._softmax.default"}
    kernels = choose_kernels(cm.graph).kernels
    assert all(g.name in kernels for g in groups)
    with torch.no_grad():
        for got, want in zip(cm(*inputs), model(*inputs)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert timeline_peak(cm, *inputs)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
    # the PyTorch backend runs ops one by one: it forms no such group
    plain = memplan.compile(model, inputs, options={"fusion": "on"})
    assert not any(n.op == GROUP for n in plain.graph.nodes)
