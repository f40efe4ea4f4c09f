"""Planning benchmark: memplan's order + arena against eager PyTorch and torch.compile, per model.

For each model (zoo families through torch.export; the ONNX backend suite's
``light_*.onnx`` "real" models through the ONNX frontend) this prints:

- nodes: IR nodes after canonicalisation;
- eager: measured activation peak of eager PyTorch (profiler memory timeline:
  peak minus weights and inputs); for ONNX models, the graph run in file order
  with every value freed at its last use (what an eager runtime does);
- inductor: measured activation peak of ``torch.compile`` (CPU, Inductor);
- topo / heuristic: live-bytes peak of the topological order and of the best
  scheduling heuristic (plan statistics);
- memplan planned / measured: the plan's peak (arena + outputs + kernel
  scratch) and the emitted code's measured activation peak;
- bound: the order-independent lower bound on live bytes;
- solve: scheduling + allocation wall time;
- time: memplan's emitted code / eager, median of interleaved runs.

Run: ``.venv/bin/python benchmarks/plan_bench.py [--no-inductor] [--markdown FILE] [names...]``.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import MiB, eager_activation_peak, median_time, timeline_peak, publish  # noqa: E402

import memplan  # noqa: E402
from memplan import zoo  # noqa: E402

ZOO = [("gpt2-2L", "gpt2", {}), ("gpt2-12L", "gpt2", {"n_layer": 12}), ("bert-2L", "bert", {}),
       ("llama-2L", "llama", {}), ("resnet50", "resnet50", {}), ("unet", "unet", {})]
# file order, values freed at last use: what an eager runtime does
DYNAMIC = dict(pipeline=["verify", "canonicalize", "schedule", "verify_plan"], options={"schedule_method": "baseline"})


def light_models() -> list[tuple[str, str]]:
    import onnx
    here = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    return [(Path(p).stem.replace("light_", ""), p) for p in sorted(glob.glob(os.path.join(here, "light_*.onnx")))]


def _solve_seconds(plan) -> float:
    return sum(s["wall_s"] for s in plan.stats.get("solves", []))


def _slots(graph) -> str:
    """How the plan holds the values that own bytes: in a slot / kernel-owned (own buffers: outputs)."""
    kinds = [v.alloc.kind for v in graph.values() if v.alloc is not None]
    return f"{kinds.count('slot')}/{kinds.count('kernel')}"


def _row(label, cm, eager_peak, inductor_peak, measured, ratio) -> dict:
    s = cm.plan.stats
    joint = s["joint"]["candidates"]
    return {"model": label, "nodes": len(cm.graph.nodes), "eager": eager_peak, "inductor": inductor_peak,
            "topo": s["topological_peak_bytes"], "heuristic": s["heuristic_peak_bytes"],
            "order": s["peak_bytes"], "bound": s["lower_bound_bytes"],
            "topo_arena": joint["baseline"]["planned"], "order_arena": joint["scheduler"]["planned"],
            "free": s.get("free_at_last_use_peak_bytes"), "slots": _slots(cm.graph),
            "planned": s["planned_peak_bytes"], "measured": measured,
            "solve": _solve_seconds(cm.plan), "time": ratio}


def bench_zoo(label, family, kwargs, inductor: bool) -> dict:
    model, inputs = zoo.build(family, **kwargs)
    cm = memplan.compile(model, inputs)
    eager_peak = eager_activation_peak(model, inputs)
    measured = timeline_peak(cm, *inputs)["activation_peak"]
    inductor_peak = None
    if inductor:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(*inputs)  # compile outside the measurement
        inductor_peak = timeline_peak(lambda: _no_grad(compiled, inputs))["activation_peak"]

    def eager():
        with torch.inference_mode():
            return model(*inputs)
    times = median_time({"eager": eager, "memplan": lambda: cm(*inputs)}, repeats=9)
    return _row(label, cm, eager_peak, inductor_peak, measured, times["memplan"] / times["eager"])


def _no_grad(fn, inputs):
    with torch.no_grad():
        return fn(*inputs)


def bench_onnx(label, path) -> dict:
    cm = memplan.compile(path)
    inputs = [torch.rand([int(d) for d in v.type.shape], dtype=v.type.torch_dtype) for v in cm.graph.inputs]
    plain = memplan.compile(path, **DYNAMIC)
    eager_peak = timeline_peak(plain, *inputs)["activation_peak"]
    measured = timeline_peak(cm, *inputs)["activation_peak"]
    times = median_time({"eager": lambda: plain(*inputs), "memplan": lambda: cm(*inputs)}, repeats=5)
    return _row(label + " (onnx)", cm, eager_peak, None, measured, times["memplan"] / times["eager"])


def to_markdown(rows) -> str:
    def mib(x):
        return "—" if x is None else f"{x / MiB:.2f}"
    lines = ["| model | nodes | eager (measured) | inductor (measured) | live peak: topo order | best heuristic | "
             "memplan order | lower bound | planned: topo order + storage | memplan order + storage | "
             "free at last use | **memplan planned** | memplan measured | slot/kernel values | solve | time vs eager |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['nodes']} | {mib(r['eager'])} | {mib(r['inductor'])} | {mib(r['topo'])} | "
                     f"{mib(r['heuristic'])} | {mib(r['order'])} | {mib(r['bound'])} | {mib(r['topo_arena'])} | "
                     f"{mib(r['order_arena'])} | {mib(r['free'])} | **{mib(r['planned'])}** | {mib(r['measured'])} | "
                     f"{r['slots']} | {r['solve']:.2f} s | {r['time']:.2f}× |")
    return "\n".join(lines) + ("\n\nAll memory columns in MiB (activations: weights and inputs excluded). "
                               "\"+ storage\": every value with an out= form in a static storage (allocated for the "
                               "whole run); \"free at last use\": every value kernel-owned, freed at its last use "
                               "(— where it cannot beat the storage); memplan keeps a slot for each value that does "
                               "not raise the peak.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="model labels to run (default: all)")
    parser.add_argument("--no-inductor", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX light models")
    parser.add_argument("--markdown", help="write the table to this file")
    args = parser.parse_args(argv)
    rows = []
    for label, family, kwargs in ZOO:
        if not args.names or label in args.names:
            start = time.perf_counter()
            rows.append(bench_zoo(label, family, kwargs, not args.no_inductor))
            print(f"{label}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if not args.no_onnx:
        for label, path in light_models():
            if not args.names or label in args.names:
                rows.append(bench_onnx(label, path))
                print(f"{label} (onnx) done", file=sys.stderr)
    return publish(to_markdown(rows), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
