"""Rematerialisation instances: a DAG of computations with compute costs and output sizes.

The semantics are Checkmate's and Moccasin's (and those of Moccasin's ``get_mem_from_schedule``):

- a schedule is a sequence of node computations; a node may appear more than once (a
  recomputation) and every node appears at least once;
- each computation reads the latest earlier computation of each of its predecessors (which must
  exist);
- a computed value occupies its bytes from its computation until its last reader has run;
- the peak is the maximum over steps of the bytes of the values live at that step (the value
  being computed included); the cost is the sum of the compute costs over the sequence.

Instances are read from networkx node-link JSON (``nx.node_link_data``), as parsed data only:
nodes carry ``cost_cpu`` and ``cost_ram`` (or, in Moccasin's random layered graphs, ``duration``
and ``out_cost``); edges are ``links`` (or ``edges``) with ``source``/``target`` (or ``"0"``/``"1"``).
A graph attribute ``order`` (a topological order of all node ids) is the reference order.
"""
from __future__ import annotations

import json
import math
from decimal import ROUND_HALF_EVEN, Decimal
from dataclasses import dataclass, field
from pathlib import Path

from memplan.errors import MemplanError

MAX_NODES = 200_000
MAX_EDGES = 2_000_000


class RematInputError(MemplanError):
    """A rematerialisation instance that cannot be read (names the file and what is wrong)."""


class InvalidSchedule(MemplanError):
    """A schedule that breaks the semantics (a read before any computation, a node never computed)."""


@dataclass
class RematProblem:
    """Nodes ``0..n-1`` (``ids`` maps them back to the file's ids), in a topological order."""

    ids: list
    cost: list[int]  # compute cost of one computation (integers: scaled where the file has fractions)
    ram: list[int]  # bytes of the node's output
    preds: list[list[int]]
    order: list[int]  # the reference topological order
    name: str = ""
    cost_scale: int = 1  # file cost = cost / cost_scale (a power of ten)
    costs_exact: bool = True  # False: the file's costs were rounded to 1 / cost_scale
    succs: list[list[int]] = field(default_factory=list)

    def __post_init__(self):
        if not self.succs:
            self.succs = [[] for _ in self.ids]
            for v, ps in enumerate(self.preds):
                for u in ps:
                    self.succs[u].append(v)

    @property
    def n(self) -> int:
        return len(self.ids)

    def file_cost(self, cost: int) -> float:
        return cost / self.cost_scale if self.cost_scale != 1 else cost

    def min_peak_bound(self) -> int:
        """No schedule peaks lower: computing ``v`` holds its inputs and its output at once."""
        return max((self.ram[v] + sum(self.ram[u] for u in set(ps)) for v, ps in enumerate(self.preds)), default=0)


@dataclass
class Evaluation:
    peak: int
    cost: int
    profile: list[int]  # live bytes at each step
    last_read: list[int]  # per computation (step): the last step reading it (itself if none)
    reads: list[list[int]]  # per step: the steps of the computations it reads


def evaluate(problem: RematProblem, schedule: list[int]) -> Evaluation:
    """Peak, cost and live profile of ``schedule`` (node indices) under the semantics above."""
    n = problem.n
    latest = [-1] * n
    last_read: list[int] = []
    reads: list[list[int]] = []
    for j, v in enumerate(schedule):
        if not 0 <= v < n:
            raise InvalidSchedule(f"step {j}: no node {v}")
        mine = []
        for u in problem.preds[v]:
            i = latest[u]
            if i < 0:
                raise InvalidSchedule(f"step {j}: node {problem.ids[v]!r} reads node {problem.ids[u]!r}, "
                                      "which has not been computed before it")
            last_read[i] = j
            mine.append(i)
        reads.append(mine)
        latest[v] = j
        last_read.append(j)
    missing = [problem.ids[v] for v in range(n) if latest[v] < 0]
    if missing:
        raise InvalidSchedule(f"{len(missing)} nodes are never computed (first: {missing[0]!r})")
    delta = [0] * (len(schedule) + 1)
    for i, v in enumerate(schedule):
        delta[i] += problem.ram[v]
        delta[last_read[i] + 1] -= problem.ram[v]
    profile, live = [], 0
    for j in range(len(schedule)):
        live += delta[j]
        profile.append(live)
    return Evaluation(max(profile, default=0), sum(problem.cost[v] for v in schedule), profile, last_read, reads)


MAX_NUMBER = 2**62  # bytes and costs: the solvers' integers


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, int) and (
            value > MAX_NUMBER) or not math.isfinite(value) or value < 0 or value > MAX_NUMBER:
        raise RematInputError(f"{where}: {what} must be a finite number in 0..2**62, got {str(value)[:40]!r}")
    return value


