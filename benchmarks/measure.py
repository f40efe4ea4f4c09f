"""Measurement helpers for memory and time, following shared/MEASURING.md.

Peak memory comes from the profiler's memory timeline (``timeline_peak``),
never from tracemalloc or RSS. Times are medians over interleaved runs
(``median_time``).

Run ``python benchmarks/measure.py [family ...]`` for a table of the zoo
families: parameter MiB, eager forward peak and activation peak (no_grad).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

MiB = 2**20

# Column order of the sizes in ``export_memory_timeline``'s JSON: slot 0 is
# unused, slots 1.. follow torch.profiler._memory_profiler._CATEGORY_TO_INDEX.
_CATEGORIES = ("PARAMETER", "OPTIMIZER_STATE", "INPUT", "TEMPORARY", "ACTIVATION",
               "GRADIENT", "AUTOGRAD_DETAIL", "UNKNOWN")
_PREEXISTING = 1  # Action.PREEXISTING in the raw timeline export


def _category_names() -> tuple[str, ...]:
    """Category names in timeline column order (slot 0 excluded)."""
    try:
        from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX
    except ImportError:  # private module moved: fall back to torch 2.13's order
        return _CATEGORIES
    order = sorted(_CATEGORY_TO_INDEX, key=_CATEGORY_TO_INDEX.__getitem__)
    return tuple("UNKNOWN" if c is None else c.name for c in order)


def timeline_peak(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Peak CPU memory of ``fn(*args)`` from the profiler's memory timeline.

    Runs ``fn(*args)`` once under ``torch.profiler.profile(activities=[CPU],
    profile_memory=True, record_shapes=True, with_stack=True)`` and exports the
    memory timeline for ``device="cpu"``. Returns a dict (bytes):

    - ``peak``: the largest total over all timeline samples;
    - ``baseline``: bytes of tensors that existed before the call and that the
      call touched (the timeline's PREEXISTING entries; 0 if there are none);
    - ``activation_peak``: ``peak - baseline``;
    - ``by_category``: the peak sample split by the profiler's categories
      (PARAMETER, INPUT, ACTIVATION, TEMPORARY, GRADIENT, ..., UNKNOWN);
    - ``result``: what ``fn`` returned.

    What the timeline counts (checked with torch 2.13, CPU):

    - Only tensors the profiler sees: those allocated during the call, and
      pre-existing tensors that some recorded aten op reads or writes.
      A pre-existing tensor the call never touches is *not* counted, e.g. an
      unused pooler, or a 8 MiB tensor sitting in the caller's scope.
    - Eager ``nn.Module`` call: every parameter and buffer the forward uses
      (category PARAMETER / INPUT) and the inputs are in ``baseline``; the
      output stays alive after the call, so it is part of ``peak``. This
      agrees with ``torch.distributed._tools.mem_tracker.MemTracker`` to
      within a few bytes (the timeline also sees 4-byte scalar temporaries):
      GPT-2 2L/256, batch 1, seq 128: 58.86 MiB both under no_grad, 63.74 MiB
      both with grad. (MEASURING.md's 59.4 MiB is with ``use_cache=True``,
      whose returned KV cache adds 0.5 MiB; the zoo disables the cache.)
    - Plain function: tensor arguments it reads are in ``baseline`` (category
      UNKNOWN, not INPUT); everything it allocates counts toward ``peak``
      until freed.
    - ``torch.compile``d code: parameters consumed by compiled kernels are
      not seen, so ``baseline``/``peak`` drop them; compare
      ``activation_peak`` across eager and compiled, never ``peak``.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                 record_shapes=True, with_stack=True) as prof:
        result = fn(*args)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export_memory_timeline is deprecated
        curve_path, raw_path = os.path.join(tmp, "tl.json"), os.path.join(tmp, "tl.raw.json")
        prof.export_memory_timeline(curve_path, device="cpu")
        prof.mem_tl.export_memory_timeline_raw(raw_path, "cpu")  # set by the call above
        with open(curve_path) as f:
            _, sizes = json.load(f)
        with open(raw_path) as f:
            raw = json.load(f)
    totals = [sum(s) for s in sizes] or [0]
    at_peak = max(range(len(totals)), key=totals.__getitem__)
    peak = totals[at_peak]
    baseline = sum(nbytes for _, action, nbytes, _ in raw if action == _PREEXISTING)
    by_category = dict(zip(_category_names(), sizes[at_peak][1:])) if sizes else {}
    return {"peak": peak, "baseline": baseline, "activation_peak": peak - baseline,
            "by_category": by_category, "result": result}


def eager_activation_peak(model: torch.nn.Module, inputs: tuple) -> int:
    """Activation peak in bytes of the eager forward ``model(*inputs)`` under
    ``torch.no_grad()``: the timeline peak minus what was resident before the
    call and used by it (parameters, buffers and inputs). The output counts.
    """
    def forward():
        with torch.no_grad():
            return model(*inputs)

    return timeline_peak(forward)["activation_peak"]


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
