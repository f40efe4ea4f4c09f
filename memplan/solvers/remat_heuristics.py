"""Heuristic rematerialisation: schedules under a budget, fast, each checked by exact evaluation.

- ``topological``: the reference order, nothing recomputed (the cost floor; feasible only when its
  peak fits).
- ``greedy``: from the reference order, repeatedly take a step where the live bytes peak and drop
  one value held across it: the value is recomputed just before its next reader after the peak
  (its own inputs are then read there, which may hold them longer: every move is evaluated
  exactly, and only a move that lowers the peak, or the bytes at its peak steps, is taken). Among
  the candidates the cheapest recompute per byte freed goes first (the greedy that drops the
  cheapest-to-recompute bytes first). When a recompute's own input is what holds the peak up, the
  next round may recompute that input too, so chains of recomputation form.
- ``prune``: recomputations the schedule does not need to stay under the budget are removed again,
  most expensive first.
"""
from __future__ import annotations

import time

from memplan.solvers.remat_problem import Evaluation, InvalidSchedule, RematProblem, evaluate


def topological(problem: RematProblem) -> list[int]:
    return list(problem.order)


def _score(ev: Evaluation) -> tuple[int, int, int]:
    top = ev.peak
    at_top = [b for b in ev.profile if b == top]
    return top, len(at_top), sum(sorted(ev.profile, reverse=True)[:8])


def greedy(problem: RematProblem, budget: int, deadline: float, start: list[int] | None = None,
           candidates: int = 12) -> tuple[list[int], Evaluation]:
    """The lowest-peak schedule the greedy reaches (it stops at ``budget``, when no move helps, or
    at ``deadline``, a ``time.perf_counter()`` value)."""
    schedule = list(start if start is not None else problem.order)
    ev = evaluate(problem, schedule)
    while ev.peak > budget and time.perf_counter() < deadline:
        best = _best_move(problem, schedule, ev, candidates, deadline)
        if best is None:  # none of the cheapest helps: look further down the list
            best = _best_move(problem, schedule, ev, 8 * candidates, deadline, skip=candidates)
        if best is None:
            break
        schedule, ev = best
    return schedule, ev


def _chain(problem, schedule, ev, v, at, depth):
    """``v`` recomputed just before step ``at``, with those of its inputs (up to ``depth`` levels)
    whose latest computation is no longer held at ``at`` (reading it there would hold it again)."""
    latest: dict[int, int] = {}
    for k in range(at):
        latest[schedule[k]] = k
    out: list[int] = []

    def need(u, d):
        if d > 0:
            for p in problem.preds[u]:
                if p in latest and ev.last_read[latest[p]] < at and p not in out:
                    need(p, d - 1)
        out.append(u)
    need(v, depth)
    return out


def _best_move(problem, schedule, ev, candidates, deadline, skip=0):
    peak = ev.peak
    steps = [j for j, b in enumerate(ev.profile) if b == peak]
    current = _score(ev)
    readers_of: dict[int, list[int]] = {}
    for k in range(len(schedule)):
        for i in ev.reads[k]:
            readers_of.setdefault(i, []).append(k)
    for j in steps[:4]:  # the first few peak steps: one of them must fall
        moves = []
        for i in range(j):
            if ev.last_read[i] <= j:
                continue
            rs = readers_of.get(i, [])
            if j in rs:
                continue  # read at the peak step itself: it must be there
            v = schedule[i]
            nxt = next(r for r in rs if r > j)
            if problem.ram[v] == 0:
                continue
            moves.append((problem.cost[v] / problem.ram[v], nxt, v))
        moves.sort()
        found = None
        for depth in (0, 3):  # the value alone, then with the inputs its recompute would hold again
            for _, nxt, v in moves[skip:candidates]:
                if time.perf_counter() > deadline:
                    break
                chain = _chain(problem, schedule, ev, v, nxt, depth) if depth else [v]
                if depth and len(chain) == 1:
                    continue
                trial = schedule[:nxt] + chain + schedule[nxt:]
                tev = evaluate(problem, trial)
                score = _score(tev)
                cost = sum(problem.cost[u] for u in chain)
                if score < current and (found is None or (score, cost) < (found[2], found[3])):
                    found = (trial, tev, score, cost)
                    if tev.peak < peak:
                        break
            if found is not None:
                return found[0], found[1]
    return None


def prune(problem: RematProblem, schedule: list[int], budget: int, deadline: float) -> tuple[list[int], Evaluation]:
    """Remove recomputations (a node's second and later computations) while the peak stays within
    ``budget``, the most expensive first; one pass."""
    ev = evaluate(problem, schedule)
    seen: set[int] = set()
    extra = []
    for j, v in enumerate(schedule):
        if v in seen:
            extra.append((-problem.cost[v], j))
        seen.add(v)
    keep = [True] * len(schedule)
    for _, j in sorted(extra):
        if time.perf_counter() > deadline:
            break
        keep[j] = False
        trial = [v for v, k in zip(schedule, keep) if k]
        try:
            tev = evaluate(problem, trial)
        except InvalidSchedule:  # a later computation read this one
            keep[j] = True
            continue
        if tev.peak <= budget:
            ev = tev
        else:
            keep[j] = True
    return [v for v, k in zip(schedule, keep) if k], ev
