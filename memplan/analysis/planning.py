"""What the planning passes share: the scheduling instance of a graph, where each value's bytes can
go, the figures of a liveness result, and the error a user gets when no plan fits."""
from __future__ import annotations

from memplan.analysis.liveness import Liveness, storage_roots
from memplan.errors import BudgetInfeasibleError
from memplan.ir.graph import KERNEL, OWN, SLOT, Graph
from memplan.ir.types import eval_bytes
from memplan.solvers.sched_problem import Buf, ScheduleProblem
from memplan.units import format_bytes


def schedule_problem(graph: Graph, temps: dict[str, int] | None = None) -> ScheduleProblem:
    """The scheduling instance of ``graph`` (node ``i`` is ``graph.nodes[i]``): one buffer per
    storage root; views give their readers to their base; graph outputs are kept to the end."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    producer = {v.name: index[n.name] for n in graph.nodes for v in n.outputs}
    roots = storage_roots(graph)
    preds: list[list[int]] = []
    users: dict[str, set[int]] = {}
    for i, node in enumerate(graph.nodes):
        preds.append(sorted({producer[v.name] for v in node.inputs if v.name in producer}))
        for v in node.inputs:
            if roots[v.name] in producer:
                users.setdefault(roots[v.name], set()).add(i)
    keep = {roots[v.name] for v in graph.outputs}
    buffers = []
    for node in graph.nodes:
        for v in node.outputs:
            if roots[v.name] == v.name:
                buffers.append(Buf(eval_bytes(v.nbytes), index[node.name], tuple(users.get(v.name, ())),
                                   v.name in keep))
    temp = [(temps or {}).get(n.name, 0) for n in graph.nodes]
    return ScheduleProblem(len(graph.nodes), preds, buffers, temp, names=[n.name for n in graph.nodes])


def storage_kinds(graph: Graph, writes_into) -> dict[str, str]:
    """Where the bytes of each value that owns bytes go in a plan with a static storage:

    ``writes_into(node)`` is the backend's answer (:mod:`memplan.backends.base`): can the kernel of
    ``node`` write its results into buffers it is given (a copy-free ``out=`` form)?

    - ``slot`` in the storage: an intermediate whose op has a copy-free ``out=`` form;
    - ``own``: a graph output whose op has one (a buffer of its own, handed to the caller);
    (a ``memplan.loop`` writes each trip into the buffers it is given, like an ``out=`` form);
    - ``kernel``: the op has no ``out=`` form, so its kernel allocates the result (kernel-owned:
      never computed and then copied into a slot, which would hold it twice).

    Views and in-place results own no bytes and are not listed."""
    roots = storage_roots(graph)
    outputs = {roots[v.name] for v in graph.outputs}  # an output's bytes, through views and in-place writes
    kinds: dict[str, str] = {}
    for node in graph.nodes:
        if node.reuses is not None:
            continue
        writes_out = writes_into(node)
        for v in node.outputs:
            if roots[v.name] != v.name:
                continue
            if not writes_out:
                kinds[v.name] = KERNEL
            else:
                kinds[v.name] = OWN if v.name in outputs else SLOT
    return kinds


def liveness_stats(graph: Graph, live: Liveness) -> dict:
    """The plan statistics of one liveness result."""
    peak_node = live.schedule[live.peak_step] if live.peak_step >= 0 else ""
    return {
        "peak_bytes": live.peak_bytes,
        "peak_step": live.peak_step,
        "peak_node": peak_node,
        "live_at_peak": [{"value": r.value, "bytes": r.nbytes, "start": r.start, "end": r.end,
                          "source": r.source} for r in live.top_buffers(10)],
    }


def budget_error(live: Liveness, budget: int, best: int, lower_bound: int = 0, *,
                 limit: str = "") -> BudgetInfeasibleError:
    """The error a user gets when no plan fits: the limit, best peak, lower bound, what is live at
    the peak. ``limit`` names a limit other than the memory budget (``budget`` is then its bytes)."""
    top = live.top_buffers(5)
    listing = ", ".join(f"%{r.value} {format_bytes(r.nbytes)} ({r.source or 'graph'})" for r in top)
    return BudgetInfeasibleError(
        f"no plan fits {limit or 'the memory budget of ' + format_bytes(budget)}: "
        f"the smallest peak memplan found is "
        f"{format_bytes(best)} (lower bound {format_bytes(lower_bound)}); at its peak step {live.peak_step} "
        f"(node {live.schedule[live.peak_step]}) the largest live buffers are: {listing}",
        budget=budget, best_peak=best, lower_bound=lower_bound,
        live_at_peak=[(r.value, r.nbytes, r.source) for r in top])
