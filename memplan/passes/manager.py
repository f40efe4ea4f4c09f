"""The pipeline runner (the registry is :mod:`memplan.passes.registry`).

A pass is one named unit ``(Graph, ctx) -> Graph``: every decision it makes is
written into the graph (the planned IR is the plan). Solver records (status,
bound, gap, time) go to ``ctx.records``; the :class:`~memplan.plan.Plan`
report is derived from the final graph and those records. Passes register by
name so the CLI can run, time and dump after any of them::

    @register_pass("canonicalize")
    def canonicalize(graph, ctx): ...
"""
from __future__ import annotations

import time
from pathlib import Path

from memplan.errors import MemplanError
from memplan.ir.graph import Graph
from memplan.ir.printer import print_graph
from memplan.outputs import check_output_dir, write_files
from memplan.passes import builtin  # noqa: F401  (registers the built-in passes)
from memplan.passes.options import check_options
from memplan.passes.registry import (DEFAULT_PIPELINE, PASSES, Pass, PassContext, check_pipeline,  # noqa: F401
                                    option_passes, register_pass)
from memplan.plan import Plan


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

    names = list(pipeline or DEFAULT_PIPELINE)
    check_pipeline(names)
    ctx.options = check_options(option_passes(names), ctx.options)
    dumps = _dump_set(dump_after, names)
    if dumps and dump_dir is None:
        raise MemplanError("dumping IR after passes needs a directory (dump_dir / -o)")
    if dumps:
        check_output_dir(Path(dump_dir), "dump directory")
    rendered: dict[str, str] = {}  # file name -> text, written when every pass has run
    seconds: dict[str, float] = {}
    ctx.records["pass_seconds"] = seconds
    for index, name in enumerate(names):
        p = PASSES[name]
        start = time.perf_counter()
        graph = p.fn(graph, ctx)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        if verify_each:
            verify(graph)
        if name in dumps:
            rendered.update(_render_dump(index, p, graph, ctx, seconds[name]))
    if rendered:
        write_files(Path(dump_dir), rendered)
    # the checker's figures of the final graph, if verify_plan was the last pass (else checked here)
    return graph, report(graph, ctx, ctx.records.get("check") if names[-1] == "verify_plan" else None)


def report(graph: Graph, ctx: PassContext, check=None) -> Plan:
    """The :class:`Plan` report of ``graph`` as it stands: the report's figures are the checker's, not
    the planner's (``check``: what ``verify_plan`` found on this very graph, if it just ran)."""
    from memplan.analysis.check import verify_plan
    from memplan.analysis.cost import modelled_seconds
    check = check if check is not None else verify_plan(graph, ctx.target)
    one_kernel = bool(getattr(ctx.get_backend(), "one_kernel_regions", False))
    ctx.records.setdefault("stats", {})["modelled_seconds"] = modelled_seconds(graph, ctx.target, one_kernel)
    return Plan.from_graph(graph, check, ctx.records, ctx.target.name)


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


def _render_dump(index: int, p: Pass, graph: Graph, ctx: PassContext, sec: float) -> dict[str, str]:
    """The dump files of one pass: ``{file name: text}`` (and the plan report once the graph is planned)."""
    stem = f"{index:02d}-{p.name}"
    header = f"# memplan IR after pass '{p.name}' ({sec * 1000:.1f} ms)\n"
    files = {f"{stem}.mir": header + print_graph(graph) + "\n"}
    if graph.storages or any(v.alloc is not None for v in graph.values()):
        files[f"{stem}.plan.json"] = report(graph, ctx).to_json()
    return files
