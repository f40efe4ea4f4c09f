"""The ``memplan`` command line.

::

    memplan lower model.onnx --target h100 --budget 2GiB --emit ir,python,plan -o out/
    memplan lower model.onnx --emit ir,triton,plan -o out/   # Triton kernels + their launcher
    memplan lower model.onnx --dump-ir-after all -o out/
    memplan show out/model.mir          # pretty-print and re-verify IR or a plan
    memplan targets                     # list target presets
    memplan alloc buffers.csv --capacity 2MiB -o offsets.csv   # static allocation of a plain instance

Errors print one line on stderr and exit with status 1 (2 for usage errors);
``--debug`` shows the traceback. ``lower`` checks its options and the output
folder before compiling, and writes its files (dumps included) only when the
whole run succeeded: a failed run writes nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from memplan.errors import IRParseError, MemplanError, OutputPathError, PlanFormatError
from memplan.files import read_text

EMITS = ("ir", "python", "triton", "plan", "report")


def _console():
    from rich.console import Console
    return Console(highlight=False)


def _parse_emits(text: str) -> list[str]:
    emits = list(dict.fromkeys(e.strip() for e in text.split(",") if e.strip()))
    bad = [e for e in emits if e not in EMITS]
    if bad:
        raise MemplanError(f"--emit {_clip(bad[0])!r}: choose from {', '.join(EMITS)}")
    if "python" in emits and "triton" in emits:
        raise MemplanError("--emit python,triton: the two backends plan differently (a Triton kernel needs no "
                           "scratch); emit one of them per run")
    return emits


def _clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for an error message (never echo a whole user value)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _parse_budget(text: str | None) -> int | None:
    from memplan.errors import BudgetFormatError
    from memplan.units import parse_bytes
    if text is None:
        return None
    try:
        return parse_bytes(text, what="--budget")
    except MemplanError:
        raise
    except (ArithmeticError, ValueError):  # a number too large to hold
        raise BudgetFormatError(f"--budget: cannot read {_clip(text)!r} as bytes (too large)") from None


def _output_names(stem: str, emits: list[str]) -> dict[str, str]:
    """What each ``--emit`` kind writes: ``{kind: file name}`` (report and triton: two files each; the
    Triton files are Python modules, named by the stem made an identifier)."""
    names = {"ir": f"{stem}.mir", "python": f"{stem}.py", "plan": f"{stem}.plan.json",
             "report": f"{stem}.report.png", "report_html": f"{stem}.report.html"}
    if "triton" in emits:
        from memplan.backends.pytorch import identifier
        module = identifier(stem)
        names.update(triton=f"{module}_kernels.py", triton_launcher=f"{module}_launcher.py")
    wanted = [*emits, *(["report_html"] if "report" in emits else []),
              *(["triton_launcher"] if "triton" in emits else [])]
    return {kind: names[kind] for kind in wanted}


def _check_report_prerequisites() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MemplanError(f"--emit report draws with matplotlib, which cannot be imported ({exc}); "
                           "install it (pip install matplotlib) or leave 'report' out of --emit") from None


def _check_outputs(out: Path, names: dict[str, str], dumps: bool) -> None:
    """Before any work: ``-o`` is a folder memplan can write, and no output file is a folder."""
    from memplan.outputs import check_output_dir
    check_output_dir(out, "-o")
    for name in names.values():
        if (out / name).is_dir():
            raise OutputPathError(f"-o {str(out)!r}: {name!r} there is a folder; memplan writes a file of that name")
    if dumps:
        check_output_dir(out / "dumps", "dump folder")


def _render_report(plan, stem: str) -> dict[str, bytes]:
    """The report's files, drawn in a scratch folder and returned as bytes."""
    from memplan.report import write_report
    with tempfile.TemporaryDirectory(prefix="memplan-report-") as tmp:
        try:
            paths = write_report(plan, tmp, stem)
        except ImportError as exc:
            raise MemplanError(f"--emit report: cannot draw the report ({exc}); install matplotlib or leave "
                               "'report' out of --emit") from None
        return {p.name: p.read_bytes() for p in paths}


