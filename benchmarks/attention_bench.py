"""Attention at long sequences: memplan's query-block loop vs eager SDPA vs eager matmul-softmax.

    .venv/bin/python benchmarks/attention_bench.py [--lengths 512 2048 8192] [--no-inductor] [--markdown F]

One causal self-attention layer (model dim 256, 4 heads of 64, batch 1: qkv projection, attention,
output projection), written two ways: ``F.scaled_dot_product_attention(is_causal=True)`` (transformers'
``sdpa``) and ``softmax(q @ k^T / 8 + mask) @ v`` with an additive mask held as a buffer (``eager``
attention, T5- and ONNX-style). Per length: the measured activation peak (profiler timeline; weights,
buffers and inputs excluded) and the median time of eager PyTorch, of ``torch.compile`` (Inductor) on
the SDPA form, and of memplan on each form (planned and measured), all in the same run.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memplan  # noqa: E402
from measure import MiB, eager_activation_peak, median_time, timeline_peak, publish  # noqa: E402

DIM, HEADS = 256, 4


class SdpaAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, n, DIM))


class EagerAttention(SdpaAttention):
    def __init__(self, n: int):
        super().__init__()
        mask = torch.full((n, n), float("-inf")).triu(1)
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS) + self.mask
        o = torch.softmax(scores, dim=-1) @ v
        return self.out(o.transpose(1, 2).reshape(b, n, DIM))


def _no_grad(fn):
    def call(*args):
        with torch.no_grad():
            return fn(*args)
    return call


def bench(n: int, inductor: bool) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(1, n, DIM)
    sdpa = SdpaAttention().eval()
    eager = EagerAttention(n).eval()
    eager.load_state_dict(sdpa.state_dict(), strict=False)
    rows, fns = [], {}
    for label, model in (("eager SDPA", sdpa), ("eager matmul-softmax", eager)):
        rows.append({"impl": label, "measured": eager_activation_peak(model, (x,))})
        fns[label] = _no_grad(model)
    if inductor:
        compiled = torch.compile(sdpa)
        _no_grad(compiled)(x)
        rows.append({"impl": "Inductor (SDPA form)", "measured": timeline_peak(_no_grad(compiled), x)["activation_peak"]})
        fns["Inductor (SDPA form)"] = _no_grad(compiled)
    reference = _no_grad(sdpa)(x)
    for label, model in (("memplan (SDPA form)", sdpa), ("memplan (matmul-softmax form)", eager)):
        start = time.perf_counter()
        cm = memplan.compile(model, (x,))
        compile_s = time.perf_counter() - start
        error = (cm(x) - reference).abs().max().item()
        loops = [node for node in cm.graph.nodes if node.name.startswith("attention_")]
        rows.append({"impl": label, "planned": cm.plan.stats["planned_peak_bytes"],
                     "measured": timeline_peak(cm, x)["activation_peak"], "compile": compile_s, "error": error,
                     "trips": loops[0].kwargs["trips"] if loops else None})
        fns[label] = cm
    repeats = 3 if n >= 4096 else 7
    times = median_time({k: (lambda f=f: f(x)) for k, f in fns.items()}, repeats=repeats)
    for r in rows:
        r["n"] = n
        r["time"] = times[r["impl"]]
    return rows


def to_markdown(rows) -> str:
    lines = ["| tokens | implementation | planned | measured | time | max error vs eager SDPA | query blocks | compile |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        planned = f"{r['planned'] / MiB:.2f}" if r.get("planned") is not None else "—"
        error = f"{r['error']:.1e}" if r.get("error") is not None else "—"
        trips = str(r["trips"]) if r.get("trips") else "—"
        comp = f"{r['compile']:.1f} s" if r.get("compile") is not None else "—"
        lines.append(f"| {r['n']:,} | {r['impl']} | {planned} | {r['measured'] / MiB:.2f} | {r['time'] * 1e3:.1f} ms | "
                     f"{error} | {trips} | {comp} |")
    return "\n".join(lines) + (
        "\n\nMemory in MiB: activation peak (weights, the mask buffer and the input excluded; the output "
        "counts). One causal layer, dim 256, 4 heads of 64, batch 1. memplan rows: the default pipeline "
        "(`attention` pass in `auto`); \"query blocks\": trips of the attention loop (— where the pass kept "
        "attention whole). Times: medians of interleaved runs on 2 cores.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[512, 2048, 8192])
    parser.add_argument("--no-inductor", action="store_true")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    rows = []
    for n in args.lengths:
        start = time.perf_counter()
        rows += bench(n, not args.no_inductor)
        print(f"{n} tokens: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return publish(to_markdown(rows), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
