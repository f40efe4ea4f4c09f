"""Allocation as a CP-SAT model: rectangles in time x address, no overlap.

Each buffer is a rectangle whose time side is fixed (its lifetime) and whose
address side starts at an offset variable. ``AddNoOverlap2D`` forbids two
rectangles to share area; the objective is the height. Alone this model is
weak on tight instances (see MEASURING.md), so it is strengthened with what
is cheap: the interval lower bound on the height, a mirror symmetry break
(a packing flipped upside down is also a packing, so the largest buffer may
be asked to sit in the lower half), and the best heuristic packing as a hint.
The caller splits the instance into independent components first.
"""
from __future__ import annotations

from dataclasses import dataclass

from memplan.solvers.alloc_instance import PackingInstance


@dataclass
class CpSatOutcome:
    """``status``: optimal / feasible / infeasible / unknown, with the best packing and bound."""

    status: str
    offsets: list[int] | None
    height: int | None
    bound: int
    wall_s: float
    note: str = ""           # why CP-SAT could not run (one line), when it could not


MAX_DOMAIN = 2**62           # CP-SAT's integers are int64; offsets and heights stay well inside


def cpsat_packing(instance: PackingInstance, incumbent: list[int] | None, lower_bound: int,
                  max_height: int, time_limit: float, workers: int = 2) -> CpSatOutcome:
    """Minimise the height of a packing of ``instance`` subject to ``height <= max_height``.

    ``incumbent`` (a packing, possibly above ``max_height``) is passed as a
    solution hint. ``infeasible`` means CP-SAT proved that no packing fits in
    ``max_height``. Where CP-SAT cannot run (numbers beyond its int64
    range, an error of its own), the status is ``unknown`` and ``note`` says
    why in one line.
    """
    if max_height < lower_bound:
        return CpSatOutcome("infeasible", None, None, lower_bound, 0.0)
    if max_height >= MAX_DOMAIN or max((abs(t) for t in instance.lowers + instance.uppers), default=0) >= MAX_DOMAIN:
        return CpSatOutcome("unknown", None, None, lower_bound, 0.0, "heights or times beyond CP-SAT's int64 range")
    try:
        return _solve(instance, incumbent, lower_bound, max_height, time_limit, workers)
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:   # ortools' messages span lines
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CpSatOutcome("unknown", None, None, lower_bound, 0.0, f"CP-SAT failed: {first[:120]}")


def _solve(instance: PackingInstance, incumbent: list[int] | None, lower_bound: int,
           max_height: int, time_limit: float, workers: int) -> CpSatOutcome:
    from ortools.sat.python import cp_model

    n = len(instance)
    align = max(instance.alignment, 1)
    model = cp_model.CpModel()
    height = model.new_int_var(lower_bound, max_height, "height")
    slots, time_boxes, address_boxes = [], [], []
    for i in range(n):
        lo, hi, size = instance.lowers[i], instance.uppers[i], instance.sizes[i]
        if size == 0:
            slots.append(None)
            continue
        if size > max_height:
            return CpSatOutcome("infeasible", None, None, lower_bound, 0.0)
        slot = model.new_int_var(0, (max_height - size) // align, f"slot_{i}")   # offset = slot * align
        slots.append(slot)
        model.add(align * slot + size <= height)
        time_boxes.append(model.new_fixed_size_interval_var(lo, hi - lo, f"time_{i}"))
        address_boxes.append(model.new_fixed_size_interval_var(align * slot, size, f"addr_{i}"))
    model.add_no_overlap_2d(time_boxes, address_boxes)
    # mirror symmetry: flip the packing upside down and the largest buffer lands in the other half
    largest = max((i for i in range(n) if slots[i] is not None),
                  key=lambda i: (instance.sizes[i] * (instance.uppers[i] - instance.lowers[i]), i), default=None)
    if largest is not None and align == 1:
        model.add(2 * slots[largest] + instance.sizes[largest] <= height)
    if incumbent is not None:
        for i, slot in enumerate(slots):
            if slot is not None and incumbent[i] % align == 0:
                model.add_hint(slot, incumbent[i] // align)
    model.minimize(height)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(time_limit, 0.01)
    solver.parameters.num_workers = workers
    code = solver.solve(model)
    wall = solver.wall_time
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        offsets = [0 if slot is None else align * solver.value(slot) for slot in slots]
        status = "optimal" if code == cp_model.OPTIMAL else "feasible"
        return CpSatOutcome(status, offsets, instance.height(offsets), int(solver.best_objective_bound), wall)
    if code == cp_model.INFEASIBLE:
        return CpSatOutcome("infeasible", None, None, max_height + 1, wall)
    return CpSatOutcome("unknown", None, None, lower_bound, wall)
