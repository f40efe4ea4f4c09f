"""Peak memory of a call, from the torch profiler's memory timeline.

The one reliable way to see CPU allocations of torch code here (see
``shared/MEASURING.md``). memplan uses it to measure the scratch memory of
kernels when it plans, and the benchmarks use it to compare plans with eager
PyTorch and torch.compile.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import tempfile
import warnings
from typing import Any, Callable

from torch.profiler import ProfilerActivity, profile

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


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 while the profiler starts and stops: its native layer (kineto)
    prints a 'profiler_start/stop' line per session that no setting turns off."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
    gc.collect()  # garbage of earlier work freed during the call would read as a lower peak
    enabled = gc.isenabled()
    gc.disable()
    try:
        with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                             record_shapes=True, with_stack=True) as prof:
            result = fn(*args)
    finally:
        if enabled:
            gc.enable()
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


def available_memory() -> int | None:
    """Bytes of memory the host can still give (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None



def allocation_peak(fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """Peak of the bytes ``fn(*args)`` allocates beyond what existed before it: the highest running
    sum of the profiler's allocation and free events during the call. Returns ``(peak, result)``.

    It agrees with :func:`timeline_peak`'s ``activation_peak`` for a call whose arguments outlive it
    (a kernel measured on its own: what it allocates and frees, its results included; checked on
    every kernel of the benchmark models) at a fraction of the cost: no stacks, no shapes, no
    export. :func:`allocation_peaks` measures many calls in one profiler session.
    """
    box: list = []
    (peak,) = allocation_peaks([lambda: lambda: box.append(fn(*args))])
    if isinstance(peak, BaseException):
        raise peak
    return peak, box[0]


def allocation_peaks(calls: list[Callable[[], Callable[[], Any]]]) -> list[int | BaseException]:
    """Peak bytes allocated by each of many calls, measured in one profiler session (starting a
    session costs about a millisecond, and the first one in a process about a second).

    Each item of ``calls`` prepares a call and returns it: whatever it allocates while preparing
    (the call's arguments) does not count, only what the returned function allocates, between
    two markers. The result per call is its peak in bytes, or the exception it raised (the other
    calls still run). A call should keep its arguments alive until it returns.
    """
    from torch.autograd.profiler import record_function

    results: list[int | BaseException] = [0] * len(calls)
    marks = []
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for i, prepare in enumerate(calls):
            try:
                call = prepare()
            except Exception as e:  # noqa: BLE001  (reported per call)
                results[i] = e
                continue
            try:
                with record_function(f"memplan.measure.{i}"):
                    call()
            except Exception as e:  # noqa: BLE001
                results[i] = e
            del call
            marks.append(i)
    spans: dict[int, tuple[int, int]] = {}
    memory = []
    for e in prof.profiler.kineto_results.events():
        name = e.name()
        if name == "[memory]":
            memory.append((e.start_ns(), e.nbytes()))
        elif name.startswith("memplan.measure."):
            spans[int(name.rsplit(".", 1)[1])] = (e.start_ns(), e.end_ns())
    memory.sort()
    starts = [t for t, _ in memory]
    import bisect
    for i in marks:
        if isinstance(results[i], BaseException):
            continue
        if i not in spans:
            results[i] = RuntimeError("the profiler recorded no span for this call")
            continue
        lo, hi = spans[i]
        live = peak = 0
        for k in range(bisect.bisect_left(starts, lo), bisect.bisect_right(starts, hi)):
            live += memory[k][1]
            peak = max(peak, live)
        results[i] = peak
    return results
