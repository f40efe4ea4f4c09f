"""Static allocation benchmark: memplan's allocators against omnimalloc's, side by side.

    .venv/bin/python benchmarks/alloc_bench.py --time-limit 5 --markdown alloc.md

Instances (all generated here, seeded, so every run sees the same ones):

- ``zoo:*``: activation lifetimes of memplan's model zoo (GPT-2, BERT,
  ResNet-50, UNet) captured with torch.export, in graph order.
- ``model:*``: lifetimes of model-like graphs: a chain of ops whose outputs
  are read by the next op and by skip connections (ResNet-style short skips,
  UNet-style encoder -> decoder skips, transformer blocks with a residual
  stream and large attention temporaries). Sizes are tensor-like.
- ``random:*``: uniform random lifetimes and sizes.
- ``tiling:*``: "packing to capacity": a rectangle of height H x T time steps
  cut at random into n pieces (split in time or in address, area-weighted).
  The pieces tile the rectangle, so the optimum equals the lower bound H
  by construction, and every section of time is full: the hard case of
  MEASURING.md.
- ``minimalloc:A`` .. ``minimalloc:K``: MiniMalloc's public "challenging"
  instances (google/minimalloc, vendored in ``benchmarks/data/minimalloc/``
  with their license). Besides the height each allocator reaches, the
  column ``memplan fit 1 MiB`` runs memplan in feasibility mode at their
  capacity, 1 MiB, as MiniMalloc's own benchmark does.
- ``omni:<source>:<count>``: omnimalloc's own benchmark sources
  (``omnimalloc.benchmark.sources``, none that downloads), built as its harness
  builds them (default parameters, seed 42, ``get_variant(count)``). They get a
  table of their own: memplan ``solve_allocation(method="auto")`` against every
  allocator in omnimalloc's registry (searches at the same time limit) and the
  best of them. Its vector-clock sources (concurrent threads) are listed but not
  run where they are no interval order, which a memplan buffer cannot express.

``--only omni`` / ``--only minimalloc`` / ``--only omni:pinwheel,zoo`` picks rows
(comma-separated substrings of their names; the torch-captured ``zoo`` rows are
only built when selected).

Each allocator gets the same time limit; heights are checked with
``validate`` (an invalid packing is reported, not counted). omnimalloc's
``supermalloc`` (its C++ MiniMalloc-style search) uses both cores; memplan's
exact search is MiniMalloc's algorithm compiled from C++
(``memplan/solvers/native/minimalloc.cpp``), single-threaded.
"""
from __future__ import annotations

import argparse
import inspect
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memplan.solvers.allocation import Buffer, interval_lower_bound, solve_allocation, validate  # noqa: E402

KiB = 1024
MINIMALLOC_DATA = Path(__file__).resolve().parent / "data" / "minimalloc"
MINIMALLOC_CAPACITY = 1 << 20
MINIMALLOC_REFERENCE = (
    "MiniMalloc's own solver (google/minimalloc's C++, built and run on this machine when issue 13 was filed: "
    "`minimalloc --capacity=1048576`, one instance at a time) fits all 11 of A..K within 1 MiB in 1.5-12.3 s "
    "each, median 4.1 s in a quiet run and 6.2 s in a loaded one (the set is the one its repository's "
    "scripts/run-challenging.sh runs). The column \"memplan fit 1 MiB\" above is memplan's answer to the same question, "
    "`solve_allocation(capacity=1 MiB)` (= `memplan alloc X.csv --capacity 1MiB`).")


# ----------------------------------------------------------------------------- instances

