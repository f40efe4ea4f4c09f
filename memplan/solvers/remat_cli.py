"""``memplan remat``: the least-compute schedule of a computation graph within a memory budget.

::

    memplan remat graph.json --budget-fraction 0.8 --time-limit 30 -o out.json
    memplan remat graph.json --budget 3GiB

``graph.json``: networkx node-link JSON of a DAG whose nodes carry ``cost_cpu`` and ``cost_ram``
(Checkmate's and Moccasin's published graphs read as they are). ``--budget-fraction`` is relative
to the peak of the graph's topological order (graph attribute ``order`` if present). ``out.json``
holds ``schedule`` (node ids in order; a node listed again is recomputed), ``cost``, ``peak``,
``status``, ``bound``, ``gap``, ``solve_s``, and the budget and topological figures beside. When
the budget cannot be met the command exits non-zero and prints the smallest peak found (and the
smallest any schedule could reach); no file is written.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from memplan.errors import MemplanError, OutputPathError
from memplan.units import format_bytes, parse_bytes


class RematBudgetError(MemplanError):
    """No schedule within the budget was found (or one is proven impossible)."""


def add_remat_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "remat", help="schedule a DAG (node-link JSON: cost_cpu, cost_ram) within a memory budget, recomputing least",
        description="Rematerialisation as in Checkmate and Moccasin: a sequence of node computations "
                    "(recomputations allowed) whose peak memory is within the budget, at the least compute cost.")
    parser.add_argument("graph", help="networkx node-link JSON; nodes carry cost_cpu and cost_ram")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--budget", help="bytes, e.g. 3221225472 or 3GiB")
    group.add_argument("--budget-fraction", type=float, metavar="F",
                       help="fraction of the topological order's peak, e.g. 0.8")
    parser.add_argument("--time-limit", type=float, default=30.0, metavar="S", help="seconds (default 30)")
    parser.add_argument("--keep-order", action="store_true",
                        help="first computations in the topological order (Checkmate's and Moccasin's stages)")
    parser.add_argument("--copies", type=int, default=2, metavar="C",
                        help="computations per node the exact model allows (default 2)")
    parser.add_argument("-o", "--output", default=None, help="write the schedule and its figures here (JSON)")
    parser.set_defaults(func=cmd_remat)
    return parser


def cmd_remat(args) -> int:
    from memplan.solvers.remat import solve_remat
    from memplan.solvers.remat_problem import evaluate, read_graph_json

    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise MemplanError(f"--time-limit must be a finite positive number of seconds, got {args.time_limit:g}")
    if not 1 <= args.copies <= 16:
        raise MemplanError(f"--copies must be in 1..16, got {args.copies}")
    if args.budget_fraction is not None and not (math.isfinite(args.budget_fraction) and args.budget_fraction > 0):
        raise MemplanError(f"--budget-fraction must be a finite number > 0, got {args.budget_fraction:g}")
    if args.output is not None:
        if not args.output.strip():
            raise OutputPathError("-o: an empty path")
        out = Path(args.output)
        if out.is_dir():
            raise OutputPathError(f"-o {out}: is a directory")
        if not out.parent.is_dir():
            raise OutputPathError(f"-o {out}: folder {out.parent} does not exist")
    problem = read_graph_json(args.graph)
    topo = evaluate(problem, problem.order)
    if args.budget is not None:
        budget = parse_bytes(args.budget, what="--budget")
    else:
        budget = math.ceil(topo.peak * args.budget_fraction)
    r = solve_remat(problem, budget, args.time_limit, keep_order=args.keep_order, copies=args.copies)
    extra = len(r.schedule) - problem.n
    print(f"{args.graph}: {problem.n} nodes, budget {budget:,} B ({format_bytes(budget)}; topological peak "
          f"{topo.peak:,} B)")
    if not r.fits:
        proof = (f"no schedule can peak below {r.smallest_possible_peak:,} B (a node's inputs and output at once)"
                 if r.status == "INFEASIBLE" else
                 f"smallest peak found {r.peak:,} B ({format_bytes(r.peak)}) in {r.solve_s:.1f} s; no schedule can "
                 f"peak below {r.smallest_possible_peak:,} B")
        raise RematBudgetError(f"{args.graph}: no schedule within the budget {budget:,} B: {proof}")
    added = r.cost - topo.cost
    print(f"  {r.status} by {r.method}: peak {r.peak:,} B ({r.peak / max(topo.peak, 1):.3f} of topological), cost "
          f"{problem.file_cost(r.cost):g} (+{100 * added / max(topo.cost, 1):.2f}%, {extra} recomputations), "
          f"bound {problem.file_cost(r.bound):g} ({r.bound_scope}), gap {100 * r.gap:.2f}%, {r.solve_s:.1f} s")
    if args.output is not None:
        data = {"schedule": [problem.ids[v] for v in r.schedule], "cost": problem.file_cost(r.cost), "peak": r.peak,
                "status": r.status, "bound": problem.file_cost(r.bound), "bound_scope": r.bound_scope,
                "gap": r.gap, "solve_s": round(r.solve_s, 3), "method": r.method, "budget": budget,
                "topological_peak": topo.peak, "topological_cost": problem.file_cost(topo.cost),
                "recomputations": extra, "keep_order": bool(args.keep_order)}
        try:
            Path(args.output).write_text(json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            raise OutputPathError(f"-o {args.output}: cannot write ({exc.strerror or type(exc).__name__})") from None
        print(f"wrote {args.output}")
    return 0
