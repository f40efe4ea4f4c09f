"""Scheduling benchmark: peak of the topological order, the best heuristic, memplan's solver and the bound.

    .venv/bin/python benchmarks/sched_bench.py --time-limit 10 --markdown sched.md
    .venv/bin/python benchmarks/sched_bench.py --sizes 100 500 --families transformer

Instances (generated here, seeded: every run sees the same ones), at about 100,
500, 2,000 and 5,000 nodes:

- ``layered``: random layered DAGs: each node reads 1-3 nodes of the previous
  three layers, now and then a much older one; random sizes, some temps.
- ``transformer``: GPT-2-like blocks decomposed as torch.export does: layer
  norm, q/k/v projections per head group (fan-out), scores, mask (a floating
  constant read by every block), softmax, attention, projection, residual add,
  MLP with a decomposed tanh-GELU (fan-out / fan-in) and a second residual.
  Blocks are identical, as in a real model.
- ``unet``: an encoder of residual conv blocks whose level outputs are read
  again by the decoder (long skips), spatial size halving per level.
- ``inception``: Inception-like blocks, four branches of different depths
  and sizes with conv workspaces, three block kinds repeated.
- ``training``: forward and backward of an MLP stack: saved activations,
  weight gradients as kept sinks (they break cut vertices: the decomposition
  attaches them, which is heuristic).

Columns: nodes, peak of the given topological order (what eager runs), the best
heuristic and its name, memplan's ``solve_schedule`` (auto) peak and what won,
the lower bound it proves, the gap, segments (all / distinct) and wall time.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memplan.solvers.scheduling import Buf, ScheduleProblem, solve_schedule  # noqa: E402

KiB = 1024
MiB = 1024 * KiB


class GraphBuilder:
    """Builds a :class:`ScheduleProblem` node by node: ``node(inputs, size)`` returns the new node id,
    whose single output buffer is read by later nodes that name it as an input."""

    def __init__(self):
        self.preds: list[list[int]] = []
        self.sizes: list[int] = []
        self.temp: list[int] = []
        self.users: list[list[int]] = []
        self.kept: set[int] = set()

    def node(self, inputs: list[int], size: int, temp: int = 0) -> int:
        v = len(self.preds)
        self.preds.append(sorted(set(inputs)))
        self.sizes.append(size)
        self.temp.append(temp)
        self.users.append([])
        for u in set(inputs):
            self.users[u].append(v)
        return v

    def keep(self, v: int) -> None:
        self.kept.add(v)

    def build(self) -> ScheduleProblem:
        bufs = [Buf(self.sizes[v], v, tuple(self.users[v]), v in self.kept or not self.users[v])
                for v in range(len(self.preds))]
        return ScheduleProblem(len(self.preds), self.preds, bufs, self.temp)


def layered(n: int, seed: int = 0) -> ScheduleProblem:
    """Random layered DAG of about ``n`` nodes."""
    rng = random.Random(seed)
    g = GraphBuilder()
    layers: list[list[int]] = []
    while len(g.preds) < n:
        width = rng.randint(2, 8)
        layer = []
        # outputs of the layer about to leave the window must be read by someone (no dangling sinks)
        unread = [v for v in (layers[-3] if len(layers) >= 3 else []) if not g.users[v]]
        for i in range(min(width, n - len(g.preds))):
            pool = [v for lay in layers[-3:] for v in lay]
            inputs = rng.sample(pool, min(len(pool), rng.randint(1, 3))) if pool else []
            inputs += unread[i::width]
            if len(layers) > 6 and rng.random() < 0.05:
                inputs.append(rng.choice(rng.choice(layers[:-3])))
            size = int(rng.lognormvariate(0, 1) * 256) * KiB
            temp = rng.choice([0, 0, 0, size // 2])
            layer.append(g.node(inputs, size, temp))
        layers.append(layer)
    return g.build()


def transformer(n: int, heads: int = 4, seq: int = 512, dim: int = 768, seed: int = 0) -> ScheduleProblem:
    """Identical GPT-2-like blocks until about ``n`` nodes (head groups as parallel branches)."""
    del seed
    g = GraphBuilder()
    act = seq * dim * 4
    scores = seq * seq * 12 // heads * 4            # 12 heads split in ``heads`` groups
    x = g.node([], act)                              # embedding
    pos = g.node([], act)                            # position embedding (a floating source)
    x = g.node([x, pos], act)
    mask_src = g.node([], seq * seq)                 # arange -> triu: a constant read by every block
    mask = g.node([mask_src], seq * seq)
    while len(g.preds) < n - 40:
        h = g.node([x], act, temp=seq * 8)           # layer norm (mean / var scratch)
        # head groups are emitted op by op across groups (all q, all k, ...), as a vectorised emitter does
        qs = [g.node([h], act // heads) for _ in range(heads)]
        ks = [g.node([h], act // heads) for _ in range(heads)]
        vs = [g.node([h], act // heads) for _ in range(heads)]
        ss = [g.node([q, k], scores) for q, k in zip(qs, ks)]          # q @ k^T
        ss = [g.node([s], scores) for s in ss]                           # / sqrt(d)
        ss = [g.node([s, mask], scores) for s in ss]                     # masked_fill
        ps = [g.node([s], scores, temp=scores) for s in ss]              # softmax
        outs = [g.node([p, v], act // heads) for p, v in zip(ps, vs)]
        cat = g.node(outs, act)
        proj = g.node([cat], act)
        x = g.node([x, proj], act)                   # residual
        h = g.node([x], act, temp=seq * 8)
        fc = g.node([h], 4 * act)
        # tanh-GELU decomposed: 0.5 * fc * (1 + tanh(0.79788 * (fc + 0.044715 * fc^3)))
        cube = g.node([fc], 4 * act)
        scaled = g.node([cube], 4 * act)
        inner = g.node([fc, scaled], 4 * act)
        t = g.node([inner], 4 * act)
        t = g.node([t], 4 * act)
        half = g.node([fc], 4 * act)
        gelu = g.node([half, t], 4 * act)
        fc2 = g.node([gelu], act)
        x = g.node([x, fc2], act)
    out = g.node([g.node([x], act)], seq * 50257 // 16)   # final norm, lm head (vocab slice)
    g.keep(out)
    return g.build()


def unet(n: int, levels: int = 5, seed: int = 0) -> ScheduleProblem:
    """Encoder / decoder of residual conv blocks with skips from each encoder level to its decoder."""
    rng = random.Random(seed)
    g = GraphBuilder()
    per_level = max(1, (n - 4 * levels) // (2 * levels * 4 - levels))
    base = 8 * MiB
    x = g.node([], base)
    skips = []
    for level in range(levels):
        size = base >> level
        for _ in range(per_level):
            short = g.node([x], size)                  # 1x1 shortcut conv, emitted first
            a = g.node([x], size, temp=rng.choice([0, size // 4]))
            b = g.node([a], size)
            x = g.node([short, b], size)               # residual add
        skips.append(x)
        x = g.node([x], size // 2)                 # downsample
    for level in reversed(range(levels)):
        size = base >> level
        x = g.node([x], size)                      # upsample
        x = g.node([x, skips[level]], 2 * size)    # concat with the skip
        for _ in range(per_level):
            a = g.node([x], size, temp=rng.choice([0, size // 4]))
            b = g.node([a], size)
            x = g.node([x, b], size)
    g.keep(g.node([x], base // 4))
    return g.build()


def training(n: int, width: int = 4, seed: int = 0) -> ScheduleProblem:
    """Forward and backward of a stack of MLP layers (two branches each) until about ``n`` nodes."""
    rng = random.Random(seed)
    g = GraphBuilder()
    layers = max(1, (n - 3) // 11)
    x = g.node([], 4 * MiB)
    saved = []
    for _ in range(layers):                        # forward: x -> (a, b) -> y = a * b
        size = rng.choice([2, 4, 8]) * MiB
        a = g.node([x], size)
        b = g.node([x], size)
        y = g.node([a, b], 4 * MiB)
        saved.append((x, a, b))
        x = y
    loss = g.node([x], 4)
    grad = g.node([loss, x], 4 * MiB)
    for x_in, a, b in reversed(saved):             # backward
        ga = g.node([grad, b], g.sizes[a])
        gb = g.node([grad, a], g.sizes[b])
        g.keep(g.node([ga, x_in], 256 * KiB))      # weight gradients: kept sinks
        g.keep(g.node([gb, x_in], 256 * KiB))
        da = g.node([ga], 4 * MiB)
        db = g.node([gb], 4 * MiB)
        grad = g.node([da, db], 4 * MiB)
    g.keep(grad)
    return g.build()


def inception(n: int, seed: int = 0) -> ScheduleProblem:
    """Inception-like blocks: four branches of different shapes (reduce -> expand convs with
    workspaces, pooling) concatenated; three block kinds repeated, emitted branch op by branch op."""
    rng = random.Random(seed)
    kinds = []
    for _ in range(3):
        kinds.append([[rng.choice([1, 2, 4, 8]) * MiB for _ in range(rng.randint(1, 4))] for _ in range(4)])
    g = GraphBuilder()
    x = g.node([], 4 * MiB)
    k = 0
    while len(g.preds) < n - 20:
        branches = kinds[k % 3]
        k += 1
        heads = [x] * len(branches)
        depth = max(len(b) for b in branches)
        for level in range(depth):                 # emitted level by level across branches
            for i, sizes in enumerate(branches):
                if level < len(sizes):
                    heads[i] = g.node([heads[i]], sizes[level], temp=sizes[level] // 2)
        x = g.node(heads, 4 * MiB)                 # concat
    g.keep(x)
    return g.build()


FAMILIES = {"layered": layered, "transformer": transformer, "unet": unet, "inception": inception,
            "training": training}


def fmt_bytes(b: int) -> str:
    if b >= MiB:
        return f"{b / MiB:.1f}M"
    return f"{b / KiB:.0f}K"


def run(families: list[str], sizes: list[int], time_limit: float) -> list[dict]:
    rows = []
    for family in families:
        for size in sizes:
            problem = FAMILIES[family](size)
            result = solve_schedule(problem, time_limit=time_limit)
            best_name = min(result.heuristic_peaks, key=result.heuristic_peaks.get)
            distinct = len({s.shape for s in result.segments})
            rows.append({
                "instance": f"{family}-{size}", "nodes": problem.n,
                "baseline": result.baseline_peak, "heuristic": result.heuristic_peak, "heuristic_name": best_name,
                "memplan": result.peak, "method": result.method, "bound": result.lower_bound,
                "gap": result.gap, "vs_baseline": 1 - result.peak / result.baseline_peak,
                "segments": f"{len(result.segments)}/{distinct}", "exact_dec": result.exact_decomposition,
                "time": result.wall_s,
            })
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| instance | nodes | topo-order peak | best heuristic | memplan | vs topo | lower bound | gap | "
          "segments (all/distinct) | time |")


def format_row(r: dict) -> str:
    exact = "" if r["exact_dec"] else " (attached)"
    return (f"| {r['instance']} | {r['nodes']} | {fmt_bytes(r['baseline'])} | "
            f"{fmt_bytes(r['heuristic'])} ({r['heuristic_name']}) | {fmt_bytes(r['memplan'])} ({r['method']}) | "
            f"-{100 * r['vs_baseline']:.1f}% | {fmt_bytes(r['bound'])} | {100 * r['gap']:.1f}% | "
            f"{r['segments']}{exact} | {r['time']:.2f} s |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--sizes", nargs="+", type=int, default=[100, 500, 2000, 5000])
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    rows = run(args.families, args.sizes, args.time_limit)
    if args.markdown:
        lines = [f"Scheduling, `solve_schedule(time_limit={args.time_limit:g})`, 2 CP-SAT workers.", "",
                 HEADER, "|" + "---|" * (HEADER.count(" | ") + 1)] + [format_row(r) for r in rows]
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
