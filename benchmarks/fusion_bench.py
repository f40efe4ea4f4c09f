"""Fusion: kernel count, modelled bytes moved and peak memory with and without it, beside Inductor.

    .venv/bin/python benchmarks/fusion_bench.py [names ...] [--no-inductor] [--markdown F]

Per model: memplan's kernels (every step that is not a view; a fused region counts as one kernel, as it
is on the Triton backend) and the bytes those kernels read and write (each kernel reads its inputs
and writes its outputs once: the traffic a roofline model charges), without fusion (``fusion=off``,
``attention=off``) and with the default pipeline; TorchInductor's kernel count on the same model (the
calls in its generated ``call()``: fused C++ kernels, extern GEMMs, aten fallbacks); the kernels of
memplan's Triton backend on the same model; and the planned and measured activation peaks with and
without fusion, beside Inductor's measured one.
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


def launches(graph, kernels: set[str] = frozenset()) -> tuple[int, int]:
    """(kernel launches, modelled bytes read + written) of one run of a planned graph: a node of
    ``kernels`` (a Triton kernel) launches once and moves its boundary's bytes; another region runs
    its body once per trip plus the copy of each trip's results; views launch nothing."""
    count = moved = 0
    for node in graph.nodes:
        if node.subgraph is None and lookup(node.op, node=node.name).view:
            continue
        boundary = sum(v.nbytes for v in dict.fromkeys(node.inputs)) + sum(v.nbytes for v in node.outputs)
        if node.subgraph is None or node.name in kernels:
            count, moved = count + 1, moved + boundary
            continue
        trips = int(node.kwargs.get("trips", 1))
        inner, inner_bytes = launches(node.subgraph)
        count += trips * (inner + len(node.outputs))
        moved += trips * (inner_bytes + 2 * sum(v.nbytes for v in node.subgraph.outputs))
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
    from memplan.backends.triton.kernels import choose_kernels

    model, inputs = build()
    off = memplan.compile(model, inputs, options=OFF)
    on = memplan.compile(model, inputs)
    triton = memplan.compile(model, inputs, backend="triton")
    row = {"model": label}
    for key, cm in (("off", off), ("on", on)):
        row[f"{key}_kernels"], row[f"{key}_bytes"] = launches(cm.graph)
        row[f"{key}_planned"] = cm.plan.stats["planned_peak_bytes"]
        row[f"{key}_measured"] = timeline_peak(cm, *inputs)["activation_peak"]
    chosen = choose_kernels(triton.graph).kernels
    row["triton_kernels"], row["triton_bytes"] = launches(triton.graph, set(chosen))
    row["triton_planned"] = triton.plan.stats["planned_peak_bytes"]
    row["regions"] = len(chosen)
    row["inductor_kernels"] = row["inductor_peak"] = row["inductor_split"] = None
    if inductor:
        row["inductor_kernels"], row["inductor_peak"], row["inductor_split"] = inductor_kernels(model, inputs)
    times = median_time({"off": lambda: off(*inputs), "on": lambda: on(*inputs)}, repeats=7)
    row["time"] = times["on"] / times["off"]
    return row


def to_markdown(rows) -> str:
    def mib(x):
        return "—" if x is None else f"{x / MiB:.2f}"
    lines = ["| model | launches: unfused | fused, PyTorch backend | Triton backend (Triton kernels) | "
             "Inductor (fused+extern+aten) | bytes moved: unfused | Triton backend | planned: unfused | "
             "**fused** | Triton backend | measured: unfused | **fused** | Inductor measured | "
             "time fused / unfused |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ind = "—" if r["inductor_kernels"] is None else f"{r['inductor_kernels']} ({r['inductor_split']})"
        lines.append(f"| {r['model']} | {r['off_kernels']} | {r['on_kernels']} | {r['triton_kernels']} "
                     f"({r['regions']}) | {ind} | {mib(r['off_bytes'])} | {mib(r['triton_bytes'])} | "
                     f"{mib(r['off_planned'])} | **{mib(r['on_planned'])}** | {mib(r['triton_planned'])} | "
                     f"{mib(r['off_measured'])} | **{mib(r['on_measured'])}** | {mib(r['inductor_peak'])} | "
                     f"{r['time']:.2f}× |")
    return "\n".join(lines) + (
        "\n\nMemory and bytes in MiB (activations: weights and inputs excluded; bytes moved count every "
        "input a kernel reads, weights included). Launches: kernel calls of one run, views excluded; on the "
        "PyTorch backend a fused loop runs its body once per tile (plus the copy of each tile's result), on "
        "the Triton backend a region or row reduction with a Triton template is one launch (how many are in "
        "brackets) and moves only its boundary's bytes. Unfused: `fusion=off, attention=off`; fused: the "
        "default pipeline (`auto`: a region is kept only where the planned peak falls — or, at an equal "
        "peak, the roofline time — so fused is never above unfused). Times: the PyTorch backend, fused "
        "over unfused, medians of interleaved runs.\n")


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
