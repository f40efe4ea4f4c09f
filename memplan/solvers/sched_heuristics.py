"""Fast scheduling heuristics: topological baseline, memory-aware list scheduling, BFS and DFS.

Each heuristic returns a valid topological order in ``O((n + buffers) log n)``;
:func:`best_heuristic` runs the portfolio and keeps the order with the lowest peak
(what TorchInductor's memory-aware reordering does today).
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from memplan.solvers.sched_problem import INPUT, ScheduleProblem, peak_of


def topological_baseline(problem: ScheduleProblem) -> list[int]:
    """The given order (nodes ``0..n-1``) when it is topological; else Kahn's, smallest index first."""
    return list(problem.topo_order)


def bfs_order(problem: ScheduleProblem) -> list[int]:
    """Kahn's algorithm with a FIFO queue: runs the graph level by level (wide, often memory-hungry)."""
    indeg = [len(d) for d in problem.deps]
    queue = deque(v for v in range(problem.n) if indeg[v] == 0)
    order = []
    while queue:
        v = queue.popleft()
        order.append(v)
        for s in problem.succs[v]:
            indeg[s] -= 1
            if indeg[s] == 0:
                queue.append(s)
    return order


class _FreeTracker:
    """Per-node bytes freed by running it next (buffers it reads for the last time, outputs nobody reads).

    ``on_run(v)`` updates the counts and returns the nodes whose freed bytes grew.
    """

    def __init__(self, problem: ScheduleProblem):
        self.problem = problem
        self.remaining = [len(b.users) for b in problem.buffers]
        self.freed = [0] * problem.n
        self.out = [0] * problem.n
        for i, b in enumerate(problem.buffers):
            if b.producer != INPUT:
                self.out[b.producer] += b.size
                if not b.users and not b.keep:
                    self.freed[b.producer] += b.size
            if len(b.users) == 1 and not b.keep:
                self.freed[b.users[0]] += b.size

    def delta(self, v: int) -> int:
        """Change of live bytes after ``v`` runs."""
        return self.out[v] - self.freed[v]

    def on_run(self, v: int, done: list[bool]) -> list[int]:
        changed = []
        for i in self.problem.used[v]:
            self.remaining[i] -= 1
            b = self.problem.buffers[i]
            if self.remaining[i] == 1 and not b.keep:
                last = next(u for u in b.users if not done[u])
                self.freed[last] += b.size
                changed.append(last)
        return changed


def greedy_order(problem: ScheduleProblem, rule: str = "delta") -> list[int]:
    """Memory-aware list scheduling: repeatedly run the ready node with the best key.

    ``rule="delta"``: the smallest resulting live bytes (outputs minus frees), ties
    broken by the most bytes freed, then by index. ``rule="footprint"``: the smallest
    bytes needed during the step (outputs + temp), ties broken by delta.
    """
    tracker = _FreeTracker(problem)
    temp = problem.temp

    def key(v: int) -> tuple:
        if rule == "delta":
            return (tracker.delta(v), -tracker.freed[v], v)
        if rule == "footprint":
            return (tracker.out[v] + temp[v], tracker.delta(v), v)
        raise ValueError(f"greedy_order: unknown rule {rule!r}")

    indeg = [len(d) for d in problem.deps]
    done = [False] * problem.n
    ready = [v for v in range(problem.n) if indeg[v] == 0]
    heap = [(key(v), v) for v in ready]
    heapq.heapify(heap)
    current = {v: key(v) for v in ready}
    order = []
    while heap:
        k, v = heapq.heappop(heap)
        if done[v] or current.get(v) != k:
            continue                       # stale entry: the key changed since it was pushed
        done[v] = True
        del current[v]
        order.append(v)
        for u in tracker.on_run(v, done):
            if u in current:
                current[u] = key(u)
                heapq.heappush(heap, (current[u], u))
        for s in problem.succs[v]:
            indeg[s] -= 1
            if indeg[s] == 0:
                current[s] = key(s)
                heapq.heappush(heap, (current[s], s))
    return order


def dfs_order(problem: ScheduleProblem) -> list[int]:
    """Depth-first list scheduling: continue with the successors of the node just run.

    Newly ready nodes go on a stack, the one freeing the most on top, so a branch is
    finished before the next one starts (fan-out / fan-in patterns: attention heads,
    residual blocks).
    """
    tracker = _FreeTracker(problem)
    indeg = [len(d) for d in problem.deps]
    done = [False] * problem.n
    stack = sorted((v for v in range(problem.n) if indeg[v] == 0),
                   key=lambda v: (-tracker.delta(v), -v))
    order = []
    while stack:
        v = stack.pop()
        done[v] = True
        order.append(v)
        tracker.on_run(v, done)
        newly = []
        for s in problem.succs[v]:
            indeg[s] -= 1
            if indeg[s] == 0:
                newly.append(s)
        newly.sort(key=lambda s: (-tracker.delta(s), -s))
        stack.extend(newly)
    return order


def demand_dfs_order(problem: ScheduleProblem, heaviest_first: bool = True) -> list[int]:
    """Post-order DFS from the sinks: a node runs right after everything it needs.

    Each node's predecessors are visited before it, the one whose sub-graph ends in the
    biggest output first (``heaviest_first``, as in Sethi-Ullman register numbering) or in
    index order. Sinks are taken in index order.
    """
    out = [0] * problem.n
    for b in problem.buffers:
        if b.producer != INPUT:
            out[b.producer] += b.size
    done = [False] * problem.n
    order = []
    for root in range(problem.n):
        if done[root] or problem.succs[root]:
            continue
        stack = [(root, False)]
        while stack:
            v, expanded = stack.pop()
            if done[v]:
                continue
            if expanded:
                done[v] = True
                order.append(v)
                continue
            stack.append((v, True))
            preds = [p for p in problem.deps[v] if not done[p]]
            # the stack runs the last-pushed first: push the one to run first last
            preds.sort(key=(lambda p: (out[p], -p)) if heaviest_first else (lambda p: -p))
            stack.extend((p, False) for p in preds)
    return order


HEURISTICS = {
    "baseline": topological_baseline,
    "greedy-delta": lambda p: greedy_order(p, "delta"),
    "greedy-footprint": lambda p: greedy_order(p, "footprint"),
    "bfs": bfs_order,
    "dfs": dfs_order,
    "demand-dfs-heavy": lambda p: demand_dfs_order(p, True),
    "demand-dfs": lambda p: demand_dfs_order(p, False),
}


@dataclass
class HeuristicResult:
    """Best order of the portfolio, its peak, its heuristic's name and every heuristic's peak."""

    order: list[int]
    peak: int
    name: str
    peaks: dict[str, int]


def best_heuristic(problem: ScheduleProblem, extra: dict[str, list[int]] | None = None) -> HeuristicResult:
    """Run every heuristic (plus the ``extra`` candidate orders) and keep the lowest peak.

    Ties go to the earliest in :data:`HEURISTICS` order, so the baseline wins ties.
    """
    peaks: dict[str, int] = {}
    best: tuple[int, str, list[int]] | None = None
    candidates = {name: fn(problem) for name, fn in HEURISTICS.items()}
    candidates.update(extra or {})
    for name, order in candidates.items():
        peak = peak_of(problem, order)
        peaks[name] = peak
        if best is None or peak < best[0]:
            best = (peak, name, order)
    assert best is not None
    return HeuristicResult(best[2], best[0], best[1], peaks)