def cmd_lower(args) -> int:
    """``memplan lower``: every check first, then compile, render all outputs in memory, write them
    only when everything succeeded (a failed run writes nothing)."""
    path = Path(args.model)
    emits = _parse_emits(args.emit)
    out = Path(args.output)
    stem = path.stem
    names = _output_names(stem, emits)
    _check_outputs(out, names, bool(args.dump_ir_after))
    if "report" in emits:
        _check_report_prerequisites()
    budget = _parse_budget(args.budget)
    pipeline, options = _pipeline_and_options(args)

    from rich.markup import escape

    import memplan
    from memplan.frontend.onnx import input_shapes_from_spec
    from memplan.outputs import write_files

    examples = input_shapes_from_spec(args.input_shape) if args.input_shape else None
    console = _console()
    files: dict[str, str | bytes] = {}
    with tempfile.TemporaryDirectory(prefix="memplan-dumps-") as staging:
        dump_dir = Path(staging) / "dumps" if args.dump_ir_after else None
        with console.status(f"lowering {escape(_clip(path.name))}"):
            cm = memplan.compile(path, examples, target=args.target, memory_budget=budget,
                                 dump_ir_after=args.dump_ir_after, dump_dir=dump_dir,
                                 verify_each=args.verify_each, pipeline=pipeline, options=options,
                                 backend="triton" if "triton" in emits else "pytorch")
            if "ir" in emits:
                files[names["ir"]] = cm.ir + "\n"
            if "python" in emits:
                files[names["python"]] = cm.source
            if "triton" in emits:  # the kernels, and the launcher that imports them
                files.update(cm.backend.emit_files(cm.graph, stem))
            if "plan" in emits:
                files[names["plan"]] = cm.plan.to_json()
            if "report" in emits:
                files.update(_render_report(cm.plan, stem))
        if dump_dir is not None and dump_dir.is_dir():
            for dump in sorted(dump_dir.iterdir()):
                files[f"dumps/{dump.name}"] = dump.read_bytes()
    written = write_files(out, files)
    console.print(cm.plan.summary(), soft_wrap=True, markup=False)
    for line in cm.log:
        console.print(f"  {line}", soft_wrap=True, markup=False)
    for w in written:
        if w.parent == out:
            console.print(f"wrote {w}", soft_wrap=True, markup=False)
    if args.dump_ir_after:
        console.print(f"IR dumps in {out / 'dumps'}", soft_wrap=True, markup=False)
    if args.explain_fusion:
        for line in _fusion_lines(cm.plan):
            console.print(line, soft_wrap=True, markup=False)
    return 0


def _fusion_lines(plan) -> list[str]:
    """``--explain-fusion``: each fused region with its members, then each node left out and why."""
    lines = [f"fusion: {len(plan.fusion)} fused regions"]
    for region, members in plan.fusion.items():
        lines.append(f"  {region}: {', '.join(members)}")
    reasons = plan.stats.get("why_not_fused", {})
    fused = {m for members in plan.fusion.values() for m in members}
    left = [(name, why) for name, why in reasons.items() if name not in fused]
    lines.append(f"not fused: {len(left)} nodes")
    lines += [f"  {name}: {why}" for name, why in left]
    return lines


