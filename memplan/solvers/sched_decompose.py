"""Decomposition for large schedules: cut vertices, sub-problems, repeated segments, window search.

**Cut vertices.** A node ``c`` comparable with every other node (each is an ancestor
or a descendant of ``c``) sits at the same step in every valid order: all its
ancestors run before it, all its descendants after. Cutting the DAG after each
cut vertex gives segments that every order runs one after another, so the
problem splits exactly: a buffer that crosses a segment is live from the start
of the segment (an input of it) or to its end (kept), one that passes over it
adds constant ``base_bytes``, and the peak of the whole is the largest peak of a
segment. Optimal segments give an optimal whole; segment lower bounds are lower
bounds of the whole. Transformer blocks (residual adds, layer norms) and
UNet encoders are full of cut vertices.

**Floating sources.** A node without predecessors (an ``arange``, a constant
mask) read only deep inside the graph would make every node before its first
reader incomparable with it. Moving such a source to just before its first
successor never raises the peak when its temp and unread outputs are no bigger
than what that successor allocates (the step before the successor then holds a
subset of what the successor's own step holds), so these sources are set aside
while finding cut vertices and put in the segment of their first successor:
still exact. Nodes with no predecessors nor successors, and (optionally) sinks,
are attached the same way heuristically; the decomposition is then marked
``exact=False`` and segment bounds are no longer bounds of the whole.

**Windows.** A segment too large to solve exactly is improved by large
neighbourhood search: re-solve exactly a window of consecutive steps around the
peak, everything outside fixed (any reordering inside a window of a valid order
stays valid).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from memplan.solvers.sched_cpsat import solve_exact
from memplan.solvers.sched_problem import INPUT, Buf, ScheduleProblem, live_profile


@dataclass
class Decomposition:
    """Segments (global node ids, each in index order) that every order runs one after another.

    ``exact``: True when restricting orders to the segment sequence loses no optimal order.
    ``attached``: how many nodes were placed in a segment instead of found between cut vertices.
    """

    segments: list[list[int]]
    exact: bool
    attached: int = 0


def _floating_source_ok(problem: ScheduleProblem, s: int, out: list[int]) -> bool:
    """True when moving source ``s`` to just before its first successor can never raise the peak."""
    extra = problem.temp[s] + sum(problem.buffers[i].size for i in problem.produced[s]
                                  if not problem.buffers[i].users and not problem.buffers[i].keep)
    return all(extra <= out[w] + problem.temp[w] for w in problem.succs[s])


def find_segments(problem: ScheduleProblem, attach: bool = False) -> Decomposition:
    """Split ``problem`` at its cut vertices (see the module docstring).

    ``attach``: also set aside sinks (nodes nobody depends on, such as weight
    gradients) and isolated nodes, and run each sink in the segment of its last
    predecessor, each isolated node in the last segment. This finds many more cuts
    in training graphs but may lose optimal orders (``exact=False``).
    """
    n = problem.n
    if n == 0:
        return Decomposition([], True)
    out = [0] * n
    for b in problem.buffers:
        if b.producer != INPUT:
            out[b.producer] += b.size
    deps, succs = problem.deps, problem.succs
    exact = True
    floating: dict[int, str] = {}
    for v in range(n):
        if not deps[v] and not succs[v]:
            if attach:
                floating[v] = "isolated"
        elif not deps[v] and _floating_source_ok(problem, v, out):
            floating[v] = "source"
    if attach:
        for v in range(n):
            if deps[v] and not succs[v] and not any(p in floating for p in deps[v]):
                floating[v] = "sink"
    if len(floating) == n:       # nothing left to cut: keep everything together
        floating = {}
    if any(kind != "source" for kind in floating.values()):
        exact = False

    core_mask = 0
    for v in range(n):
        if v not in floating:
            core_mask |= 1 << v
    n_core = n - len(floating)
    reach = problem.reach
    core_order = [v for v in problem.topo_order if v not in floating]
    seg_of = [-1] * n
    segments: list[list[int]] = [[]]
    for v in core_order:
        segments[-1].append(v)
        seg_of[v] = len(segments) - 1
        comparable = ((reach.anc[v] | reach.desc[v]) & core_mask).bit_count()
        if comparable == n_core - 1:
            segments.append([])
    if not segments[-1]:
        segments.pop()
    last = len(segments) - 1
    # sinks follow their last predecessor (all in the core); sources precede their first successor
    for v, kind in floating.items():
        if kind == "sink":
            seg_of[v] = max(seg_of[p] for p in deps[v])
        elif kind == "isolated":
            seg_of[v] = last
    for v, kind in floating.items():
        if kind == "source":
            seg_of[v] = min(seg_of[w] for w in succs[v])
    for v, kind in floating.items():
        segments[seg_of[v]].append(v)
    return Decomposition([sorted(s) for s in segments], exact, len(floating))


def extract_subproblem(problem: ScheduleProblem, nodes: list[int], rank: list[int], lo: int, hi: int,
                       base: int | None = None) -> ScheduleProblem:
    """The scheduling problem of ``nodes`` when every node with ``rank < lo`` runs before them and
    every node with ``rank > hi`` after (``nodes`` are those with ``lo <= rank <= hi``).

    Local node ``i`` is ``nodes[i]``. A buffer produced before and read inside becomes an input
    (producer -1) unless it is also needed after, in which case, like every buffer that passes
    over the nodes, it is counted in ``base_bytes`` (computed by a scan of all buffers unless
    given). A buffer produced inside and needed after is kept.
    """
    local = {v: i for i, v in enumerate(nodes)}

    def after(b: Buf) -> bool:
        return b.keep or any(rank[u] > hi for u in b.users)

    if base is None:
        base = problem.base_bytes
        for b in problem.buffers:
            if (b.producer == INPUT or rank[b.producer] < lo) and after(b):
                base += b.size
    seen: set[int] = set()
    bufs: list[Buf] = []
    for v in nodes:
        for i in problem.produced[v] + problem.used[v]:
            if i in seen:
                continue
            seen.add(i)
            b = problem.buffers[i]
            users = tuple(local[u] for u in b.users if u in local)
            if b.producer != INPUT and b.producer in local:
                bufs.append(Buf(b.size, local[b.producer], users, after(b)))
            elif not after(b):
                bufs.append(Buf(b.size, INPUT, users, False))
    preds = [[local[p] for p in problem.deps[v] if p in local] for v in nodes]
    return ScheduleProblem(len(nodes), preds, bufs, [problem.temp[v] for v in nodes], base)


def segment_bases(problem: ScheduleProblem, seg_of: list[int], n_segments: int) -> list[int]:
    """Bytes passing over each segment: produced in an earlier one and needed in a later one."""
    diff = [0] * (n_segments + 1)
    for b in problem.buffers:
        start = -1 if b.producer == INPUT else seg_of[b.producer]
        if b.keep:
            end = n_segments
        elif b.users:
            end = max(seg_of[u] for u in b.users)
        else:
            continue
        if end - start >= 2:          # strictly inside (start, end)
            diff[start + 1] += b.size
            diff[end] -= b.size
    bases = []
    running = problem.base_bytes
    for k in range(n_segments):
        running += diff[k]
        bases.append(running)
    return bases


def canonical_key(sub: ScheduleProblem) -> tuple:
    """A hashable form of a sub-problem without its base bytes: equal keys, same optimal orders.

    Nodes are compared in the order given (segments list nodes in index order), so repeated
    blocks emitted by the same code match; isomorphic but differently numbered ones may not.
    """
    bufs = tuple(sorted((b.size, b.producer, b.users, b.keep) for b in sub.buffers))
    return (sub.n, tuple(tuple(d) for d in sub.deps), tuple(sub.temp), bufs)


@dataclass
class WindowStats:
    """What window search did: windows solved, windows that improved, wall time."""

    windows: int = 0
    improved: int = 0
    wall_s: float = 0.0


def improve_by_windows(problem: ScheduleProblem, order: list[int], time_limit: float,
                       window: int = 40, max_window: int = 90, lower: int = 0,
                       window_time: float = 2.0, workers: int = 2) -> tuple[list[int], WindowStats]:
    """Lower the peak of ``order`` by re-solving windows of consecutive steps around the peak.

    Each window is solved exactly (CP-SAT, hinted with the current order) with the rest
    of the order fixed; a window is kept when its peak drops. When every window around
    the current peak steps is locally optimal the window grows, up to ``max_window``.
    Stops at ``lower`` (a known lower bound) or after ``time_limit`` seconds.
    """
    start = time.perf_counter()
    deadline = start + time_limit
    stats = WindowStats()
    order = list(order)
    n = problem.n
    profile = live_profile(problem, order)
    tried: set[tuple[int, int]] = set()
    size = min(window, n)
    while time.perf_counter() < deadline - 0.05:
        peak = max(profile)
        if peak <= lower:
            break
        peak_steps = [i for i, x in enumerate(profile) if x == peak]
        candidate = None
        for s in peak_steps:
            for shift in (size // 2, size // 4, 3 * size // 4, 0, size - 1):
                a = max(0, min(s - shift, n - size))
                if (a, a + size) not in tried:
                    candidate = (a, a + size)
                    break
            if candidate:
                break
        if candidate is None:
            if size >= min(max_window, n):
                break
            size = min(max_window, n, int(size * 1.5))
            continue
        a, b = candidate
        rank = [0] * n
        for i, v in enumerate(order):
            rank[v] = i
        nodes = order[a:b]
        sub = extract_subproblem(problem, nodes, rank, a, b - 1)
        budget = min(window_time, deadline - time.perf_counter())
        res = solve_exact(sub, list(range(len(nodes))), budget, workers)
        stats.windows += 1
        current = max(profile[a:b])
        if res.peak < current:
            order[a:b] = [nodes[i] for i in res.order]
            profile = live_profile(problem, order)
            stats.improved += 1
            tried = {w for w in tried if w[1] <= a or w[0] >= b}
        else:
            tried.add(candidate)
    stats.wall_s = time.perf_counter() - start
    return order, stats