def model_chain(name: str, ops: int, skip_every: int, skip_span: int, seed: int) -> list[Buffer]:
    """A chain of ops; every ``skip_every``-th output is also read ``skip_span`` ops later."""
    rng = random.Random(seed)
    buffers = []
    for step in range(ops):
        size = rng.choice([64, 128, 256, 512]) * KiB * rng.choice([1, 1, 2, 4])
        last_use = step + 1
        if skip_every and step % skip_every == 0:
            last_use = min(step + skip_span, ops)
        buffers.append(Buffer(f"{name}.{step}", step, last_use + 1, size))
        if rng.random() < 0.3:   # a temporary workspace of the op
            buffers.append(Buffer(f"{name}.{step}.tmp", step, step + 1, rng.choice([16, 32, 64]) * KiB))
    return buffers


def model_unet(levels: int, convs_per_level: int, seed: int) -> list[Buffer]:
    """Encoder halves the spatial size per level, decoder mirrors it; skips join the two."""
    rng = random.Random(seed)
    buffers, step, skips = [], 0, []
    base = 4 * 1024 * KiB
    for level in range(levels):
        size = base >> (2 * level) << level   # spatial /4, channels x2
        for conv in range(convs_per_level):
            buffers.append(Buffer(f"enc{level}.{conv}", step, step + 2, size))
            step += 1
        skips.append((f"enc{level}.skip", step, size))
    for level in reversed(range(levels)):
        name, produced, size = skips[level]
        for conv in range(convs_per_level):
            buffers.append(Buffer(f"dec{level}.{conv}", step, step + 2, size * rng.choice([1, 2])))
            step += 1
        buffers.append(Buffer(name, produced - 1, step, size))
    return buffers


def model_transformer(layers: int, seq: int, hidden: int, heads: int, seed: int) -> list[Buffer]:
    """Per layer: norm, qkv, scores (heads x seq x seq), softmax, context, proj, residual, mlp."""
    rng = random.Random(seed)
    f32 = 4
    act = seq * hidden * f32
    buffers, step = [], 0
    residual_start = 0
    for layer in range(layers):
        def op(name: str, size: int, uses: int = 1) -> None:
            nonlocal step
            buffers.append(Buffer(f"l{layer}.{name}", step, step + uses + 1, size))
            step += 1
        op("ln1", act)
        op("qkv", 3 * act, uses=3)
        op("scores", heads * seq * seq * f32)
        op("softmax", heads * seq * seq * f32)
        op("context", act)
        op("proj", act)
        buffers.append(Buffer(f"l{layer}.resid1", residual_start, step + 1, act))
        residual_start = step
        op("ln2", act)
        op("fc1", 4 * act + rng.choice([0, act]))
        op("gelu", 4 * act)
        op("fc2", act)
        buffers.append(Buffer(f"l{layer}.resid2", residual_start, step + 1, act))
        residual_start = step
    return buffers