def read_graph_json(path: str | Path) -> RematProblem:
    """Parse a node-link JSON instance (never evaluated: JSON data only)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RematInputError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise RematInputError(f"{path}: not a UTF-8 text file") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an integer of too many digits
        raise RematInputError(f"{path}: not JSON ({str(exc).splitlines()[0][:80]})") from None
    return problem_from_node_link(data, str(path))


def problem_from_node_link(data, where: str = "graph") -> RematProblem:
    """A :class:`RematProblem` from node-link data (a dict as ``nx.node_link_data`` writes it)."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise RematInputError(f"{where}: expected node-link JSON (an object with a 'nodes' list)")
    if data.get("directed") is False:
        raise RematInputError(f"{where}: the graph is undirected; a computation graph is a directed acyclic graph")
    nodes = data["nodes"]
    links = data.get("links", data.get("edges", []))
    if not isinstance(links, list):
        raise RematInputError(f"{where}: 'links' must be a list")
    if len(nodes) > MAX_NODES or len(links) > MAX_EDGES:
        raise RematInputError(f"{where}: {len(nodes)} nodes and {len(links)} edges exceed the limits "
                              f"({MAX_NODES} nodes, {MAX_EDGES} edges)")
    if not nodes:
        raise RematInputError(f"{where}: the graph has no nodes")
    ids, index, costs, rams = [], {}, [], []
    for k, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise RematInputError(f"{where}: node #{k} is not an object")
        nid = node.get("id", node.get("name"))
        if isinstance(nid, (list, dict)) or nid is None or isinstance(nid, float) and not math.isfinite(nid):
            raise RematInputError(f"{where}: node #{k} has no usable 'id'")
        if isinstance(nid, bool):
            raise RematInputError(f"{where}: node #{k} has a boolean id")
        key = _key(nid)
        if key in index:
            raise RematInputError(f"{where}: node id {nid!r} appears twice")
        cpu = node.get("cost_cpu", node.get("duration"))
        ram = node.get("cost_ram", node.get("out_cost"))
        if cpu is None or ram is None:
            raise RematInputError(f"{where}: node {nid!r} lacks 'cost_cpu' or 'cost_ram'")
        costs.append(_number(cpu, f"node {nid!r} cost_cpu", where))
        ram = _number(ram, f"node {nid!r} cost_ram", where)
        if ram != int(ram):
            raise RematInputError(f"{where}: node {nid!r} cost_ram must be a whole number of bytes, got {ram}")
        rams.append(int(ram))
        index[key] = k
        ids.append(nid)
    preds: list[list[int]] = [[] for _ in ids]
    seen = set()
    for k, link in enumerate(links):
        if not isinstance(link, dict):
            raise RematInputError(f"{where}: edge #{k} is not an object")
        s = link.get("source", link.get("0"))
        t = link.get("target", link.get("1"))
        if _key(s) not in index or _key(t) not in index:
            raise RematInputError(f"{where}: edge #{k} ({str(s)[:30]!r} -> {str(t)[:30]!r}) names a node not in 'nodes'")
        u, v = index[_key(s)], index[_key(t)]
        if u == v:
            raise RematInputError(f"{where}: edge #{k} is a self-loop on node {ids[u]!r}")
        if (u, v) not in seen:
            seen.add((u, v))
            preds[v].append(u)
    order = _topological(preds, ids, where)
    attrs = data.get("graph") if isinstance(data.get("graph"), dict) else {}
    if "order" in attrs:
        given = attrs["order"]
        if not isinstance(given, list) or len(given) != len(ids) or any(_key(x) not in index for x in given):
            raise RematInputError(f"{where}: graph attribute 'order' must list every node id once")
        given = [index[_key(x)] for x in given]
        pos = {v: i for i, v in enumerate(given)}
        if len(pos) != len(ids) or any(pos[u] >= pos[v] for v, ps in enumerate(preds) for u in ps):
            raise RematInputError(f"{where}: graph attribute 'order' is not a topological order of the graph")
        order = given
    if sum(rams) > MAX_TOTAL:
        raise RematInputError(f"{where}: the nodes' cost_ram sum to {sum(rams):,}, above 2**58 (the solver's "
                              "integers hold a budget's worth of every copy)")
    cost, scale, exact = scaled_costs(costs, where)
    return RematProblem(ids, cost, rams, preds, order, str(attrs.get("name", ""))[:200], scale, exact)


MAX_TOTAL = 2**58  # sums of costs or bytes over all nodes: room for 16 copies of each in 2**62
MAX_DECIMALS = 12


def scaled_costs(costs: list, where: str = "graph") -> tuple[list[int], int, bool]:
    """Integer costs for the solvers: each file cost times ``10**k``, the fewest decimals that
    make every one whole (exact), or, where that would exceed the solvers' integers, the most
    decimals that fit, rounded (not exact: an optimum is then optimal for the rounded costs)."""
    decimals = [Decimal(c) if isinstance(c, int) else Decimal(repr(float(c))) for c in costs]
    total = sum(decimals)
    if total > MAX_TOTAL:
        raise RematInputError(f"{where}: the nodes' cost_cpu sum to {total:.3e}, above 2**58")
    k = min(MAX_DECIMALS, max((max(0, -d.as_tuple().exponent) for d in decimals), default=0))
    exact = all(-d.as_tuple().exponent <= k for d in decimals)
    while k > 0 and total * 10 ** k > MAX_TOTAL:
        k, exact = k - 1, False
    scale = 10 ** k
    cost = [int((d * scale).to_integral_value(rounding=ROUND_HALF_EVEN)) for d in decimals]
    exact = exact and all(c == d * scale for c, d in zip(cost, decimals))
    return cost, scale, exact


def _key(x):
    if isinstance(x, bool):
        return ("bool", str(x))  # never a node's key: ids are not booleans, and True is not node 1
    return (type(x).__name__ if not isinstance(x, (int, str)) else "v", x if isinstance(x, (int, str)) else str(x))


def _topological(preds: list[list[int]], ids: list, where: str) -> list[int]:
    n = len(preds)
    indegree = [len(ps) for ps in preds]
    succs = [[] for _ in range(n)]
    for v, ps in enumerate(preds):
        for u in ps:
            succs[u].append(v)
    ready = [v for v in range(n) if indegree[v] == 0]
    order = []
    while ready:
        v = ready.pop()
        order.append(v)
        for w in succs[v]:
            indegree[w] -= 1
            if indegree[w] == 0:
                ready.append(w)
    if len(order) != n:
        stuck = next(v for v in range(n) if indegree[v] > 0)
        raise RematInputError(f"{where}: the graph has a cycle (through node {ids[stuck]!r})")
    return order
