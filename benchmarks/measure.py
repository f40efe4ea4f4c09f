"""Measurement helpers for memory and time, following shared/MEASURING.md.

Peak memory comes from the profiler's memory timeline (``timeline_peak``),
never from tracemalloc or RSS. Times are medians over interleaved runs
(``median_time``).

Run ``python benchmarks/measure.py [family ...]`` for a table of the zoo
families: parameter MiB, eager forward peak and activation peak (no_grad).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import torch
from memplan.profiling import timeline_peak  # noqa: F401  (re-exported)

MiB = 2**20

def eager_activation_peak(model: torch.nn.Module, inputs: tuple) -> int:
    """Activation peak in bytes of the eager forward ``model(*inputs)`` under
    ``torch.no_grad()``: the timeline peak minus what was resident before the
    call and used by it (parameters, buffers and inputs). The output counts.
    """
    def forward():
        with torch.no_grad():
            return model(*inputs)

    return timeline_peak(forward)["activation_peak"]


def publish(table: str, markdown: str | None) -> int:
    """Print a benchmark's table and, with ``--markdown PATH``, write it there (for run_all.py)."""
    print(table)
    if markdown:
        from pathlib import Path
        Path(markdown).write_text(table + "\n")
    return 0


def median_time(fns: dict[str, Callable[[], Any]], repeats: int = 7,
                warmup: int = 1) -> dict[str, float]:
    """Median wall time in seconds of each zero-argument callable in ``fns``.

    Runs are interleaved (A B A B ...) so that the machine's drift hits every
    peer alike; ``warmup`` interleaved rounds are run first and discarded.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def family_row(name: str) -> dict[str, float]:
    """Build zoo family ``name`` and measure it: params, eager peak, activations (MiB)."""
    from memplan import zoo

    model, inputs = zoo.build(name)

    def forward():
        with torch.no_grad():
            return model(*inputs)

    forward()  # warm up lazy initialisation outside the measured call
    stats = timeline_peak(forward)
    return {"params": zoo.param_bytes(model) / MiB, "peak": stats["peak"] / MiB,
            "activation_peak": stats["activation_peak"] / MiB,
            "eager_s": median_time({"eager": forward}, repeats=5)["eager"]}


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    """Print rows as a rich table if rich is installed, else as plain text."""
    headers = ["family", "params MiB", "eager peak MiB", "eager act. peak MiB", "eager fwd ms"]
    lines = [[name, f"{r['params']:.2f}", f"{r['peak']:.2f}", f"{r['activation_peak']:.2f}",
              f"{1e3 * r['eager_s']:.1f}"] for name, r in rows.items()]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("\t".join(headers))
        for line in lines:
            print("\t".join(line))
        return
    table = Table(title="zoo families: eager forward, no_grad, timeline")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for line in lines:
        table.add_row(*line)
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    """Print params and eager activation peaks for the given (or all) zoo families."""
    from memplan import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=list(zoo.FAMILIES))
    args = parser.parse_args(argv)
    _print_table({name: family_row(name) for name in args.families})


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
