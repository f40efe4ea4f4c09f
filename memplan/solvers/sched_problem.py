"""The scheduling instance, its liveness (peak of an order) and an order-independent lower bound.

A :class:`ScheduleProblem` is a plain DAG of ``n`` nodes with buffers; it knows
nothing of torch or ONNX. A buffer is allocated when its producer runs and is
freed after the last of its users runs; a kept buffer (a graph output) lives to
the end; a buffer nobody reads lives only during its producer's step. This is
exactly the rule of :func:`memplan.analysis.liveness.liveness`: at step ``i`` a
buffer counts if it was produced at or before ``i`` and is last used at or
after ``i``.

Two extensions serve sub-problems (a segment of a larger graph) and are useful
on their own: a buffer whose ``producer`` is ``-1`` is live before the first
step (an input of the segment) until its last user, and ``base_bytes`` are
live at every step (buffers that pass over the segment).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

INPUT = -1  # producer of a buffer that is live before the first step


@dataclass(frozen=True)
class Buf:
    """A buffer of ``size`` bytes written by node ``producer`` and read by ``users``.

    ``keep``: live until the end of the schedule (a graph output).
    ``producer == -1``: live from before the first step (an input of a segment).
    """

    size: int
    producer: int
    users: tuple[int, ...] = ()
    keep: bool = False

    def __post_init__(self):
        object.__setattr__(self, "users", tuple(sorted(set(self.users))))


@dataclass
class ScheduleProblem:
    """Find an order of the ``n`` nodes of a DAG (``preds[v]``: nodes that must run
    before ``v``) that minimises the peak of live buffer bytes.

    ``temp[v]``: scratch bytes live only during ``v``'s step. ``base_bytes``: bytes
    live at every step. ``names``: optional node names for messages. A buffer's
    users implicitly depend on its producer.

    >>> p = ScheduleProblem(3, [[], [0], [0]], [Buf(4, 0, (1, 2)), Buf(1, 1, keep=True), Buf(1, 2, keep=True)])
    >>> peak_of(p, [0, 1, 2])
    6
    """

    n: int
    preds: list[list[int]]
    buffers: list[Buf]
    temp: list[int] = field(default_factory=list)
    base_bytes: int = 0
    names: list[str] | None = None

    def __post_init__(self):
        if not self.temp:
            self.temp = [0] * self.n
        if len(self.preds) != self.n or len(self.temp) != self.n:
            raise ValueError(f"ScheduleProblem: {self.n} nodes but {len(self.preds)} pred lists "
                             f"and {len(self.temp)} temp entries")
        self.buffers = [b if isinstance(b, Buf) else Buf(*b) for b in self.buffers]
        for i, b in enumerate(self.buffers):
            if not (INPUT <= b.producer < self.n) or any(not (0 <= u < self.n) for u in b.users):
                raise ValueError(f"buffer {i}: producer {b.producer} or users {b.users} out of range 0..{self.n - 1}")
            if b.producer in b.users:
                raise ValueError(f"buffer {i}: node {b.producer} both produces and reads it")
            if b.size < 0:
                raise ValueError(f"buffer {i}: negative size {b.size}")
        for v, ps in enumerate(self.preds):
            if any(not (0 <= p < self.n) or p == v for p in ps):
                raise ValueError(f"node {self.node_name(v)}: bad predecessor list {ps}")
        if len(self.topo_order) != self.n:
            raise ValueError("ScheduleProblem: the dependency graph has a cycle")

    def node_name(self, v: int) -> str:
        return self.names[v] if self.names else str(v)

    @cached_property
    def deps(self) -> list[list[int]]:
        """Predecessors including the implied producer -> user edges, sorted, no duplicates."""
        deps = [set(ps) for ps in self.preds]
        for b in self.buffers:
            if b.producer >= 0:
                for u in b.users:
                    deps[u].add(b.producer)
        return [sorted(d) for d in deps]

    @cached_property
    def succs(self) -> list[list[int]]:
        succs: list[list[int]] = [[] for _ in range(self.n)]
        for v, ps in enumerate(self.deps):
            for p in ps:
                succs[p].append(v)
        return succs

    @cached_property
    def produced(self) -> list[list[int]]:
        """Buffer ids produced by each node."""
        out: list[list[int]] = [[] for _ in range(self.n)]
        for i, b in enumerate(self.buffers):
            if b.producer >= 0:
                out[b.producer].append(i)
        return out

    @cached_property
    def used(self) -> list[list[int]]:
        """Buffer ids read by each node."""
        out: list[list[int]] = [[] for _ in range(self.n)]
        for i, b in enumerate(self.buffers):
            for u in b.users:
                out[u].append(i)
        return out

    @cached_property
    def topo_order(self) -> list[int]:
        """The given order if it is topological, else Kahn's order taking the smallest index first."""
        deps = self.deps
        if all(p < v for v in range(self.n) for p in deps[v]):
            return list(range(self.n))
        indeg = [len(d) for d in deps]
        ready = [v for v in range(self.n) if indeg[v] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            v = heapq.heappop(ready)
            order.append(v)
            for s in self.succs[v]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(ready, s)
        return order

    @cached_property
    def reach(self) -> "Reachability":
        return Reachability(self)


class Reachability:
    """Ancestor and descendant sets of every node as Python-int bitsets (bit ``u`` set: ``u`` in the set)."""

    def __init__(self, problem: ScheduleProblem):
        n = problem.n
        order = problem.topo_order
        anc = [0] * n
        for v in order:
            a = 0
            for p in problem.deps[v]:
                a |= anc[p] | (1 << p)
            anc[v] = a
        desc = [0] * n
        for v in reversed(order):
            d = 0
            for s in problem.succs[v]:
                d |= desc[s] | (1 << s)
            desc[v] = d
        self.anc = anc
        self.desc = desc
        self.n_anc = [a.bit_count() for a in anc]
        self.n_desc = [d.bit_count() for d in desc]


def check_order(problem: ScheduleProblem, order) -> None:
    """Raise ``ValueError`` unless ``order`` is a permutation of the nodes respecting every dependency."""
    order = list(order)
    if sorted(order) != list(range(problem.n)):
        raise ValueError(f"order is not a permutation of the {problem.n} nodes")
    step = [0] * problem.n
    for i, v in enumerate(order):
        step[v] = i
    for v, ps in enumerate(problem.deps):
        for p in ps:
            if step[p] > step[v]:
                raise ValueError(f"order runs node {problem.node_name(v)} before its "
                                 f"predecessor {problem.node_name(p)}")


def is_topological(problem: ScheduleProblem, order) -> bool:
    """True when ``order`` is a valid schedule of ``problem``."""
    try:
        check_order(problem, order)
    except ValueError:
        return False
    return True


def buffer_interval(problem: ScheduleProblem, b: Buf, step: list[int]) -> tuple[int, int] | None:
    """Inclusive ``(first, last)`` steps during which ``b`` is live, or None if never live."""
    last_step = problem.n - 1
    start = 0 if b.producer == INPUT else step[b.producer]
    if b.keep:
        return start, last_step
    if b.users:
        return start, max(step[u] for u in b.users)
    if b.producer == INPUT:
        return None
    return start, start


def live_profile(problem: ScheduleProblem, order) -> list[int]:
    """Bytes live at every step of ``order`` (buffers, plus the running node's temp, plus base bytes)."""
    check_order(problem, order)
    n = problem.n
    step = [0] * n
    for i, v in enumerate(order):
        step[v] = i
    diff = [0] * (n + 1)
    for b in problem.buffers:
        iv = buffer_interval(problem, b, step)
        if iv is not None and b.size:
            diff[iv[0]] += b.size
            diff[iv[1] + 1] -= b.size
    profile = []
    running = problem.base_bytes
    for i, v in enumerate(order):
        running += diff[i]
        profile.append(running + problem.temp[v])
    return profile


def peak_of(problem: ScheduleProblem, order) -> int:
    """Peak live bytes of ``order`` (0 for an empty problem)."""
    return max(live_profile(problem, order), default=0)


def _bits_to_mask(bits: int, n: int) -> np.ndarray:
    raw = np.frombuffer(bits.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def must_live_bytes(problem: ScheduleProblem) -> list[int]:
    """For every node, the bytes that are live during its step in *every* valid order.

    A buffer produced by ``p`` is live while node ``v`` runs, whatever the order, when
    ``v`` produces or reads it, or when ``p`` is an ancestor of ``v`` and ``v`` is an
    ancestor of one of its users (then ``p`` runs before ``v`` and that user after),
    or when it is kept and ``p`` is an ancestor of ``v``. An input buffer (producer -1)
    is live at every ancestor of one of its users. Add the node's temp and the base bytes.
    """
    n = problem.n
    reach = problem.reach
    total = np.zeros(n, dtype=np.int64)
    always = problem.base_bytes
    for b in problem.buffers:
        if b.size == 0:
            continue
        if b.producer == INPUT and b.keep:
            always += b.size
            continue
        cover = 0
        for u in b.users:
            cover |= 1 << u
        if b.producer == INPUT:
            for u in b.users:
                cover |= reach.anc[u]
        else:
            cover |= 1 << b.producer
            if b.keep:
                cover |= reach.desc[b.producer]
            elif b.users:
                below_users = 0
                for u in b.users:
                    below_users |= reach.anc[u]
                cover |= reach.desc[b.producer] & below_users
        if cover:
            total[_bits_to_mask(cover, n)] += b.size
    return [int(t) + always + problem.temp[v] for v, t in enumerate(total)]


def final_step_bytes(problem: ScheduleProblem) -> int:
    """Bytes live at the last step of every order: all kept buffers, plus the least that the
    last node (some sink) needs besides them (its temp, unread outputs and inputs)."""
    if problem.n == 0:
        return 0
    kept = sum(b.size for b in problem.buffers if b.keep)
    least = None
    for v in range(problem.n):
        if problem.succs[v]:
            continue
        own = problem.temp[v]
        own += sum(problem.buffers[i].size for i in problem.produced[v]
                   if not problem.buffers[i].keep and not problem.buffers[i].users)
        own += sum(problem.buffers[i].size for i in problem.used[v] if not problem.buffers[i].keep)
        least = own if least is None else min(least, own)
    return problem.base_bytes + kept + (least or 0)


def lower_bound(problem: ScheduleProblem) -> int:
    """An order-independent lower bound on the peak of any valid order.

    Every order runs every node once, and while node ``v`` runs the buffers counted
    by :func:`must_live_bytes` are live whatever the order (``v``'s inputs, outputs
    and temp, and every buffer produced by an ancestor and read by a descendant of
    ``v``). So the peak of any order is at least the largest of these sums. Every
    order also ends with all kept buffers live (:func:`final_step_bytes`).
    """
    return max(max(must_live_bytes(problem), default=0), final_step_bytes(problem))
