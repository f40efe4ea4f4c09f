"""``memplan remat`` on Moccasin's published graphs, with Moccasin's published numbers beside.

    git clone https://github.com/haoming-codes/moccasin /tmp/moccasin   # GPL-3.0: not vendored here
    .venv/bin/python benchmarks/remat_bench.py --graphs /tmp/moccasin/data [--time-limit 25] [--markdown F]

Per training graph and random layered graph, at 0.9 and 0.8 of the topological order's peak (as
Moccasin's ``main.py`` computes the budget: ``ceil(peak * fraction)``): memplan's cost increase,
peak, status and solve time, with first computations in the topological order (``--keep-order``:
the restriction Moccasin's stages impose, so the numbers compare) and with the order free. Beside:
Moccasin's and Checkmate's published cost increase and solve time (Moccasin paper, ICML 2023, as
quoted in Table 1 of Imanishi et al., NeurIPS 2023; only the six graphs published there).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import publish  # noqa: E402

# (graph file prefix) -> {fraction: (Checkmate CI %, s | None when it timed out, Moccasin CI %, s)}
PUBLISHED = {
    "random_layered_n100_": {0.9: (0.8, 18.5, 0.8, 9.3), 0.8: (2.3, 22.7, 2.3, 9.5)},
    "random_layered_n250_": {0.9: (0.9, 685.1, 0.9, 55.0), 0.8: (None, None, 4.9, 639.5)},
    "random_layered_n500_": {0.9: (None, None, 0.7, 1803.3), 0.8: (None, None, 3.4, 1804.8)},
    "random_layered_n1000_": {0.9: (None, None, 0.7, 3612.9), 0.8: (None, None, 3.4, 3611.8)},
    "fcn_8_vgg (MLSys)_32_(416, 608, 3)_train": {0.9: (0.0, 6.3, 0.0, 3.1), 0.8: (0.1, 5.6, 0.1, 3.1)},
    "ResNet50 (MLSys)_256_(224, 224, 3)_train": {0.9: (0.1, 434.1, 0.2, 65.2), 0.8: (0.3, 485.3, 0.3, 69.3)},
}


def graphs(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.json") if "_test_" not in p.name)  # test graphs: inference only
    if not files:
        raise SystemExit(f"no graphs in {folder}: pass --graphs DIR (the data/ folder of haoming-codes/moccasin)")
    return sorted(files, key=lambda p: (not p.name.startswith("random"), p.stat().st_size))


def published(name: str, fraction: float):
    for prefix, rows in PUBLISHED.items():
        if name.startswith(prefix):
            return rows.get(fraction)
    return None


def main() -> int:
    from memplan.solvers.remat import solve_remat
    from memplan.solvers.remat_problem import evaluate, read_graph_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", required=True, help="the data/ folder of haoming-codes/moccasin")
    parser.add_argument("--time-limit", type=float, default=25.0)
    parser.add_argument("--fractions", default="0.9,0.8")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    rows = ["| graph | nodes | budget | memplan, topological first order: cost + | peak | status | time | "
            "memplan, free order: cost + | peak | time | Moccasin (published): cost + | time | Checkmate MILP (published) |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for path in graphs(Path(args.graphs)):
        problem = read_graph_json(path)
        topo = evaluate(problem, problem.order)
        for fraction in (float(f) for f in args.fractions.split(",")):
            budget = math.ceil(topo.peak * fraction)
            kept = solve_remat(problem, budget, args.time_limit, keep_order=True)
            free = solve_remat(problem, budget, args.time_limit)

            def cells(r, status=True):
                if not r.fits:
                    out = ["—", "—"] + ([r.status] if status else []) + [f"{r.solve_s:.1f} s"]
                    return out
                added = f"{100 * (r.cost - topo.cost) / topo.cost:.2f}%"
                out = [added, f"{r.peak / topo.peak:.3f}"]
                if status:
                    out.append(f"{r.status} (gap {100 * r.gap:.1f}%)")
                return out + [f"{r.solve_s:.1f} s"]
            pub = published(path.stem, fraction)
            moccasin = [f"{pub[2]}%", f"{pub[3]} s"] if pub else ["—", "—"]
            checkmate = ("time limit" if pub[0] is None else f"{pub[0]}%, {pub[1]} s") if pub else "—"
            name = path.stem.replace("_nx", "").replace(" (MLSys)", "")
            rows.append("| " + " | ".join([name[:48], str(problem.n), f"{fraction:g}", *cells(kept),
                                           *cells(free, status=False), *moccasin, checkmate]) + " |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    table += ("\n\nCost +: compute added over the topological order (each node once), in % of its cost; peak: "
              "fraction of the topological order's peak. Status: OPTIMAL where CP-SAT proved it (within at most two "
              "computations per node) or the topological order fits; gap: against the bound reported "
              "(each node computed once, or CP-SAT's). Moccasin's and Checkmate's numbers are published ones "
              "(Moccasin, ICML 2023, as quoted in Imanishi et al., NeurIPS 2023, Table 1; their machine, "
              f"their time limits of 1,800-3,600 s); memplan's: this machine, 2 cores, {args.time_limit:g} s each. "
              "Moccasin fixes the first computations to the topological order, as the first memplan columns do.")
    return publish(table, args.markdown)


if __name__ == "__main__":
    raise SystemExit(main())
