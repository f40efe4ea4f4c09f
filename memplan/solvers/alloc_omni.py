"""omnimalloc's C++ heuristics as optional members of the allocation portfolio.

omnimalloc (``pip install omnimalloc``, Apache-2.0; in memplan's ``bench``
extra, not a core dependency) ships compiled allocators. Two of them do a
part better than memplan's own members on some instances, so, as issue 13
allows, :func:`omnimalloc_packing` runs them rather than rewriting them:

- ``omni_place``, its greedy portfolio (milliseconds);
- ``simulated_annealing_place``, annealing over placement orders with its
  default settings (seed 42, 3000 iterations, temperature 3.0, cooling
  0.998). On non-guillotine instances such as omnimalloc's ``pinwheel``
  source it packs lower than the MiniMalloc search reaches in seconds.

:func:`memplan.solvers.allocation.solve_allocation` calls it when it
minimises the height (no capacity: in feasibility mode the exact search
decides the capacity directly), the greedy packing is above the bound, and
omnimalloc is importable; the result warm-starts the exact phase. Without
omnimalloc nothing changes. The import is lazy (importing omnimalloc takes
a few tenths of a second where matplotlib is installed) and never touches
torch. Every packing it returns is checked here; an error inside omnimalloc
makes the member give up, never the solve.

omnimalloc knows no alignment: with ``alignment > 1`` it packs sizes in
units of the alignment (rounded up), and the offsets are scaled back.
"""
from __future__ import annotations

import time

from memplan.solvers.alloc_instance import PackingInstance, SortedKeys

SA_SEED = 42                  # omnimalloc's DEFAULT_SEED (its allocators' default)
SA_ITERATIONS = 3000          # omnimalloc's SimulatedAnnealingAllocator defaults
SA_TEMPERATURE = 3.0
SA_COOLING = 0.998
MAX_BUFFERS = 20_000          # above this the annealing cannot finish a useful number of iterations

_cpp = None                   # omnimalloc._cpp once imported; False if it cannot be


IMPORT_SECONDS = 1.0  # importing omnimalloc the first time (measured here: 0.9 s): not done on a shorter share


def omnimalloc_module():
    """omnimalloc's compiled module, or None if omnimalloc is not installed (imported on first call)."""
    global _cpp
    if _cpp is None:
        try:
            from omnimalloc import _cpp as module
            _cpp = module
        except Exception:     # not installed, or a broken install: the member is simply absent
            _cpp = False
    return _cpp or None


def omnimalloc_packing(instance: PackingInstance, deadline: float, seed: int = 0,
                       log: list[str] | None = None) -> tuple[list[int], str] | None:
    """The lowest valid packing of omnimalloc's members within ``deadline``, and its name; or None.

    None when omnimalloc is not installed, the instance is too large, or no
    member returned a valid packing in time. ``seed`` is added to
    omnimalloc's default seed for the annealing.
    """
    n = len(instance)
    if n == 0 or n > MAX_BUFFERS or time.monotonic() >= deadline:
        return None
    if _cpp is None and deadline - time.monotonic() < IMPORT_SECONDS:
        _note(log, f"omnimalloc: not loaded (importing it takes about {IMPORT_SECONDS:g} s, more than its share)")
        return None
    cpp = omnimalloc_module()
    if cpp is None or time.monotonic() >= deadline:
        return None
    unit = max(instance.alignment, 1)
    placed = [i for i in range(n) if instance.sizes[i] > 0]
    if not placed:
        return [0] * n, "omnimalloc:none"
    try:
        allocations = [cpp.Allocation(id=k, size=-(-instance.sizes[i] // unit), start=instance.lowers[i],
                                      end=instance.uppers[i]) for k, i in enumerate(placed)]
    except Exception as exc:
        _note(log, f"omnimalloc: cannot convert the instance ({type(exc).__name__}: {exc})")
        return None
    best: tuple[list[int], str] | None = None
    best_height = None
    members = [("omni", lambda: cpp.omni_place(allocations, None)),
               ("simulated_annealing", lambda: cpp.simulated_annealing_place(
                   allocations, SA_SEED + seed, SA_ITERATIONS, SA_TEMPERATURE, SA_COOLING,
                   max(deadline - time.monotonic(), 1e-3)))]
    for name, run in members:
        if time.monotonic() >= deadline:
            break
        try:
            result = run()
        except Exception as exc:
            _note(log, f"omnimalloc {name} failed: {type(exc).__name__}: {exc}")
            continue
        offsets = _offsets(instance, placed, result, unit)
        if offsets is None:
            _note(log, f"omnimalloc {name} returned an invalid packing; ignored")
            continue
        height = instance.height(offsets)
        _note(log, f"omnimalloc {name}: height {height}")
        if best_height is None or height < best_height:
            best, best_height = (offsets, f"omnimalloc:{name}"), height
    return best


def _offsets(instance: PackingInstance, placed: list[int], result, unit: int) -> list[int] | None:
    """Offsets of every buffer (in bytes) from omnimalloc's placed allocations, if they are a valid packing."""
    offsets = [0] * len(instance)
    seen = set()
    for allocation in result:
        k, offset = allocation.id, allocation.offset
        if not isinstance(k, int) or not 0 <= k < len(placed) or not isinstance(offset, int) or offset < 0:
            return None
        offsets[placed[k]] = offset * unit
        seen.add(k)
    if len(seen) != len(placed):
        return None
    return offsets if is_valid_packing(instance, offsets) else None


def is_valid_packing(instance: PackingInstance, offsets: list[int]) -> bool:
    """Whether ``offsets`` are aligned, non-negative, and no two buffers live at once share a byte.

    The sweep of :func:`memplan.solvers.allocation.validate` (O(n log n)), on an instance.
    """
    sizes, alignment = instance.sizes, instance.alignment
    if len(offsets) != len(sizes) or any(o < 0 or (alignment > 1 and o % alignment) for o in offsets):
        return False
    nonzero = [i for i in range(len(sizes)) if sizes[i] > 0]
    events = sorted([(instance.lowers[i], 1, i) for i in nonzero] + [(instance.uppers[i], 0, i) for i in nonzero])
    live = SortedKeys()                   # offsets of the buffers live now
    live_at: dict[int, int] = {}          # offset -> the live buffer there
    for _, is_start, i in events:
        o = offsets[i]
        if not is_start:
            live.remove(o)
            del live_at[o]
            continue
        if o in live_at:
            return False
        below, above = live.last_below(o), live.first_at_least(o)
        if below is not None and below + sizes[live_at[below]] > o:
            return False
        if above is not None and above < o + sizes[i]:
            return False
        live.add(o)
        live_at[o] = i
    return True


def _note(log: list[str] | None, line: str) -> None:
    if log is not None:
        log.append(line)
