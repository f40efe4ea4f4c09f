"""Pass registry and pipeline runner.

A pass is one named unit: a *graph pass* ``(Graph, ctx) -> Graph`` or a
*plan pass* ``(Graph, Plan, ctx) -> Plan``. Passes register by name so the
CLI can run, time and dump after any of them::

    @register_pass("canonicalize", kind="graph")
    def canonicalize(graph, ctx): ...
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from memplan.errors import MemplanError
from memplan.ir.graph import Graph
from memplan.ir.printer import print_graph
from memplan.outputs import check_output_dir, write_files
from memplan.plan import Plan
from memplan.target import HardwareSpec


@dataclass(frozen=True)
class Pass:
    name: str
    kind: str  # "graph" | "plan"
    fn: Callable
    doc: str = ""


PASSES: dict[str, Pass] = {}


def register_pass(name: str, kind: str):
    """Decorator registering ``fn`` as pass ``name`` of ``kind`` ``graph`` or ``plan``."""
    if kind not in ("graph", "plan"):
        raise ValueError(f"pass kind must be 'graph' or 'plan', got {kind!r}")

    def wrap(fn):
        PASSES[name] = Pass(name, kind, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return wrap


@dataclass
class PassContext:
    """What passes may read: the target, the budget and options; ``log`` collects reasons."""

    target: HardwareSpec
    memory_budget: int | None = None
    options: dict = field(default_factory=dict)
    log: list[str] = field(default_factory=list)


DEFAULT_PIPELINE = ["verify", "fold_batchnorm", "mkldnn_conv", "canonicalize", "lower_conv", "inplace", "schedule", "allocate", "verify_plan"]


def run_pipeline(graph: Graph, ctx: PassContext, pipeline: list[str] | None = None, *,
                 dump_after: str | list[str] | None = None, dump_dir: str | Path | None = None,
                 verify_each: bool = False) -> tuple[Graph, Plan]:
    """Run ``pipeline`` (pass names) on ``graph``; return the final graph and plan.

    ``dump_after`` is ``"all"`` or pass names: after each such pass the IR (and
    the plan, for plan passes) is rendered as ``NN-<pass>.mir`` /
    ``NN-<pass>.plan.json`` with a header naming the pass; the files are written
    to ``dump_dir`` once the whole pipeline has succeeded (a failed run writes
    nothing). Pass wall times land in ``plan.stats["pass_seconds"]``.
    """
    from memplan.ir.verify import verify
    import memplan.passes  # noqa: F401  (registers the built-in passes)

    names = list(pipeline or DEFAULT_PIPELINE)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise MemplanError(f"unknown pass {unknown[0]!r}; passes: {', '.join(sorted(PASSES))}")
    dumps = _dump_set(dump_after, names)
    if dumps and dump_dir is None:
        raise MemplanError("dumping IR after passes needs a directory (dump_dir / -o)")
    if dumps:
        check_output_dir(Path(dump_dir), "dump directory")
    rendered: dict[str, str] = {}  # file name -> text, written when every pass has run
    plan = Plan(graph=graph.name, target=ctx.target.name)
    seconds: dict[str, float] = {}
    for index, name in enumerate(names):
        p = PASSES[name]
        start = time.perf_counter()
        if p.kind == "graph":
            graph = p.fn(graph, ctx)
            plan.graph = graph.name
        else:
            plan = p.fn(graph, plan, ctx)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        plan.stats["pass_seconds"] = seconds
        if verify_each and p.kind == "graph":
            verify(graph)
        if name in dumps:
            rendered.update(_render_dump(index, p, graph, plan, seconds[name]))
    if rendered:
        write_files(Path(dump_dir), rendered)
    return graph, plan


def _dump_set(dump_after, names) -> set[str]:
    if not dump_after:
        return set()
    wanted = names if dump_after == "all" else (
        [s.strip() for s in dump_after.split(",")] if isinstance(dump_after, str) else list(dump_after))
    missing = [w for w in wanted if w not in names]
    if missing:
        raise MemplanError(f"--dump-ir-after {missing[0]!r}: no such pass in the pipeline "
                           f"({', '.join(names)}); or use 'all'")
    return set(wanted)


def _render_dump(index: int, p: Pass, graph: Graph, plan: Plan, sec: float) -> dict[str, str]:
    """The dump files of one pass: ``{file name: text}``."""
    stem = f"{index:02d}-{p.name}"
    header = f"# memplan IR after pass '{p.name}' ({p.kind} pass, {sec * 1000:.1f} ms)\n"
    files = {f"{stem}.mir": header + print_graph(graph) + "\n"}
    if p.kind == "plan":
        files[f"{stem}.plan.json"] = plan.to_json()
    return files
