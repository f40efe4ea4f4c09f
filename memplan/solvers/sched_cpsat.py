"""Exact scheduling with CP-SAT: a time-indexed model in the spirit of MODeL/OLLA (ICML 2023).

Variables, for node ``v`` and step ``t`` (only inside ``v``'s window
``[#ancestors, n - 1 - #descendants]``):

- ``done[v, t]``: ``v`` has run at or before step ``t`` (monotone in ``t``); ``v``
  runs at ``t`` exactly when ``done[v, t] - done[v, t-1] = 1``;
- ``live[b, t]``: buffer ``b`` occupies memory at step ``t``.

Constraints: one node per step (``sum_v done[v, t] = t + 1``), dependencies
(``done[v, t] <= done[p, t-1]``), liveness (``live[b, t] >= done[producer, t] -
done[u, t-1]`` for every user ``u``: produced and some user still to come), and at
every step ``sum_b size_b live[b, t] + temp of the node running + base <= peak``.
Objective: minimise ``peak``, hinted with the best heuristic order and bounded
below by the order-independent lower bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import reduce
from math import gcd

from ortools.sat.python import cp_model

from memplan.solvers.sched_problem import INPUT, ScheduleProblem, lower_bound, peak_of


@dataclass
class ExactResult:
    """Outcome of one CP-SAT solve: the best order (the hint if nothing better), its peak,
    the proven lower bound, the solver status and the wall time."""

    order: list[int]
    peak: int
    bound: int
    status: str
    wall_s: float

    @property
    def optimal(self) -> bool:
        return self.peak <= self.bound


def solve_exact(problem: ScheduleProblem, hint: list[int], time_limit: float = 10.0,
                workers: int = 2, known_bound: int | None = None) -> ExactResult:
    """Minimise the peak of ``problem`` with CP-SAT, warm-started from the order ``hint``.

    Never returns an order worse than ``hint``. ``known_bound``: a valid lower bound
    (default: :func:`lower_bound`).
    """
    start = time.perf_counter()
    n = problem.n
    hint_peak = peak_of(problem, hint)
    bound0 = max(lower_bound(problem) if known_bound is None else known_bound, 0)
    if n <= 1 or hint_peak <= bound0:
        return ExactResult(list(hint), hint_peak, max(bound0, hint_peak) if n <= 1 else bound0,
                           "OPTIMAL", time.perf_counter() - start)

    sizes = [b.size for b in problem.buffers] + list(problem.temp) + [problem.base_bytes]
    unit = reduce(gcd, (s for s in sizes if s), 0) or 1
    model = cp_model.CpModel()
    reach = problem.reach
    lo = reach.n_anc
    hi = [n - 1 - d for d in reach.n_desc]

    one = model.new_constant(1)
    zero = model.new_constant(0)
    done_vars: dict[tuple[int, int], cp_model.IntVar] = {}

    def done(v: int, t: int):
        """``done[v, t]`` as a literal (constant outside ``v``'s window)."""
        if t < lo[v]:
            return zero
        if t >= hi[v]:
            return one
        return done_vars[v, t]

    for v in range(n):
        for t in range(lo[v], hi[v]):
            done_vars[v, t] = model.new_bool_var(f"done_{v}_{t}")
        for t in range(lo[v] + 1, hi[v]):
            model.add_implication(done_vars[v, t - 1], done_vars[v, t])
    for t in range(n):
        model.add(sum(done(v, t) for v in range(n) if lo[v] <= t) == t + 1)
    for v in range(n):
        for p in problem.deps[v]:
            for t in range(lo[v], hi[v]):        # lo[v] > lo[p] >= 0, so t - 1 >= 0
                earlier = done(p, t - 1)
                if earlier is not one:
                    model.add(done(v, t) <= earlier)

    def runs_at(v: int, t: int):
        """Linear expression: 1 when ``v`` runs at step ``t``."""
        return done(v, t) - (done(v, t - 1) if t >= 1 else zero)

    step_load: list[list] = [[] for _ in range(n)]
    live_vars: list[tuple[int, cp_model.IntVar]] = []   # (buffer id, var) for hints
    live_of: dict[tuple[int, int], cp_model.IntVar] = {}
    for i, b in enumerate(problem.buffers):
        if b.size == 0:
            continue
        w = b.size // unit
        p = b.producer
        if b.keep:                          # live from its production to the end
            for t in range(0 if p == INPUT else lo[p], n):
                step_load[t].append(w * (one if p == INPUT else done(p, t)))
            continue
        if not b.users:
            if p != INPUT:
                for t in range(lo[p], hi[p] + 1):
                    step_load[t].append(w * runs_at(p, t))
            continue
        first = 0 if p == INPUT else lo[p]
        last = max(hi[u] for u in b.users)
        for t in range(first, last + 1):
            produced = one if p == INPUT else done(p, t)
            pending = [done(u, t - 1) if t >= 1 else zero for u in b.users]
            if produced is zero or all(d is one for d in pending):
                continue
            if produced is one and any(d is zero for d in pending):
                step_load[t].append(w * one)
                continue
            x = model.new_bool_var(f"live_{i}_{t}")
            for d in pending:
                model.add(x >= produced - d)
            live_vars.append((i, x))
            live_of[i, t] = x
            step_load[t].append(w * x)
    for v in range(n):
        if problem.temp[v]:
            for t in range(lo[v], hi[v] + 1):
                step_load[t].append((problem.temp[v] // unit) * runs_at(v, t))

    base = problem.base_bytes // unit
    peak = model.new_int_var(-(-bound0 // unit), hint_peak // unit, "peak")
    for t in range(n):
        model.add(sum(step_load[t]) + base <= peak)
    model.minimize(peak)

    _add_hint(model, problem, hint, done_vars, live_of)
    solver = cp_model.CpSolver()
    # the time limit covers building the model too
    solver.parameters.max_time_in_seconds = max(0.05, time_limit - (time.perf_counter() - start))
    solver.parameters.num_workers = workers
    status = solver.solve(model)
    wall = time.perf_counter() - start
    status_name = solver.status_name(status)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        order = _order_from_solution(solver, n, lo, hi, done_vars)
        found = peak_of(problem, order)
        bound = max(bound0, int(solver.best_objective_bound) * unit)
        if status == cp_model.OPTIMAL:
            bound = max(bound, found)
        if found <= hint_peak:
            return ExactResult(order, found, min(bound, found), status_name, wall)
        return ExactResult(list(hint), hint_peak, min(bound, hint_peak), status_name, wall)
    bound = bound0
    if status == cp_model.INFEASIBLE:       # the hint itself is feasible, so this means "no better than hint"
        bound = hint_peak
    return ExactResult(list(hint), hint_peak, bound, status_name, wall)


def _add_hint(model, problem: ScheduleProblem, hint: list[int], done_vars, live_of) -> None:
    step = [0] * problem.n
    for t, v in enumerate(hint):
        step[v] = t
    for (v, t), var in done_vars.items():
        model.add_hint(var, step[v] <= t)
    for (i, t), var in live_of.items():
        b = problem.buffers[i]
        start = -1 if b.producer == INPUT else step[b.producer]
        model.add_hint(var, start <= t <= max(step[u] for u in b.users))


def _order_from_solution(solver, n: int, lo: list[int], hi: list[int], done_vars) -> list[int]:
    """Step of each node: the first ``t`` with ``done[v, t]`` true."""
    step = []
    for v in range(n):
        t = lo[v]
        while t < hi[v] and not solver.boolean_value(done_vars[v, t]):
            t += 1
        step.append(t)
    return sorted(range(n), key=lambda v: step[v])
