"""Capture and code generation add no memory: eager vs. memplan's emitted code.

For each zoo family this measures, with the profiler memory timeline
(``shared/MEASURING.md``), the activation peak (timeline peak minus the
weights and inputs resident before the call) of

- eager PyTorch (``model(*inputs)`` under no_grad),
- memplan's emitted Python without the arena (values freed at last use, in
  memplan's order): what capture + code generation cost by themselves,
- the same for the model exported to ONNX
  (``torch.onnx.export(..., dynamo=True)`` then ``memplan.compile(path)``),

and prints them beside memplan's planned peak, with the max abs difference
of the outputs. Run::

    .venv/bin/python benchmarks/capture_memory.py [family ...] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import MiB, eager_activation_peak, timeline_peak, publish  # noqa: E402

import memplan  # noqa: E402
from memplan import zoo  # noqa: E402

NO_ARENA = ["verify", "canonicalize", "schedule", "verify_plan"]

DEFAULT_FAMILIES = [("gpt2", {}), ("gpt2", {"n_layer": 12}), ("bert", {}), ("llama", {}),
                    ("resnet50", {}), ("unet", {})]


def measure_family(name: str, kwargs: dict) -> dict:
    """Eager vs emitted-code activation peaks (bytes) for one zoo family."""
    model, inputs = zoo.build(name, **kwargs)
    start = time.perf_counter()
    cm = memplan.compile(model, inputs, pipeline=NO_ARENA)
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        reference = model(*inputs)
    eager = eager_activation_peak(model, inputs)
    emitted = timeline_peak(cm, *inputs)
    diff = (emitted["result"] - reference).abs().max().item()
    label = name + "".join(f" {k}={v}" for k, v in kwargs.items())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        zoo.export_onnx(name, path, **kwargs)
        cm_onnx = memplan.compile(str(path), inputs, pipeline=NO_ARENA)
        via_onnx = timeline_peak(cm_onnx, *inputs)
        diff = max(diff, (via_onnx["result"] - reference).abs().max().item())
    return {"model": label, "nodes": len(cm.graph.nodes), "eager": eager, "memplan": emitted["activation_peak"],
            "planned": cm.plan.stats["peak_bytes"], "onnx": via_onnx["activation_peak"],
            "onnx_planned": cm_onnx.plan.stats["peak_bytes"], "max_abs_diff": diff, "compile_s": compile_s}


def to_markdown(rows: list[dict]) -> str:
    lines = ["| model | IR nodes | eager | memplan (torch path) | planned | memplan (ONNX path) | planned (ONNX) | "
             "max abs diff | compile |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['nodes']} | {r['eager'] / MiB:.2f} MiB | {r['memplan'] / MiB:.2f} MiB | "
                     f"{r['planned'] / MiB:.2f} MiB | {r['onnx'] / MiB:.2f} MiB | {r['onnx_planned'] / MiB:.2f} MiB | "
                     f"{r['max_abs_diff']:.1e} | {r['compile_s']:.1f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("families", nargs="*", help="zoo family names (default: a standard set)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    todo = [(f, {}) for f in args.families] if args.families else DEFAULT_FAMILIES
    rows = []
    for name, kwargs in todo:
        rows.append(measure_family(name, kwargs))
        print(f"measured {rows[-1]['model']}", file=sys.stderr)
    return publish(to_markdown(rows), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
