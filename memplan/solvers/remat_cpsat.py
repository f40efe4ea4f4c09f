"""Exact rematerialisation with CP-SAT: interval variables, a bounded number of computations per node
(in the spirit of Moccasin, ICML 2023).

Time is a sequence of ``H`` slots; each slot runs at most one computation. Node ``v`` has up to
``C`` computations (copies); copy ``c`` has a presence literal ``p[v, c]`` (the first copy is
always present), a slot ``s[v, c]`` and the last slot ``e[v, c] >= s[v, c]`` at which it is held.

- every present copy takes its own slot (no-overlap of unit intervals);
- copies are ordered, and a copy is no longer read once the next one is computed:
  ``e[v, c] < s[v, c + 1]``. So whatever copy of ``u`` the model lets ``v`` read is the latest
  earlier computation of ``u``, which is what the schedule's semantics make ``v`` read;
- each edge ``u -> v``, each present copy ``c`` of ``v``: some present copy ``d`` of ``u`` has
  ``s[u, d] < s[v, c] <= e[u, d]``;
- memory: the intervals ``[s, e]`` with demand ``cost_ram`` are cumulative within the budget.

Objective: the compute cost of the copies after the first. A solution, its present copies sorted by
slot, is a schedule whose exact peak (:func:`~memplan.solvers.remat_problem.evaluate`) is at most
what the model counts, so within the budget; it is evaluated again before it is returned. The
bound CP-SAT proves holds for schedules with at most ``C`` computations per node within ``H``
slots; the gap is reported against it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from memplan.solvers.remat_problem import RematProblem, evaluate


@dataclass
class CpsatOutcome:
    schedule: list[int] | None
    cost: int | None
    bound: float
    status: str
    wall_s: float


def _ancestor_counts(problem: RematProblem) -> list[int]:
    anc = [0] * problem.n
    for v in problem.order:
        m = 0
        for u in problem.preds[v]:
            m |= anc[u] | (1 << u)
        anc[v] = m
    return [bin(m).count("1") for m in anc]


def solve_cpsat(problem: RematProblem, budget: int, hint: list[int] | None, time_limit: float,
                copies: int = 2, workers: int = 2, extra_slots: int | None = None,
                keep_order: bool = False) -> CpsatOutcome:
    """Least-cost schedule of ``problem`` within ``budget`` bytes (``hint``: a feasible schedule to
    start from; ``keep_order``: first computations in the problem's reference order, as the stages of
    Checkmate and Moccasin fix them)."""
    start = time.perf_counter()
    n = problem.n
    counts = [0] * n
    for v in hint or []:
        counts[v] += 1
    C = max(copies, max(counts, default=1))
    L = len(hint) if hint else n
    H = L + (extra_slots if extra_slots is not None else max(8, min(n, L - n + 8)))
    m = cp_model.CpModel()
    depth = _ancestor_counts(problem)
    p, s, e, ln, mem, slot = {}, {}, {}, {}, [], []
    for v in range(n):
        for c in range(C):
            lit = m.NewConstant(1) if c == 0 else m.NewBoolVar(f"p{v}_{c}")
            sv = m.NewIntVar(depth[v], H - 1, f"s{v}_{c}")  # its ancestors run before it
            ev = m.NewIntVar(0, H - 1, f"e{v}_{c}")
            m.Add(ev >= sv).OnlyEnforceIf(lit)
            if not problem.succs[v]:
                m.Add(ev == sv).OnlyEnforceIf(lit)
            length = m.NewIntVar(1, H, f"l{v}_{c}")
            m.Add(length == ev - sv + 1).OnlyEnforceIf(lit)
            mem.append((m.NewOptionalIntervalVar(sv, length, ev + 1, lit, f"m{v}_{c}"), problem.ram[v]))
            slot.append(m.NewOptionalFixedSizeIntervalVar(sv, 1, lit, f"t{v}_{c}"))
            p[v, c], s[v, c], e[v, c], ln[v, c] = lit, sv, ev, length
        for c in range(1, C):
            if c > 1:
                m.AddImplication(p[v, c], p[v, c - 1])
            m.Add(s[v, c] > e[v, c - 1]).OnlyEnforceIf(p[v, c])
            m.Add(s[v, c] > s[v, c - 1]).OnlyEnforceIf(p[v, c])
    if keep_order:
        for a, b in zip(problem.order, problem.order[1:]):
            m.Add(s[a, 0] < s[b, 0])
    m.AddNoOverlap(slot)
    m.AddCumulative([iv for iv, _ in mem], [d for _, d in mem], budget)
    z = {}
    for v in range(n):
        for u in problem.preds[v]:
            for c in range(C):
                options = []
                for d in range(C):
                    lit = m.NewBoolVar(f"z{u}_{d}_{v}_{c}")
                    m.AddImplication(lit, p[u, d])
                    m.Add(s[u, d] < s[v, c]).OnlyEnforceIf(lit)
                    m.Add(e[u, d] >= s[v, c]).OnlyEnforceIf(lit)
                    options.append(lit)
                    z[u, d, v, c] = lit
                m.AddBoolOr(options).OnlyEnforceIf(p[v, c])
    m.Minimize(sum(problem.cost[v] * p[v, c] for v in range(n) for c in range(1, C)))
    if hint:
        _add_hint(m, problem, hint, p, s, e, ln, z, C, depth)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.1, time_limit - (time.perf_counter() - start))
    solver.parameters.num_workers = workers
    solver.parameters.cp_model_presolve = False  # presolve takes most of the time limit here (10 s of 20
    # on a 250-node instance) and gains nothing: the warm start is the first solution at once
    status = solver.Solve(m)
    name = solver.StatusName(status)
    base = sum(problem.cost)
    bound = base + solver.BestObjectiveBound() if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else float(base)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpsatOutcome(None, None, bound, name, time.perf_counter() - start)
    comps = sorted((solver.Value(s[v, c]), v) for v in range(n) for c in range(C) if solver.Value(p[v, c]))
    schedule = [v for _, v in comps]
    ev = evaluate(problem, schedule)
    if ev.peak > budget:  # the model's accounting is an upper bound of the exact one: a bug if reached
        raise AssertionError(f"CP-SAT schedule peaks at {ev.peak} above the budget {budget}")
    return CpsatOutcome(schedule, ev.cost, bound, name, time.perf_counter() - start)


def _add_hint(m, problem, hint, p, s, e, ln, z, C, depth):
    ev = evaluate(problem, hint)
    copy_at: dict[int, tuple[int, int]] = {}
    seen = [0] * problem.n
    for j, v in enumerate(hint):
        copy_at[j] = (v, seen[v])
        seen[v] += 1
    used = set()
    for j, v in enumerate(hint):
        _, c = copy_at[j]
        m.AddHint(s[v, c], j)
        m.AddHint(e[v, c], ev.last_read[j])
        m.AddHint(ln[v, c], ev.last_read[j] - j + 1)
        for i in ev.reads[j]:
            u, d = copy_at[i]
            used.add((u, d, v, c))
    for v in range(problem.n):
        for c in range(1, C):
            m.AddHint(p[v, c], 1 if c < seen[v] else 0)
            if c >= seen[v]:
                m.AddHint(s[v, c], depth[v])
                m.AddHint(e[v, c], depth[v])
                m.AddHint(ln[v, c], 1)
    for key, lit in z.items():
        m.AddHint(lit, 1 if key in used else 0)
