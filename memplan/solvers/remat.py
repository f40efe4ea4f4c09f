"""Rematerialisation: the least-compute schedule of a DAG within a memory budget.

:func:`solve_remat` runs, within one time limit:

1. the reference (topological) order: if it fits, nothing needs recomputing and it is optimal;
2. a proof of infeasibility where one is cheap: computing ``v`` holds its inputs and its output,
   so no schedule peaks below the largest such sum;
3. the heuristics (:mod:`memplan.solvers.remat_heuristics`): the greedy that drops the cheapest
   bytes first, then pruning of the recomputations it no longer needs;
4. CP-SAT (:mod:`memplan.solvers.remat_cpsat`), warm-started from the heuristic schedule, for the
   rest of the time; its schedule is taken when it costs less.

Every schedule returned is re-evaluated exactly (:func:`~memplan.solvers.remat_problem.evaluate`).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from memplan.solvers.remat_heuristics import greedy, prune
from memplan.solvers.remat_problem import RematProblem, evaluate

BUILD_S_PER_LITERAL = 3e-5  # CP-SAT model building, seconds per edge literal (measured: 0.4 s for 2,000 nodes)
MAX_COPIES = 16


@dataclass
class RematResult:
    schedule: list[int]  # node indices; the lowest-peak one found when nothing fits
    cost: int
    peak: int
    status: str  # OPTIMAL, FEASIBLE, INFEASIBLE (proven), NOT_FOUND (none found in time)
    bound: float  # a lower bound of the cost of any schedule within the budget (see ``bound_scope``)
    bound_scope: str
    method: str
    solve_s: float
    budget: int
    topological_peak: int
    topological_cost: int
    smallest_possible_peak: int

    @property
    def fits(self) -> bool:
        return self.status in ("OPTIMAL", "FEASIBLE")

    @property
    def gap(self) -> float:
        return 0.0 if not self.fits or self.cost <= 0 else max(0.0, (self.cost - self.bound) / self.cost)


def solve_remat(problem: RematProblem, budget: int, time_limit: float = 30.0, keep_order: bool = False,
                copies: int = 2, workers: int = 2) -> RematResult:
    """The least-cost schedule within ``budget`` found in ``time_limit`` seconds (``keep_order``:
    first computations in the reference order, as Checkmate's and Moccasin's stages fix them;
    ``copies``: computations per node the exact model allows, at least what the warm start uses)."""
    start = time.perf_counter()
    deadline = start + time_limit
    topo = evaluate(problem, problem.order)
    floor = sum(problem.cost)
    least = problem.min_peak_bound()

    def result(schedule, ev, status, bound, scope, method):
        return RematResult(schedule, ev.cost, ev.peak, status, bound, scope, method, time.perf_counter() - start,
                           budget, topo.peak, topo.cost, least)

    if topo.peak <= budget:
        return result(list(problem.order), topo, "OPTIMAL", floor, "each node computed once", "topological")
    if budget < least:
        return result(list(problem.order), topo, "INFEASIBLE", floor, "each node computed once", "bound")
    schedule, ev = greedy(problem, budget, start + 0.4 * time_limit)
    method = "greedy"
    if ev.peak <= budget:
        schedule, ev = prune(problem, schedule, budget, start + 0.5 * time_limit)
    best, best_ev = schedule, ev
    fits = ev.peak <= budget
    bound, scope = float(floor), "each node computed once"
    status = "FEASIBLE" if fits else "NOT_FOUND"
    edges = sum(len(ps) for ps in problem.preds)
    tried = copies
    while True:
        left = deadline - time.perf_counter()
        if left <= 0.5 or BUILD_S_PER_LITERAL * (edges * tried * tried + problem.n * tried) > 0.5 * left:
            if method != "cp-sat" and left > 0.5:
                scope += "; CP-SAT not run: the model would take most of the time left to build"
            break
        from memplan.solvers.remat_cpsat import solve_cpsat
        outcome = solve_cpsat(problem, budget, best if fits else None, left, copies=tried, workers=workers,
                              keep_order=keep_order)
        if outcome.schedule is not None:
            cev = evaluate(problem, outcome.schedule)
            if not fits or cev.cost < best_ev.cost:
                best, best_ev, method = outcome.schedule, cev, "cp-sat"
            fits = True
            count = max(tried, max(Counter(best).values(), default=1))
            if outcome.status == "OPTIMAL":
                status, bound = "OPTIMAL", max(float(floor), outcome.bound)
                scope = f"at most {count} computations per node (CP-SAT, proven)"
            else:
                status = "FEASIBLE"
                if outcome.bound > floor:
                    bound, scope = outcome.bound, f"at most {count} computations per node (CP-SAT)"
            break
        if outcome.status == "INFEASIBLE" and not fits and tried < MAX_COPIES:
            tried = min(MAX_COPIES, 2 * tried)  # infeasible only within these copies: allow more
            method = f"greedy; cp-sat with up to {tried} copies"
            continue
        break
    if status == "OPTIMAL" and not problem.costs_exact:
        status = "FEASIBLE"  # optimal for the costs rounded to integers, not proven for the file's own
        scope += f" (for costs rounded to 1/{problem.cost_scale})"
    return result(best, best_ev, status, bound, scope, method)
