"""The Triton backend's attention kernel: an attention loop (made by the ``attention`` pass) as one
FlashAttention launch. Per mask form the pass produces (none, additive float, bool turned additive,
biases summed, causal, a mask recomputed from position vectors), grouped-query attention, cross
attention with lengths that are no multiples of the blocks, a head dim that is no power of two,
batch 2: equal to eager, one launch for all trips, planned peak no higher than the PyTorch
backend's and measured equal to it. No GPU here: the kernel runs in Triton's interpreter."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import memplan
from memplan import zoo
from memplan.backends.triton import emit_triton, load_triton
from memplan.backends.triton.attention import is_attention
from memplan.backends.triton.kernels import choose_kernels
from memplan.ir.interpret import run_graph
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.profiling import timeline_peak
from tests.passes.test_passes_on_text import run_pass

pytest.importorskip("triton")

# several query blocks per attention: many trips on the CPU, one launch here
OPTIONS = {"attention": "on", "attention_min_rows": 1, "attention_block_bytes": 4096, "fusion": "off"}


class Attention(nn.Module):
    """SDPA as transformers calls it (q, k, v head views of projections), head dim 24; ``lk`` keys from
    a second input of that length for cross attention."""

    def __init__(self, heads=2, kv_heads=2, head_dim=24, mask="none", causal=False):
        super().__init__()
        self.h, self.hk, self.d = heads, kv_heads, head_dim
        self.q = nn.Linear(32, heads * head_dim)
        self.kv = nn.Linear(32, 2 * kv_heads * head_dim)
        self.mask, self.causal = mask, causal

    def forward(self, x, y):
        b, n, m = x.shape[0], x.shape[1], y.shape[1]
        h, hk, d = self.h, self.hk, self.d
        q = self.q(x).view(b, n, h, d).transpose(1, 2)
        k, v = self.kv(y).split(hk * d, dim=-1)
        k = k.view(b, m, hk, d).transpose(1, 2)
        v = v.view(b, m, hk, d).transpose(1, 2)
        if hk != h:  # transformers' repeat_kv: the pass reads the un-repeated k, v (enable_gqa)
            k = k[:, :, None].expand(b, hk, h // hk, m, d).reshape(b, h, m, d)
            v = v[:, :, None].expand(b, hk, h // hk, m, d).reshape(b, h, m, d)
        mask = None
        if self.mask == "float":  # additive, per head, sliced by query block
            mask = torch.arange(n * m, dtype=torch.float32).view(1, 1, n, m).expand(1, h, n, m) * -0.003
        elif self.mask == "bool":  # with rows whose every key is masked: SDPA gives 0 there
            keep = torch.arange(m)[None, :] <= torch.arange(n)[:, None] + 3
            keep = keep & (torch.arange(n) % 7 != 5)[:, None]
            mask = keep[None, None]
        elif self.mask == "keys":  # a key padding mask, read whole (broadcast over queries and heads)
            mask = (torch.arange(m) % 5 != 2)[None, None, None, :].expand(b, 1, 1, m)
        elif self.mask == "built":  # as transformers builds a causal mask: from position ids, per call
            pos, kpos = torch.arange(n), torch.arange(m)
            mask = (kpos[None, :] <= pos[:, None])[None, None] & (kpos % 3 != 1)[None, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)
        return o.transpose(1, 2).reshape(b, n, h * d)


class EagerAttention(nn.Module):
    """T5-style: scores = q @ k^T + position bias + padding mask (two biases, summed per block)."""

    def __init__(self, heads=2, head_dim=24):
        super().__init__()
        self.h, self.d = heads, head_dim
        self.q, self.k, self.v = (nn.Linear(32, heads * head_dim) for _ in range(3))

    def forward(self, x, y):
        b, n, m = x.shape[0], x.shape[1], y.shape[1]
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2)
        k = self.k(y).view(b, m, self.h, self.d).transpose(1, 2)
        v = self.v(y).view(b, m, self.h, self.d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d)
        bias = (torch.arange(m, dtype=torch.float32).view(1, 1, 1, m) * 0.01
                - torch.arange(n, dtype=torch.float32).view(1, 1, n, 1) * 0.02)
        pad = torch.where(torch.arange(m) % 4 == 1, -1e9, 0.0).view(1, 1, 1, m)
        scores = scores + bias.expand(1, self.h, n, m) + pad
        probs = torch.softmax(scores.float(), dim=-1).type_as(scores)
        return torch.matmul(probs, v).transpose(1, 2).contiguous().view(b, n, -1)


# (module, query length, key length): 72 keys are two key blocks of 64, the second a tail; 72
# queries two query blocks; 40 queries one block with a tail
CASES = {
    "plain": (lambda: Attention(), 72, 72),
    "float_mask": (lambda: Attention(mask="float"), 40, 72),
    "bool_mask_fully_masked_rows": (lambda: Attention(mask="bool"), 40, 72),
    "key_padding_bool": (lambda: Attention(mask="keys"), 40, 72),
    "causal": (lambda: Attention(causal=True), 72, 72),
    "mask_built_from_positions": (lambda: Attention(mask="built"), 72, 72),
    "gqa_causal": (lambda: Attention(heads=4, kv_heads=2, causal=True), 40, 40),
    "biases_summed_cross": (lambda: EagerAttention(), 40, 72),
}


def attention_loops(graph):
    return [n for n in graph.nodes if is_attention(n)]


def compile_case(case):
    make, n, m = CASES[case]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make().eval()
        x, y = torch.randn(2, n, 32), torch.randn(2, m, 32)
    return model, (x, y), memplan.compile(model, (x, y), backend="triton", options=OPTIONS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_attention_loop_is_one_kernel_equal_to_eager(case):
    model, inputs, cm = compile_case(case)
    (loop,) = attention_loops(cm.graph)
    assert loop.kwargs["trips"] > 1, "the pass tiled it: on the PyTorch backend it runs trip by trip"
    choice = choose_kernels(cm.graph)
    assert loop.name in choice.kernels and not choice.not_kernels, choice.not_kernels
    kernel = choice.kernels[loop.name]
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)
    # one launch covers every trip: no per-trip loop in the launcher, the kernel launched once
    assert "for t in range(" not in cm.source
    assert cm.source.count(f"{kernel.name}[(") == 1 and "all" in cm.source and "trips in one launch" in cm.source
    assert cm.source.count("\n@triton.jit\n") == 1 and "tl.dot(q, kt" in cm.source
    assert loop.scratch == 0, "the kernel needs no scratch"
    if case in ("causal", "gqa_causal", "mask_built_from_positions"):
        assert "n_visible = tl.minimum(n_keys, start_m + BLOCK_M)" in cm.source, "key blocks past the diagonal skipped"
        assert "the key index itself, not read" in cm.source, "the positions are the indices"
    if case == "gqa_causal":
        assert "kv_head = " in cm.source and not any(n.op == "aten.clone.default" for n in cm.graph.nodes)


# one head, batch 1: the profiler behind timeline_peak slows the interpreter down many times
SMALL = {"bool_mask": (lambda: Attention(heads=1, kv_heads=1, mask="bool"), 24, 40),
         "biases_summed": (lambda: EagerAttention(heads=1), 24, 24)}


@pytest.mark.parametrize("case", sorted(SMALL))
def test_planned_peak_no_higher_than_pytorch_and_measured_equal(case):
    make, n, m = SMALL[case]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make().eval()
        inputs = (torch.randn(1, n, 32), torch.randn(1, m, 32))
    cm = memplan.compile(model, inputs, backend="triton", options=OPTIONS)
    (loop,) = attention_loops(cm.graph)
    assert loop.name in choose_kernels(cm.graph).kernels
    pytorch = memplan.compile(model, inputs, options=OPTIONS)
    assert attention_loops(pytorch.graph)
    assert cm.plan.stats["planned_peak_bytes"] <= pytorch.plan.stats["planned_peak_bytes"]
    assert timeline_peak(cm, *inputs)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]


def test_fully_masked_rows_are_zero():
    model, (x, y), cm = compile_case("bool_mask_fully_masked_rows")
    out = cm(x, y).view(2, 40, 2, 24)
    assert (out[:, 5::7] == 0).all() and (out[:, 4] != 0).any()


# ---------------------------------------------------------------- from IR text: forms and fallbacks

def tiled(text: str, block_bytes: int = 1024):
    graph = run_pass("attention", text, attention="on", attention_block_bytes=block_bytes, attention_min_rows=1)
    assert attention_loops(graph)
    return graph


def run_emitted(graph, *inputs):
    kernels, launcher = emit_triton(graph)
    out = load_triton(kernels + "\n\n" + launcher)({}, *inputs)
    return out if isinstance(out, tuple) else (out,)


# half precision, causal, grouped-query, one query per trip (each trip's mask block has one row)
HALF_GQA = """graph att(%q: f16[1, 4, 72, 24], %k: f16[1, 2, 72, 24], %v: f16[1, 2, 72, 24]) {
  %o: f16[1, 4, 72, 24] = aten.scaled_dot_product_attention.default(%q, %k, %v, None, 0.0, True, enable_gqa=True)
  return %o
}"""

# a float mask sliced by query block, k given transposed (strided reads), one row per trip
SLICED = """graph att(%q: f32[2, 3, 24, 24], %kt: f32[2, 3, 24, 40], %v: f32[2, 3, 40, 20], %m: f32[2, 1, 24, 40]) {
  %k: f32[2, 3, 40, 24] = aten.permute.default(%kt, [0, 1, 3, 2])
  %o: f32[2, 3, 24, 20] = aten.scaled_dot_product_attention.default(%q, %k, %v, %m, scale=0.3)
  return %o
}"""

# a mask recomputed per block from small tensors by an op the kernel has no translation for
ATAN2 = """\
graph att(%q: f32[1, 2, 40, 24], %k: f32[1, 2, 72, 24], %v: f32[1, 2, 72, 24], %a: f32[40, 1], %b: f32[1, 72]) {
  %r: f32[40, 72] = aten.atan2.default(%a, %b)
  %o: f32[1, 2, 40, 24] = aten.scaled_dot_product_attention.default(%q, %k, %v, %r)
  return %o
}"""


def test_half_precision_gqa_causal_with_one_query_per_trip():
    graph = tiled(HALF_GQA)
    (loop,) = attention_loops(graph)
    assert loop.kwargs["trips"] == 72
    assert set(choose_kernels(graph).kernels) == {loop.name}
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 72, 24, generator=gen).half() for h in (4, 2, 2))
    (want,) = run_graph(parse(HALF_GQA), [q, k, v])
    (got,) = run_emitted(graph, q, k, v)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    assert (got.float() - exact).abs().max() < 1e-3, "computed in float32, rounded once"


def test_strided_inputs_a_sliced_mask_and_other_head_dims():
    graph = tiled(SLICED, block_bytes=512)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 24, 3, 24, generator=gen).transpose(1, 2)  # a head view: strided
    kt = torch.randn(2, 3, 24, 40, generator=gen)
    v = torch.randn(2, 3, 40, 20, generator=gen)
    m = torch.randn(2, 1, 24, 40, generator=gen)
    (want,) = run_graph(parse(SLICED), [q.contiguous(), kt, v, m])
    (got,) = run_emitted(graph, q, kt, v, m)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    kernels, _ = emit_triton(graph)
    assert "HEAD: tl.constexpr" in kernels and "dq_mask = dq < head_dim" in kernels


def test_untranslatable_mask_keeps_the_per_trip_loop_with_a_reason():
    graph = tiled(ATAN2)
    (loop,) = attention_loops(graph)
    choice = choose_kernels(graph)
    assert loop.name not in choice.kernels
    assert "aten.atan2.default" in choice.not_kernels[loop.name]
    gen = torch.Generator().manual_seed(2)
    inputs = [torch.randn(*s, generator=gen) for s in ((1, 2, 40, 24), (1, 2, 72, 24), (1, 2, 72, 24), (40, 1),
                                                        (1, 72))]
    (got,) = run_emitted(graph, *inputs)
    torch.testing.assert_close(got, run_graph(parse(ATAN2), inputs)[0], rtol=1e-5, atol=1e-5)
    assert "for t in range(" in emit_triton(graph)[1], "the loop runs its per-trip PyTorch code"


# q is made here and dies at the attention: the output is written over it
IN_PLACE = """graph att(%x: f32[1, 2, 48, 24], %k: f32[1, 2, 48, 24], %v: f32[1, 2, 48, 24], %m: f32[1, 2, 48, 48]) {
  %q: f32[1, 2, 48, 24] = aten.mul.Tensor(%x, 0.5)
  %o: f32[1, 2, 48, 24] = aten.scaled_dot_product_attention.default(%q, %k, %v, %m)
  %r: f32[1, 2, 48, 24] = aten.neg.default(%o)
  return %r
}"""


def test_output_written_over_the_query_it_reads():
    cm = memplan.compile(parse(IN_PLACE), backend="triton", options=OPTIONS)
    (loop,) = attention_loops(cm.graph)
    assert loop.reuses is not None and loop.reuses.name == "q"
    assert loop.name in choose_kernels(cm.graph).kernels
    assert "#   in place: %attention_o is written over %q" in cm.source
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(1, 2, 48, n, generator=gen) for n in (24, 24, 24, 48)]
    torch.testing.assert_close(cm(*inputs), run_graph(parse(IN_PLACE), inputs)[0], rtol=1e-5, atol=1e-5)
    assert timeline_peak(cm, *inputs)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]


def test_hostile_names_become_identifiers_and_comments():
    from memplan.ir import Graph, TensorType
    from memplan.passes.attention import tile_attention

    hostile = 'm"\nimport os; os.system("echo pwned")  # \u202e'
    g = Graph("g\nimport os")
    q, k, v = (g.add_input(name, TensorType("f32", (1, 2, 32, 16))) for name in ("q", "tl", "scores"))
    m = g.add_input(hostile, TensorType("f32", (1, 1, 32, 32)))
    (o,) = g.add_node("aten.scaled_dot_product_attention.default", (q, k, v, m), {},
                      [TensorType("f32", (1, 2, 32, 16))], name="acc", out_names=["p"], source=hostile)
    g.outputs = [o]
    eager = g.copy()
    assert tile_attention(g, 1024, min_rows=1) and not choose_kernels(g).not_kernels
    kernels, launcher = emit_triton(g)
    for source in (kernels, launcher):
        assert all("os.system" not in line.split("#")[0] for line in source.splitlines()), "only in comments"
        assert "\u202e" not in source and source.isascii()
    gen = torch.Generator().manual_seed(4)
    inputs = [torch.randn(1, 2, 32, n, generator=gen) for n in (16, 16, 16)] + [torch.randn(1, 1, 32, 32)]
    torch.testing.assert_close(run_emitted(g, *inputs)[0], run_graph(eager, inputs)[0], rtol=1e-5, atol=1e-5)


from tests.backends.test_triton_backend import NATIVE  # noqa: E402  (the same compile-for-sm_90 script)



def test_attention_kernels_compile_for_a_gpu():
    # the interpreter runs Python: the same source must be valid Triton down to an sm_90 binary
    pytest.importorskip("triton.backends.nvidia.compiler")
    built = """graph att(%q: f32[1, 2, 72, 24], %k: f32[1, 2, 72, 24], %v: f32[1, 2, 72, 24], %pad: bool[1, 1, 1, 72]) {
      %i: i64[72] = aten.arange.start_step(0, 72)
      %qi: i64[72, 1] = aten.unsqueeze.default(%i, 1)
      %ki: i64[1, 72] = aten.unsqueeze.default(%i, 0)
      %le: bool[72, 72] = aten.le.Tensor(%ki, %qi)
      %keep: bool[1, 1, 72, 72] = aten.bitwise_and.Tensor(%le, %pad)
      %o: f32[1, 2, 72, 24] = aten.scaled_dot_product_attention.default(%q, %k, %v, %keep)
      return %o
    }"""
    cases = {"half_gqa": print_graph(tiled(HALF_GQA)), "sliced": print_graph(tiled(SLICED, 512)),
             "built": print_graph(tiled(built, 2048))}
    assert "aten.le.Tensor" in cases["built"], "the mask is recomputed per block"
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", NATIVE], input=json.dumps({c: (t, 0) for c, t in cases.items()}),
                       capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {line.split()[1] for line in r.stdout.splitlines() if line.startswith("compiled ")} == set(cases)


# ---------------------------------------------------------------- whole models

def test_gpt2_end_to_end():
    model, inputs = zoo.gpt2(n_layer=1, n_embd=64, n_head=2, seq=64)
    cm = memplan.compile(model, inputs, backend="triton", options=OPTIONS)
    (loop,) = attention_loops(cm.graph)
    assert loop.name in choose_kernels(cm.graph).kernels
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
    pytorch = memplan.compile(model, inputs, options=OPTIONS)
    assert cm.plan.stats["planned_peak_bytes"] <= pytorch.plan.stats["planned_peak_bytes"]
    assert any("attention" in line for line in cm.log if line.startswith("triton: "))


def test_t5_style_encoder_decoder_end_to_end():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(num_layers=1, num_decoder_layers=1, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                      vocab_size=128, attn_implementation="eager")

    class Seq2Seq(nn.Module):
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
    cm = memplan.compile(model, inputs, backend="triton", options=OPTIONS)
    loops = attention_loops(cm.graph)
    kernels = choose_kernels(cm.graph).kernels
    assert len(loops) == 3 and all(n.name in kernels for n in loops), "encoder, decoder and cross attention"
    with torch.no_grad():
        torch.testing.assert_close(cm(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
    pytorch = memplan.compile(model, inputs, options=OPTIONS)
    assert cm.plan.stats["planned_peak_bytes"] <= pytorch.plan.stats["planned_peak_bytes"]
