"""Fusion: kernel count, modelled bytes moved and peak memory with and without it, beside Inductor.

    .venv/bin/python benchmarks/fusion_bench.py [names ...] [--no-inductor] [--markdown F]

Per model: memplan's kernels (every step that is not a view; a fused region counts as one kernel, as it
is on the Triton backend) and the bytes those kernels read and write (each kernel reads its inputs
and writes its outputs once: the traffic a roofline model charges), without fusion (``fusion=off``,
``attention=off``) and with the default pipeline; TorchInductor's kernel count on the same model (the
calls in its generated ``call()``: fused C++ kernels, extern GEMMs, aten fallbacks); and the planned
and measured activation peaks with and without fusion, beside Inductor's measured one.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402
import memplan  # noqa: E402
from measure import MiB, median_time, timeline_peak, publish  # noqa: E402
from memplan import zoo  # noqa: E402
from memplan.ir.ops import lookup  # noqa: E402

MODELS = [
    ("gpt2-2L", lambda: zoo.gpt2(n_layer=2)),
    ("gpt2-2L, 512 tokens", lambda: zoo.gpt2(n_layer=2, seq=512)),
    ("bert-2L", lambda: zoo.bert(n_layer=2)),
    ("bert-2L, 512 tokens", lambda: zoo.bert(n_layer=2, seq=512)),
    ("llama-2L", lambda: zoo.llama(n_layer=2)),
    ("llama-2L, 512 tokens", lambda: zoo.llama(n_layer=2, seq=512)),
    ("t5 (encoder-decoder)", families.t5),
    ("resnet50", lambda: zoo.resnet50()),
    ("convnext", families.convnext),
]
OFF = {"fusion": "off", "attention": "off"}


def kernels(graph) -> tuple[int, int]:
    """(kernel count, modelled bytes read + written) of a planned graph."""
    count = moved = 0
    for node in graph.nodes:
        if node.subgraph is None and lookup(node.op, node=node.name).view:
            continue
        count += 1
        moved += sum(v.nbytes for v in dict.fromkeys(node.inputs)) + sum(v.nbytes for v in node.outputs)
    return count, moved


def inductor_kernels(model, inputs) -> tuple[int, int, str]:
    """(kernel calls in Inductor's generated code, its measured activation peak, breakdown)."""
    from torch._inductor.utils import run_and_get_code

    compiled = torch.compile(model)
    with torch.no_grad():
        _, codes = run_and_get_code(compiled, *inputs)
    fused = extern = fallback = 0
    for code in codes:
        call = code[code.find("def call("):]
        fused += len(re.findall(r"^\s+cpp_fused_\w+\(", call, re.M))
        extern += len(re.findall(r"extern_kernels\.\w+\(", call))
        fallback += len(re.findall(r"torch\.ops\.\w+\.\w+(?:\.\w+)?\(", call))

    def run():
        with torch.no_grad():
            return compiled(*inputs)
    peak = timeline_peak(run)["activation_peak"]
    return fused + extern + fallback, peak, f"{fused}+{extern}+{fallback}"


def bench(label, build, inductor: bool) -> dict:
    model, inputs = build()
    off = memplan.compile(model, inputs, options=OFF)
    on = memplan.compile(model, inputs)
    row = {"model": label}
    for key, cm in (("off", off), ("on", on)):
        row[f"{key}_kernels"], row[f"{key}_bytes"] = kernels(cm.graph)
        row[f"{key}_planned"] = cm.plan.stats["planned_peak_bytes"]
        row[f"{key}_measured"] = timeline_peak(cm, *inputs)["activation_peak"]
    row["regions"] = sum(1 for n in on.graph.nodes if n.subgraph is not None)
    row["inductor_kernels"] = row["inductor_peak"] = row["inductor_split"] = None
    if inductor:
        row["inductor_kernels"], row["inductor_peak"], row["inductor_split"] = inductor_kernels(model, inputs)
    times = median_time({"off": lambda: off(*inputs), "on": lambda: on(*inputs)}, repeats=7)
    row["time"] = times["on"] / times["off"]
    return row


def to_markdown(rows) -> str:
    def mib(x):
        return "—" if x is None else f"{x / MiB:.2f}"
    lines = ["| model | kernels: unfused | fused (regions) | Inductor (fused+extern+aten) | bytes moved: unfused | "
             "fused | planned: unfused | **fused** | measured: unfused | **fused** | Inductor measured | "
             "time fused / unfused |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ind = "—" if r["inductor_kernels"] is None else f"{r['inductor_kernels']} ({r['inductor_split']})"
        lines.append(f"| {r['model']} | {r['off_kernels']} | {r['on_kernels']} ({r['regions']}) | {ind} | "
                     f"{mib(r['off_bytes'])} | {mib(r['on_bytes'])} | {mib(r['off_planned'])} | "
                     f"**{mib(r['on_planned'])}** | {mib(r['off_measured'])} | **{mib(r['on_measured'])}** | "
                     f"{mib(r['inductor_peak'])} | {r['time']:.2f}× |")
    return "\n".join(lines) + (
        "\n\nMemory and bytes in MiB (activations: weights and inputs excluded). Kernels: steps that are not "
        "views; a fused region (`memplan.loop` of `fuse` or `attention`) counts once, as on the Triton backend "
        "(on the PyTorch backend it runs its body once per tile). Bytes moved: each kernel reads its inputs "
        "and writes its outputs once. Unfused: `fusion=off, attention=off`; fused: the default pipeline "
        "(`auto`: a region is kept only where the planned peak falls, so fused is never above unfused).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--no-inductor", action="store_true")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    rows = []
    for label, build in MODELS:
        if args.names and label not in args.names:
            continue
        start = time.perf_counter()
        rows.append(bench(label, build, not args.no_inductor))
        print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return publish(to_markdown(rows), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
