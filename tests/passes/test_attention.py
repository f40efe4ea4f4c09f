"""attention: SDPA and matmul-softmax-matmul become loops over query blocks; exact; planned = measured;
never a higher planned peak in auto mode; reasons for what stays."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import memplan
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.profiling import timeline_peak
from tests.passes.test_passes_on_text import run_pass

SDPA_TEXT = """graph att(%q: f32[1, 2, 16, 8], %k: f32[1, 2, 16, 8], %v: f32[1, 2, 16, 8], %m: bool[1, 1, 16, 16]) {
  %o: f32[1, 2, 16, 8] = aten.scaled_dot_product_attention.default(%q, %k, %v, %m, scale=0.25)
  %r: f32[1, 2, 16, 8] = aten.neg.default(%o)
  return %r
}"""


def _loops(graph):
    return [n for n in graph.nodes if n.op == "memplan.loop"]


def test_sdpa_on_text_becomes_a_loop_over_query_blocks():
    graph = run_pass("attention", SDPA_TEXT, attention="on", attention_block_bytes=1024, attention_min_rows=1)
    (loop,) = _loops(graph)
    spec = loop.kwargs
    assert spec["trips"] == 4
    assert spec["inputs"] == [["slice", 2, 4, 4], ["full"], ["full"], ["slice", 2, 4, 4]]
    assert spec["outputs"] == [["concat", 2]]
    body_ops = [n.op for n in loop.subgraph.nodes]
    assert body_ops == ["aten.where.Scalar", "aten.scaled_dot_product_attention.default"]  # bool -> additive
    assert parse(print_graph(graph)) == graph  # the text round-trips
    assert not any(n.op == "aten.scaled_dot_product_attention.default" for n in graph.nodes)


def test_sdpa_with_dropout_is_left_with_a_reason():
    text = SDPA_TEXT.replace("%m, scale=0.25", "%m, 0.1, scale=0.25")
    graph = run_pass("attention", text, attention="on", attention_block_bytes=1024, attention_min_rows=1)
    assert not _loops(graph)


class Attention(nn.Module):
    """SDPA the way transformers calls it: q, k, v as head views of one projection."""

    def __init__(self, dim=32, heads=4, kv_heads=4, mask="none", causal=False, scale=None):
        super().__init__()
        self.heads, self.kv_heads, self.d = heads, kv_heads, dim // heads
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.d)
        self.mask, self.causal, self.scale = mask, causal, scale
        self.register_buffer("tril", torch.ones(512, 512, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        h, hk, d = self.heads, self.kv_heads, self.d
        q, k, v = self.qkv(x).split([h * d, hk * d, hk * d], dim=-1)
        q = q.view(b, n, h, d).transpose(1, 2)
        k = k.view(b, n, hk, d).transpose(1, 2)
        v = v.view(b, n, hk, d).transpose(1, 2)
        if hk != h:  # transformers' repeat_kv
            k = k[:, :, None].expand(b, hk, h // hk, n, d).reshape(b, h, n, d)
            v = v[:, :, None].expand(b, hk, h // hk, n, d).reshape(b, h, n, d)
        mask = None
        if self.mask == "bool":
            mask = self.tril[:n, :n][None, None]
        elif self.mask == "float":
            mask = torch.arange(n * n, dtype=torch.float32).view(1, 1, n, n).expand(1, h, n, n) * -0.01
        elif self.mask == "built":  # as transformers builds it: from position ids, per call
            pos = torch.arange(n)
            mask = (pos[None, :] <= pos[:, None])[None, None] & (pos % 5 != 1)[None, None, None, :]
            mask = mask.expand(b, 1, n, n)
        elif self.mask == "keys":
            mask = (torch.arange(n) % 3 != 0)[None, None, None, :]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, scale=self.scale)
        return o.transpose(1, 2).reshape(b, n, h * d)


CASES = {
    "plain": dict(),
    "bool_mask": dict(mask="bool"),
    "float_mask_per_head": dict(mask="float"),
    "key_padding_mask": dict(mask="keys"),
    "causal": dict(causal=True),
    "mask_built_from_positions": dict(mask="built"),
    "gqa_repeat_kv": dict(kv_heads=2, causal=True),
    "scale": dict(scale=0.3, mask="bool"),
}


def _compile(model, x, **options):
    return memplan.compile(model, (x,), options={"fusion": "off", "attention_min_rows": 1, **options})


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiled_sdpa_equals_eager_and_measured_equals_planned(case):
    torch.manual_seed(0)
    model = Attention(**CASES[case]).eval()
    x = torch.randn(2, 24, 32)
    cm = _compile(model, x, attention="on", attention_block_bytes=2048)
    loops = _loops(cm.graph)
    assert loops and all(n.kwargs["trips"] > 1 for n in loops)
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)
    assert timeline_peak(cm, x)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
    if case == "mask_built_from_positions":  # each block computes its rows of the mask: no L x L mask
        n = x.shape[1]
        assert not any(v.type.numel >= n * n for node in cm.graph.nodes for v in node.outputs
                       if v.type.dtype == "bool")
        assert any(node.op == "aten.le.Tensor" for node in loops[0].subgraph.nodes)
    if case == "gqa_repeat_kv":  # the repeated copies of k and v are gone
        assert not any(n.op == "aten.clone.default" for n in cm.graph.nodes)
        assert any(n.kwargs.get("enable_gqa") for n in loops[0].subgraph.nodes)


def test_a_query_length_with_no_good_divisor_still_tiles_exactly():
    torch.manual_seed(1)
    model = Attention(mask="bool").eval()
    x = torch.randn(1, 29, 32)  # prime
    cm = _compile(model, x, attention="on", attention_block_bytes=600)
    (loop,) = _loops(cm.graph)
    assert loop.kwargs["trips"] == 29
    with torch.no_grad():
        torch.testing.assert_close(cm(x), model(x), rtol=1e-5, atol=1e-5)


class EagerAttention(nn.Module):
    """T5-style eager attention: scores = q @ k^T (* scale) + position bias + mask; softmax; @ v."""

    def __init__(self, dim=32, heads=4, scale=True, cross=False):
        super().__init__()
        self.h, self.d = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale, self.cross = scale, cross

    def forward(self, x, y):
        b, n, _ = x.shape
        src = y if self.cross else x
        m = src.shape[1]
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2)
        k = self.k(src).view(b, m, self.h, self.d).transpose(1, 2)
        v = self.v(src).view(b, m, self.h, self.d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))
        if self.scale:
            scores = scores / math.sqrt(self.d)
        bias = torch.arange(m, dtype=torch.float32).view(1, 1, 1, m) * 0.01 - torch.arange(
            n, dtype=torch.float32).view(1, 1, n, 1) * 0.02
        pad = torch.where(torch.arange(m) % 4 == 1, -1e9, 0.0).view(1, 1, 1, m)
        scores = scores + bias.expand(1, self.h, n, m) + pad
        probs = F.dropout(torch.softmax(scores.float(), dim=-1).type_as(scores), 0.1, training=self.training)
        out = torch.matmul(probs, v)
        return out.transpose(1, 2).contiguous().view(b, n, -1)


@pytest.mark.parametrize("scale,cross", [(True, False), (False, True)])
def test_the_matmul_softmax_matmul_pattern_tiles_exactly(scale, cross):
    torch.manual_seed(2)
    model = EagerAttention(scale=scale, cross=cross).eval()
    x, y = torch.randn(1, 32, 32), torch.randn(1, 20, 32)
    cm = memplan.compile(model, (x, y), options={"fusion": "off", "attention": "on",
                                                 "attention_block_bytes": 4096, "attention_min_rows": 1})
    (loop,) = _loops(cm.graph)
    assert loop.kwargs["trips"] > 1
    assert not any(n.op in ("aten._softmax.default", "aten.bmm.default") for n in cm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(cm(x, y), model(x, y), rtol=1e-5, atol=1e-5)
    assert timeline_peak(cm, x, y)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]


class ScoresReturned(EagerAttention):
    def forward(self, x, y):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, n, self.h, self.d).transpose(1, 2)
        v = self.v(x).view(b, n, self.h, self.d).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / 4, dim=-1)
        return probs @ v, probs  # the probabilities are an output: nothing to save


def test_attention_whose_probabilities_are_read_elsewhere_stays_with_a_reason():
    model = ScoresReturned().eval()
    x = torch.randn(1, 32, 32)
    cm = memplan.compile(model, (x, x), options={"fusion": "off", "attention": "on",
                                                 "attention_block_bytes": 1024, "attention_min_rows": 1})
    assert not _loops(cm.graph)
    softmax = next(n.name for n in cm.graph.nodes if "softmax" in n.op)
    assert "attention not tiled" in cm.plan.why_not_fused(softmax)


def test_auto_never_raises_the_planned_peak_and_explains_what_it_leaves():
    torch.manual_seed(3)
    model = Attention(mask="bool").eval()
    for n, block in ((16, 256 * 1024), (256, 4096)):
        x = torch.randn(1, n, 32)
        off = _compile(model, x, attention="off").plan.stats["planned_peak_bytes"]
        auto = _compile(model, x, attention="auto", attention_block_bytes=block)
        assert auto.plan.stats["planned_peak_bytes"] <= off
        if not _loops(auto.graph):
            sdpa = next(n.name for n in auto.graph.nodes if "scaled_dot" in n.op)
            assert auto.plan.why_not_fused(sdpa).startswith("attention not tiled")
    assert _loops(auto.graph)  # at 256 tokens the blocks pay


def test_bad_block_bytes_is_one_clear_error():
    with pytest.raises(memplan.MemplanError, match="attention_block_bytes"):
        run_pass("attention", SDPA_TEXT, attention="on", attention_block_bytes=0)
    with pytest.raises(memplan.MemplanError, match="attention_min_rows"):
        run_pass("attention", SDPA_TEXT, attention="on", attention_min_rows=0)


def test_a_budget_the_default_blocks_miss_makes_the_blocks_smaller():
    torch.manual_seed(4)
    model = Attention(mask="bool").eval()
    x = torch.randn(1, 512, 32)
    default = memplan.compile(model, (x,), options={"fusion": "off"})
    (loop,) = _loops(default.graph)
    assert loop.kwargs["trips"] == 2  # 256-query blocks
    budget = default.plan.stats["planned_peak_bytes"] - 64 * 1024
    tight = memplan.compile(model, (x,), memory_budget=budget, options={"fusion": "off"})
    (loop,) = _loops(tight.graph)
    assert loop.kwargs["trips"] > 2
    assert tight.plan.stats["planned_peak_bytes"] <= budget
    with torch.no_grad():
        torch.testing.assert_close(tight(x), model(x), rtol=1e-5, atol=1e-5)
    assert timeline_peak(tight, x)["activation_peak"] == tight.plan.stats["planned_peak_bytes"]


def test_attention_exported_to_onnx_tiles_too(tmp_path):
    """ONNX exports arrive as MatMul -> Div (by an initializer) -> Add -> Softmax -> MatMul."""
    torch.manual_seed(5)
    model = EagerAttention(cross=True).eval()
    x, y = torch.randn(1, 32, 32), torch.randn(1, 20, 32)
    path = tmp_path / "attention.onnx"
    torch.onnx.export(model, (x, y), str(path), dynamo=True, verbose=False)
    cm = memplan.compile(str(path), options={"fusion": "off", "attention": "on", "attention_min_rows": 1,
                                             "attention_block_bytes": 2048})
    (loop,) = _loops(cm.graph)
    assert loop.kwargs["trips"] > 1
    assert not any(n.op in ("aten._softmax.default", "aten.matmul.default") and n.outputs[0].type.rank == 4
                   for n in cm.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(cm(x, y), model(x, y), rtol=1e-5, atol=1e-5)


# ---- found by a hostile review -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mask", ["bool", "causal"])
def test_a_bool_or_causal_mask_in_another_dtype_than_float32(dtype, mask):
    torch.manual_seed(6)
    model = Attention(**({"causal": True} if mask == "causal" else {"mask": "bool"})).eval().to(dtype)
    x = torch.randn(1, 24, 32, dtype=dtype)
    cm = _compile(model, x, attention="on", attention_block_bytes=2048)
    assert _loops(cm.graph)
    with torch.no_grad():
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-9
        torch.testing.assert_close(cm(x), model(x), rtol=tol, atol=tol)


class Reshaped(nn.Module):
    """matmul -> softmax -> matmul whose probabilities are reshaped in between: not attention."""

    def forward(self, q, k, v):
        p = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        b, h, n, _ = p.shape
        return p.reshape(b, h, 2 * n, n // 2) @ v[..., : n // 2, :]


def test_a_pattern_whose_shapes_change_between_the_matmuls_is_not_attention():
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    model = Reshaped()
    cm = memplan.compile(model, (q, k, v), options={"fusion": "off", "attention": "on", "attention_min_rows": 1,
                                                    "attention_block_bytes": 512})
    assert not _loops(cm.graph)
    torch.testing.assert_close(cm(q, k, v), model(q, k, v))


def test_a_budget_below_the_whole_attention_tiles_under_the_minimum_block():
    torch.manual_seed(7)
    model = EagerAttention(scale=True).eval()
    x = torch.randn(1, 256, 32)
    whole = memplan.compile(model, (x, x), options={"fusion": "off", "attention": "off"})
    budget = whole.plan.stats["planned_peak_bytes"] // 2
    cm = memplan.compile(model, (x, x), memory_budget=budget, options={"fusion": "off"})
    assert _loops(cm.graph) and cm.plan.stats["planned_peak_bytes"] <= budget
    with torch.no_grad():
        torch.testing.assert_close(cm(x, x), model(x, x), rtol=1e-5, atol=1e-5)


class SharedKeys(nn.Module):
    """k and v shared by every head (an expanded, stride-0 dim), and a second attention reading the
    first one's output as its query."""

    def forward(self, q, k, v):
        h = F.scaled_dot_product_attention(q, k.expand(-1, 4, -1, -1), v.expand(-1, 4, -1, -1))
        return F.scaled_dot_product_attention(h, k.expand(-1, 4, -1, -1), v.expand(-1, 4, -1, -1), is_causal=True)


def test_stride_zero_keys_and_stacked_attentions_plan_what_they_measure():
    torch.manual_seed(8)
    q, k, v = torch.randn(1, 4, 24, 8), torch.randn(1, 1, 24, 8), torch.randn(1, 1, 24, 8)
    model = SharedKeys()
    cm = memplan.compile(model, (q, k, v), options={"fusion": "off", "attention": "on", "attention_min_rows": 1,
                                                    "attention_block_bytes": 2048})
    assert len(_loops(cm.graph)) == 2  # the second reads the first's loop, not a leftover SDPA
    assert not any(n.op == "aten.scaled_dot_product_attention.default" for n in cm.graph.nodes)
    torch.testing.assert_close(cm(q, k, v), model(q, k, v), rtol=1e-5, atol=1e-5)
    assert timeline_peak(cm, q, k, v)["activation_peak"] == cm.plan.stats["planned_peak_bytes"]