def random_instance(n: int, horizon: int, max_size: int, seed: int) -> list[Buffer]:
    """Uniform random lifetimes (length up to horizon/4) and sizes."""
    rng = random.Random(seed)
    buffers = []
    for i in range(n):
        lo = rng.randrange(horizon)
        hi = min(horizon, lo + rng.randint(1, horizon // 4))
        if hi <= lo:
            hi = lo + 1
        buffers.append(Buffer(str(i), lo, hi, rng.randint(1, max_size) * 64))
    return buffers


def tiling_instance(n: int, height: int, horizon: int, seed: int, min_size: int = 64,
                    min_length: int = 2) -> list[Buffer]:
    """Cut a ``height`` x ``horizon`` rectangle into ``n`` rectangles; optimum = ``height``."""
    rng = random.Random(seed)
    tiles = [(0, horizon, 0, height)]                 # (t0, t1, offset, size)
    while len(tiles) < n:
        splittable = [k for k, (t0, t1, _, s) in enumerate(tiles)
                      if t1 - t0 >= 2 * min_length or s >= 2 * min_size]
        if not splittable:
            break
        k = rng.choices(splittable, weights=[(tiles[j][1] - tiles[j][0]) * tiles[j][3] for j in splittable])[0]
        t0, t1, off, size = tiles[k]
        can_time, can_mem = t1 - t0 >= 2 * min_length, size >= 2 * min_size
        if can_time and (not can_mem or rng.random() < 0.5):
            cut = rng.randint(t0 + min_length, t1 - min_length)
            tiles[k:k + 1] = [(t0, cut, off, size), (cut, t1, off, size)]
        else:
            cut = rng.randint(min_size // 64, (size - min_size) // 64) * 64
            tiles[k:k + 1] = [(t0, t1, off, cut), (t0, t1, off + cut, size - cut)]
    rng.shuffle(tiles)   # the cutting order would hint at the solution
    return [Buffer(str(i), t0, t1, size) for i, (t0, t1, _, size) in enumerate(tiles)]


def sweep_tiling_instance(n: int, height: int, seed: int, end_prob: float = 0.3,
                          min_size: int = 64) -> list[Buffer]:
    """A tight non-guillotine tiling: at each step some buffers end and the hole they
    leave (merged with free neighbours) is refilled with new buffers of random sizes.

    Every moment is filled to exactly ``height`` bytes, so the optimum is ``height``.
    """
    rng = random.Random(seed)
    live = [(0, height, 0)]                       # (offset, size, start), sorted by offset
    done: list[tuple[int, int, int]] = []        # (start, end, size)
    step = 0
    while len(done) + len(live) < n:
        step += 1
        ending = [k for k in range(len(live)) if rng.random() < end_prob] or [rng.randrange(len(live))]
        kept, holes = [], []
        for k, (off, size, start) in enumerate(live):
            if k in ending:
                done.append((start, step, size))
                if holes and holes[-1][1] == off:
                    holes[-1] = (holes[-1][0], off + size)
                else:
                    holes.append((off, off + size))
            else:
                kept.append((off, size, start))
        for lo, hi in holes:                      # refill each hole with 1-3 new buffers
            cuts = sorted(rng.sample(range(lo + min_size, hi, min_size), k=min(rng.randint(0, 2), max(0, (hi - lo) // min_size - 1))))
            edges = [lo] + cuts + [hi]
            kept += [(a, b - a, step) for a, b in zip(edges, edges[1:])]
        live = sorted(kept)
    step += 1
    done += [(start, step, size) for _, size, start in live]
    rng.shuffle(done)
    return [Buffer(str(i), t0, t1, size) for i, (t0, t1, size) in enumerate(done)]


def zoo_instances(quick: bool) -> dict[str, list[Buffer]]:
    """Activation buffers of memplan's model zoo, captured with torch.export, in graph order.

    A value live from step ``start`` to step ``end`` (inclusive) is a buffer
    ``[start, end + 1)``; views share their base's buffer (liveness does that).
    """
    import warnings

    from memplan import zoo
    from memplan.frontend.torch_export import from_torch
    from memplan.analysis.liveness import liveness

    wanted = [("gpt2-2L", "gpt2", {}), ("bert-2L", "bert", {}), ("resnet50", "resnet50", {}), ("unet", "unet", {})]
    if not quick:
        wanted.insert(1, ("gpt2-12L", "gpt2", {"n_layer": 12}))
    out = {}
    for label, family, kwargs in wanted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, example = zoo.build(family, **kwargs)
            graph = from_torch(model, example, name=family)
        live = liveness(graph)
        out[f"zoo:{label}"] = [Buffer(r.value, r.start, r.end + 1, r.nbytes)
                               for r in live.ranges.values() if r.nbytes > 0]
    return out


def instances(quick: bool, with_zoo: bool = True) -> dict[str, list[Buffer]]:
    """The benchmark's instances by name."""
    out = zoo_instances(quick) if with_zoo else {}
    out |= {
        "model:resnet-chain": model_chain("res", 400, 3, 3, seed=1),
        "model:unet": model_unet(levels=5, convs_per_level=6, seed=2),
        "model:transformer-12L": model_transformer(12, seq=256, hidden=768, heads=12, seed=3),
        "model:long-skips-2k": model_chain("skip", 2000, 7, 40, seed=4),
        "random:200": random_instance(200, 400, 256, seed=5),
        "random:1000": random_instance(1000, 2000, 256, seed=6),
        "tiling:150": tiling_instance(150, 1 << 20, 1000, seed=7),
        "tiling:300": tiling_instance(300, 1 << 20, 1000, seed=8),
        "tiling:450": tiling_instance(450, 1 << 20, 1000, seed=9),
        "sweep-tiling:150": sweep_tiling_instance(150, 1 << 20, seed=10),
        "sweep-tiling:300": sweep_tiling_instance(300, 1 << 20, seed=11),
        "sweep-tiling:450": sweep_tiling_instance(450, 1 << 20, seed=12),
    }
    if quick:
        for key in ("model:long-skips-2k", "random:1000", "tiling:450"):
            out.pop(key)
    out |= minimalloc_instances()
    return out


def minimalloc_instances() -> dict[str, list[Buffer]]:
    """MiniMalloc's challenging set A..K (capacity 1 MiB each), if vendored here."""
    from memplan.solvers.alloc_csv import read_buffers_csv
    return {f"minimalloc:{path.name.split('.')[0]}": read_buffers_csv(path)
            for path in sorted(MINIMALLOC_DATA.glob("*.1048576.csv"))}


# ----------------------------------------------------------------------------- omnimalloc's own sources

OMNI_SEED = 42       # omnimalloc's DEFAULT_SEED: its sources' default, so these are its default instances
OMNI_SCALAR_SOURCES = (
    # (row label, source class, constructor arguments, variants = allocation counts)
    # the first count is the source's default, further ones what omnimalloc's README
    # figures use (random 250, tiling 100, pinwheel 101) or a larger instance
    ("random", "RandomSource", {}, (100, 250, 1000)),
    ("uniform", "UniformSource", {}, (100, 1000)),
    ("power_of2", "PowerOf2Source", {}, (100, 1000)),
    ("sequential", "SequentialSource", {}, (100, 1000)),
    ("high_contention", "HighContentionSource", {}, (100, 300)),
    *((f"skewed[{d}]", "SkewedSource", {"distribution": d}, (128, 512))
      for d in ("uniform", "log_uniform", "zipf", "bimodal", "dominant")),
    ("tiling", "TilingSource", {}, (128, 100, 500)),
    ("pinwheel", "PinwheelSource", {}, (129, 101, 401)),
)
OMNI_VECTOR_SOURCES = (
    # vector-clock lifetimes (concurrent threads): a memplan Buffer is one interval, so these are
    # expressible only where omnimalloc's try_linearize finds intervals with the same conflicts
    ("two_plus_two", "TwoPlusTwoSource", {}, (128,)),
    *((f"concurrent_tiling[num_syncs={k}]", "ConcurrentTilingSource", {"num_syncs": k}, (128,))
      for k in (0, 16, 64)),
    *((f"sync_pattern[{p}]", "SyncPatternSource", {"pattern": p}, (128,))
      for p in ("independent", "pairs", "ring", "barrier", "fork_join", "dense")),
)


def omnimalloc_source_instances(quick: bool = False, vector: bool = True) -> dict[str, list[Buffer] | str]:
    """Instances of omnimalloc's own benchmark sources (``omnimalloc.benchmark.sources``).

    Each is built as omnimalloc's harness builds it (``source.get_variant(count)``,
    the source's default parameters and seed). omnimalloc's lifetimes are half-open
    ``[start, end)`` like memplan's, so an allocation maps to ``Buffer(id, start, end, size)``
    unchanged; its pools declare no alignment (1 byte). A vector-clock instance is
    converted through ``try_linearize`` (scalar lifetimes with the identical conflict
    relation); where none exists the row holds the reason (a string) instead of buffers.
    Empty if omnimalloc is not installed; no source that downloads is used.
    """
    try:
        from omnimalloc.analysis import try_linearize
        from omnimalloc.benchmark import sources
    except ImportError:
        return {}
    out: dict[str, list[Buffer] | str] = {}
    for label, cls, kwargs, variants in OMNI_SCALAR_SOURCES + (OMNI_VECTOR_SOURCES if vector else ()):
        source = getattr(sources, cls)(seed=OMNI_SEED, **kwargs)
        for count in variants[:1] if quick else variants:
            allocations = source.get_variant(count).allocations
            if any(a.dim != 1 for a in allocations):
                linear = try_linearize(allocations)
                if linear is None:
                    out[f"omni:{label}:{count}"] = "vector-clock lifetimes that are not an interval order"
                    continue
                allocations = linear
            out[f"omni:{label}:{count}"] = omnimalloc_to_buffers(allocations)
    return out


def omnimalloc_to_buffers(allocations) -> list[Buffer]:
    """omnimalloc allocations (scalar ``[start, end)``) as memplan buffers, in order."""
    return [Buffer(str(a.id), int(a.start), int(a.end), int(a.size)) for a in allocations]


# ----------------------------------------------------------------------------- allocators

def run_memplan(buffers: list[Buffer], method: str, time_limit: float,
                capacity: int | None = None) -> tuple[int, float, str]:
    result = solve_allocation(buffers, capacity=capacity, time_limit=time_limit, method=method)
    validate(buffers, result.offsets)
    return result.height, result.wall_s, result.status


def omnimalloc_peers(time_limit: float) -> dict[str, object]:
    """omnimalloc allocators by name (None if omnimalloc is not installed)."""
    try:
        from omnimalloc import allocators as om
    except ImportError:
        return {}
    return {
        "omni": om.OmniAllocator(),                       # its default: C++ greedy portfolio
        "greedy_by_all": om.GreedyByAllAllocator(),
        "telamalloc": om.TelamallocAllocator(timeout=time_limit),
        "supermalloc": om.SupermallocAllocator(timeout=time_limit),
    }


def omnimalloc_all_peers(time_limit: float) -> tuple[dict[str, object], dict[str, str]]:
    """Every allocator in omnimalloc's registry, searches given ``time_limit``; and those left out, why.

    ``naive`` (no reuse) and ``random`` (random orders) are baselines, not contenders,
    and are left out; an allocator whose optional library is missing is reported.
    """
    try:
        from omnimalloc.allocators import BaseAllocator, available_allocators
    except ImportError:
        return {}, {}
    peers, skipped = {}, {}
    for name in available_allocators():
        if name in ("naive", "random"):
            continue
        cls = BaseAllocator.get(name)
        kwargs = {"timeout": time_limit} if "timeout" in inspect.signature(cls.__init__).parameters else {}
        try:
            peers[name] = cls(**kwargs)
        except ImportError as exc:
            skipped[name] = str(exc).splitlines()[0]
    return peers, skipped


def run_omnimalloc(allocator, buffers: list[Buffer]) -> tuple[int | None, float, str]:
    from omnimalloc import Allocation
    allocations = tuple(Allocation(id=i, size=b.size, start=b.lower, end=b.upper) for i, b in enumerate(buffers))
    start = time.monotonic()
    try:
        placed = allocator.allocate(allocations)
    except Exception as exc:  # a peer failing is a result, not a crash of the benchmark
        return None, time.monotonic() - start, f"error: {type(exc).__name__}"
    wall = time.monotonic() - start
    offsets = [0] * len(buffers)
    for a in placed:
        offsets[a.id] = a.offset
    try:
        validate(buffers, offsets)
    except ValueError:
        return None, wall, "invalid"
    return max((o + b.size for o, b in zip(offsets, buffers)), default=0), wall, ""


# ----------------------------------------------------------------------------- table

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per allocator per instance")
    parser.add_argument("--quick", action="store_true", help="fewer, smaller instances")
    parser.add_argument("--no-zoo", action="store_true", help="skip the torch-captured model graphs")
    parser.add_argument("--only", default=None,
                        help="comma-separated substrings of instance names (a row runs if it contains one); "
                             "groups: zoo, model, random, tiling, sweep-tiling, minimalloc, omni "
                             "(e.g. --only omni, --only minimalloc, --only omni:tiling,omni:pinwheel)")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as markdown")
    args = parser.parse_args(argv)
    tokens = [t for t in args.only.split(",") if t] if args.only else None

    def wanted(name: str) -> bool:
        return tokens is None or any(t in name for t in tokens)

    with_zoo = not args.no_zoo and (tokens is None or any(t in "zoo:" or "zoo" in t for t in tokens))
    peers = omnimalloc_peers(args.time_limit)
    columns = ["memplan greedy", "memplan search", "memplan fit 1 MiB"] + [f"omni {name}" for name in peers]
    rows = []
    for name, buffers in instances(args.quick, with_zoo=with_zoo).items():
        if not wanted(name):
            continue
        bound = interval_lower_bound(buffers)
        cells = {}
        height, wall, status = run_memplan(buffers, "greedy", args.time_limit)
        cells["memplan greedy"] = (height, wall, "")
        height, wall, status = run_memplan(buffers, "search", args.time_limit)
        cells["memplan search"] = (height, wall, status)
        if name.startswith("minimalloc:"):
            height, wall, status = run_memplan(buffers, "auto", args.time_limit, capacity=MINIMALLOC_CAPACITY)
            cells["memplan fit 1 MiB"] = (height, wall, "fits" if height <= MINIMALLOC_CAPACITY else "does not fit")
        else:
            cells["memplan fit 1 MiB"] = (None, 0.0, "-")
        for peer_name, allocator in peers.items():
            cells[f"omni {peer_name}"] = run_omnimalloc(allocator, buffers)
        rows.append((name, len(buffers), bound, cells))
        print(_row_text(rows[-1], columns), flush=True)

    tables = [_markdown(rows, columns, args.time_limit)] if rows else []
    if any(name.startswith("minimalloc:") for name, *_ in rows):
        tables.append(MINIMALLOC_REFERENCE)
    omni_rows = run_omnimalloc_sources(args.time_limit, args.quick, wanted)
    if omni_rows:
        tables.append(_omni_markdown(omni_rows, args.time_limit))
    table = "\n\n".join(tables)
    print()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
        print(f"wrote {args.markdown}")
    return 0


def run_omnimalloc_sources(time_limit: float, quick: bool, wanted) -> list[dict]:
    """memplan (``method="auto"``) against every omnimalloc allocator on omnimalloc's own sources."""
    instances_ = {name: b for name, b in omnimalloc_source_instances(quick).items() if wanted(name)}
    if not instances_:
        return []
    peers, skipped = omnimalloc_all_peers(time_limit)
    if skipped:
        print("omnimalloc allocators not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    rows = []
    for name, buffers in instances_.items():
        if isinstance(buffers, str):
            rows.append({"name": name, "n": None, "reason": buffers})
            print(f"{name:40s} not run: {buffers}", flush=True)
            continue
        bound = interval_lower_bound(buffers)
        height, wall, status = run_memplan(buffers, "auto", time_limit)     # validates
        peer_cells = {peer: run_omnimalloc(allocator, buffers) for peer, allocator in peers.items()}
        ok = {peer: cell for peer, cell in peer_cells.items() if cell[0] is not None}
        best = min(ok, key=lambda p: (ok[p][0], ok[p][1])) if ok else None
        row = {"name": name, "n": len(buffers), "bound": bound, "memplan": (height, wall, status),
               "peers": peer_cells, "best": best}
        rows.append(row)
        best_text = f"{ok[best][0]} {best} ({ok[best][1]:.2f}s)" if best else "-"
        print(f"{name:40s} n={len(buffers):5d} lb={bound:>10d} memplan {height} ({wall:.2f}s {status}) "
              f"best omni {best_text} -> {_verdict(height, ok[best][0] if best else None)}", flush=True)
    return rows


def _verdict(ours: int, best_omni: int | None) -> str:
    if best_omni is None:
        return "-"
    return "lower" if ours < best_omni else "equal" if ours == best_omni else "HIGHER"


def _omni_markdown(rows: list[dict], time_limit: float) -> str:
    """Summary (memplan vs the best omnimalloc allocator) and every allocator's height above the bound."""
    lines = [f"omnimalloc's own benchmark sources (seed {OMNI_SEED}): memplan `solve_allocation(method=\"auto\")` "
             f"against the best of every omnimalloc allocator, {time_limit:g} s each; every packing validated.",
             "", "| instance | buffers | lower bound | memplan height | memplan time | best omnimalloc height | "
             "best omnimalloc allocator (time) | memplan vs best |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        if row["n"] is None:
            lines.append(f"| {row['name']} | - | - | not expressible | - | - | - | {row['reason']} |")
            continue
        height, wall, status = row["memplan"]
        best = row["best"]
        best_h, best_wall = (row["peers"][best][0], row["peers"][best][1]) if best else (None, 0.0)
        lines.append(f"| {row['name']} | {row['n']} | {row['bound']} | {height} | {wall:.2f} s ({status}) | "
                     f"{'-' if best is None else best_h} | {best or '-'} ({best_wall:.2f} s) | "
                     f"{_verdict(height, best_h)} |")
    run = [row for row in rows if row["n"] is not None]
    if run:
        names = list(run[0]["peers"])
        lines += ["", "Every omnimalloc allocator: height above the lower bound (wall seconds).", "",
                  "| instance | memplan auto | " + " | ".join(names) + " |", "|---|" + "---:|" * (len(names) + 1)]
        for row in run:
            bound = row["bound"]
            lines.append(f"| {row['name']} | {_cell(row['memplan'][0], bound, row['memplan'][1], row['memplan'][2])} | " + " | ".join(
                _cell(row["peers"][p][0], bound, row["peers"][p][1], row["peers"][p][2]) for p in names) + " |")
    return "\n".join(lines)


def _cell(height: int | None, bound: int, wall: float, note: str) -> str:
    if height is None:
        return note if note == "-" else f"{note} ({wall:.2f}s)"
    over = 100.0 * (height - bound) / bound if bound else 0.0
    return f"+{over:.2f}% ({wall:.2f}s)" + (f" {note}" if note in ("optimal", "fits", "does not fit") else "")


def _row_text(row, columns) -> str:
    name, n, bound, cells = row
    return f"{name:24s} n={n:5d} lb={bound:>10d} " + " | ".join(
        f"{c}: {_cell(*cells[c][:1], bound, *cells[c][1:])}" for c in columns)


def _markdown(rows, columns, time_limit: float) -> str:
    lines = [f"Height above the interval lower bound (wall seconds); time limit {time_limit:g} s per allocator.",
             "", "| instance | buffers | lower bound | " + " | ".join(columns) + " | best omnimalloc | memplan search vs best omni |",
             "|---|---:|---:|" + "---:|" * (len(columns) + 2)]
    for name, n, bound, cells in rows:
        omni = [cells[c][0] for c in columns if c.startswith("omni") and cells[c][0] is not None]
        best_omni = min(omni) if omni else None
        ours = cells["memplan search"][0]
        verdict = "-" if best_omni is None else ("lower" if ours < best_omni else "equal" if ours == best_omni else "higher")
        lines.append(f"| {name} | {n} | {bound} | " + " | ".join(
            _cell(cells[c][0], bound, cells[c][1], cells[c][2]) for c in columns)
            + f" | {'-' if best_omni is None else best_omni} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