def _pipeline_and_options(args) -> tuple[list[str] | None, dict]:
    """``--pipeline`` and ``--option`` checked before any work (names and types)."""
    import memplan.passes  # noqa: F401  (registers the passes)
    from memplan.passes.registry import DEFAULT_PIPELINE, check_pipeline, option_passes
    from memplan.passes.options import check_options, parse_option_text

    pipeline = None
    if args.pipeline:
        pipeline = [p.strip() for p in args.pipeline.split(",") if p.strip()]
        if not pipeline:
            raise MemplanError("--pipeline: give pass names separated by commas (see `memplan passes`)")
    check_pipeline(pipeline or DEFAULT_PIPELINE)
    options = dict(parse_option_text(text) for text in args.option)
    check_options(option_passes(pipeline or DEFAULT_PIPELINE), options)
    return pipeline, options


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``, bounded; a one-line error naming the file if it is not."""
    from memplan.ir.parser import MAX_TEXT_CHARS
    return read_text(path, 4 * MAX_TEXT_CHARS, IRParseError, what)


def _check_input_file(path: Path) -> None:
    if not path.exists():
        raise MemplanError(f"{str(path)!r} does not exist")
    if path.is_dir():
        raise MemplanError(f"{str(path)!r} is a folder; memplan show reads an IR (.mir) or plan (.plan.json) file")
    if not path.is_file():
        raise MemplanError(f"{str(path)!r} is not a regular file")


def cmd_show(args) -> int:
    from rich.markup import escape

    from memplan.analysis.check import verify_plan
    from memplan.analysis.liveness import liveness
    from memplan.ir.parser import parse
    from memplan.ir.types import eval_bytes
    from memplan.ir.verify import verify
    from memplan.passes.verify_plan import check_plan
    from memplan.plan import Plan
    from memplan.units import format_bytes

    path = Path(args.file)
    _check_input_file(path)
    console = _console()
    if path.name.endswith(".plan.json"):
        try:
            plan = Plan.load(path)
        except MemplanError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PlanFormatError(f"{path}: not a memplan plan file ({_clip(reason, 200)})") from None
        ir_path = path.with_name(path.name[: -len(".plan.json")] + ".mir")
        console.print(plan.summary(), soft_wrap=True, markup=False)
        if ir_path.is_file():
            graph = parse(_read_text(ir_path, "IR text (.mir)"))
            verify(graph)
            check_plan(graph, plan)
            console.print(f"[green]plan re-verified[/green]: the planned IR {escape(str(ir_path))} checks on its own "
                          "and this plan is its report", soft_wrap=True)
        else:
            console.print(f"(no IR file {ir_path.name} beside the plan: nothing to re-verify; the plan is a report "
                          "of a planned .mir)")
        return 0
    graph = parse(_read_text(path, "IR text (.mir) or a plan (.plan.json)"))
    verify(graph)
    planned = bool(graph.storages) or any(v.alloc is not None for v in graph.values())
    check = verify_plan(graph) if planned else None
    if not args.quiet:
        print(str(graph))
    from rich.table import Table
    table = Table(title=f"graph {graph.name} ({path})")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("nodes", str(len(graph.nodes)))
    table.add_row("inputs", str(len(graph.inputs)))
    table.add_row("params", f"{len(graph.params)} ({format_bytes(sum(eval_bytes(p.nbytes) for p in graph.params))})")
    if check is not None:
        for tier, peak in check.peak_bytes.items():
            table.add_row(f"planned peak in {tier}", f"{format_bytes(peak)} (storage "
                          f"{format_bytes(check.storage_bytes.get(tier, 0))})")
        kinds = Counter(v.alloc.kind for v in graph.values() if v.alloc is not None)
        table.add_row("values in a slot / own / kernel-owned",
                      f"{kinds.get('slot', 0)} / {kinds.get('own', 0)} / {kinds.get('kernel', 0)}")
        if graph.attrs.get("memory_budget") is not None:
            table.add_row("memory budget", format_bytes(graph.attrs["memory_budget"]))
    else:
        table.add_row("activation peak (graph order)", format_bytes(liveness(graph).peak_bytes))
    for op, n in Counter(n.op for n in graph.nodes).most_common(8):
        table.add_row(f"  {op}", str(n))
    console.print(table)
    console.print("[green]planned IR verified[/green]" if check is not None else "[green]IR verified[/green]")
    return 0


def cmd_passes(args) -> int:
    """``memplan passes``: each pass, what it does, its options (type = default), what it requires
    and produces; the default pipeline first, in order."""
    import dataclasses
    import typing

    from memplan.passes import DEFAULT_PIPELINE, PASSES
    from memplan.passes.options import describe_type, option_fields

    lines = [f"default pipeline: {', '.join(DEFAULT_PIPELINE)}", ""]
    for name in [*DEFAULT_PIPELINE, *sorted(set(PASSES) - set(DEFAULT_PIPELINE))]:
        p = PASSES[name]
        lines.append(f"{name}: {p.doc}")
        hints = typing.get_type_hints(p.options) if p.options is not None else {}
        for f in option_fields(p.options):
            default = f.default if f.default is not dataclasses.MISSING else None
            lines.append(f"    --option {f.name}=...  ({describe_type(hints[f.name])}; default {default})")
        if p.includes:
            lines.append(f"    also takes the options of: {', '.join(p.includes)}")
        if p.requires or p.produces:
            lines.append(f"    requires: {', '.join(p.requires) or '-'}; produces: {', '.join(p.produces) or '-'}")
    print("\n".join(lines))
    return 0


def cmd_targets(args) -> int:
    from rich.table import Table
    from memplan.target import PRESETS
    from memplan.units import format_bytes

    table = Table(title="memplan target presets")
    for col in ("name", "memory tiers (fastest first)", "peak FLOP/s (f32)"):
        table.add_column(col)
    for name, spec in PRESETS.items():
        tiers = ", ".join(f"{t.name} {format_bytes(t.capacity)} @ {t.bandwidth / 1e9:g} GB/s" for t in spec.tiers)
        table.add_row(name, tiers, f"{spec.peak_flops('float32'):.3g}")
    _console().print(table)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``memplan: error: ...``, exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"memplan: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str, limit: int = 2000) -> str:
    """``text`` as one printable line: control characters (newlines from a file's names
    included) escaped, and at most ``limit`` characters."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return line if len(line) <= limit else line[:limit] + f"... ({len(line) - limit} more characters)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memplan", description="memory-aware execution planning")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    lower = sub.add_parser("lower", help="lower an ONNX model to IR, a plan and Python code")
    lower.add_argument("model", help="path to an .onnx file")
    lower.add_argument("--target", default="cpu", help="preset name or .yaml/.json spec (see `memplan targets`)")
    lower.add_argument("--budget", default=None, help="memory budget, e.g. 2GiB, 512KiB or bytes")
    lower.add_argument("--emit", default="ir,python,plan",
                       help="comma list of: ir, python, triton (kernels + launcher; plans for the Triton backend), "
                            "plan, report (PNG + HTML)")
    lower.add_argument("-o", "--output", default="out", help="output directory (default: out)")
    lower.add_argument("--dump-ir-after", default=None, metavar="all|PASS[,PASS]",
                       help="write the IR after each named pass to OUTPUT/dumps")
    lower.add_argument("--input-shape", default=None, metavar="x=1x3x224x224,...",
                       help="concrete shapes for inputs with symbolic dims")
    lower.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    lower.add_argument("--explain-fusion", action="store_true",
                       help="print the fused regions and, for every node left unfused, why")
    lower.add_argument("--pipeline", default=None, metavar="PASS,PASS,...",
                       help="the passes to run, in order (default: the standard pipeline; see `memplan passes`)")
    lower.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a pass option (repeatable), e.g. --option allocation=storage; see `memplan passes`")
    lower.set_defaults(func=cmd_lower)
    passes = sub.add_parser("passes", help="list the passes, their options and the default pipeline")
    passes.set_defaults(func=cmd_passes)

    show = sub.add_parser("show", help="pretty-print and re-verify an IR (.mir) or plan (.plan.json) file")
    show.add_argument("file")
    show.add_argument("-q", "--quiet", action="store_true", help="summary only, not the IR text")
    show.set_defaults(func=cmd_show)
    targets = sub.add_parser("targets", help="list target presets")
    targets.set_defaults(func=cmd_targets)
    from memplan.solvers.alloc_cli import add_alloc_parser
    add_alloc_parser(sub)
    from memplan.solvers.remat_cli import add_remat_parser
    add_remat_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MemplanError as exc:
        if args.debug:
            raise
        print(f"memplan: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("memplan: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system said no: a user's error, not memplan's
        if args.debug:
            raise
        where = f"{exc.filename!r}: " if exc.filename else ""
        print(f"memplan: error: {_one_line(where + str(exc.strerror or exc))}", file=sys.stderr)
        return 1
    except Exception as exc:  # an internal bug: still one line unless --debug
        if args.debug:
            raise
        print(f"memplan: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
