"""The ``memplan`` command line.

::

    memplan lower model.onnx --target h100 --budget 2GiB --emit ir,python,plan -o out/
    memplan lower model.onnx --dump-ir-after all -o out/
    memplan show out/model.mir          # pretty-print and re-verify IR or a plan
    memplan targets                     # list target presets
    memplan alloc buffers.csv --capacity 2MiB -o offsets.csv   # static allocation of a plain instance

Errors print one line on stderr and exit with status 1 (2 for usage errors);
``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from memplan.errors import MemplanError

EMITS = ("ir", "python", "plan", "report")


def _console():
    from rich.console import Console
    return Console(highlight=False)


def cmd_lower(args) -> int:
    import memplan
    from memplan.frontend.onnx import input_shapes_from_spec

    path = Path(args.model)
    emits = [e.strip() for e in args.emit.split(",") if e.strip()]
    bad = [e for e in emits if e not in EMITS]
    if bad:
        raise MemplanError(f"--emit {bad[0]!r}: choose from {', '.join(EMITS)}")
    out = Path(args.output)
    examples = input_shapes_from_spec(args.input_shape) if args.input_shape else None
    console = _console()
    with console.status(f"lowering {path.name}"):
        cm = memplan.compile(path, examples, target=args.target, memory_budget=args.budget,
                             dump_ir_after=args.dump_ir_after, dump_dir=out / "dumps" if args.dump_ir_after else None,
                             verify_each=args.verify_each)
    out.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    written = []
    if "ir" in emits:
        (out / f"{stem}.mir").write_text(cm.ir + "\n")
        written.append(out / f"{stem}.mir")
    if "python" in emits:
        (out / f"{stem}.py").write_text(cm.source)
        written.append(out / f"{stem}.py")
    if "plan" in emits:
        cm.plan.save(out / f"{stem}.plan.json")
        written.append(out / f"{stem}.plan.json")
    if "report" in emits:
        from memplan.report import write_report
        written.extend(write_report(cm.plan, out, stem))
    console.print(cm.plan.summary(), soft_wrap=True, markup=False)
    for line in cm.log:
        console.print(f"  {line}")
    for w in written:
        console.print(f"wrote {w}")
    if args.dump_ir_after:
        console.print(f"IR dumps in {out / 'dumps'}")
    return 0


def cmd_show(args) -> int:
    from memplan.ir.parser import parse
    from memplan.ir.verify import verify
    from memplan.passes.liveness import liveness
    from memplan.passes.verify_plan import check_plan
    from memplan.plan import Plan
    from memplan.units import format_bytes

    path = Path(args.file)
    if not path.is_file():
        raise MemplanError(f"{str(path)!r} does not exist")
    console = _console()
    if path.name.endswith(".plan.json"):
        try:
            plan = Plan.load(path)
        except (ValueError, TypeError) as exc:
            raise MemplanError(f"{path}: not a memplan plan file ({str(exc).splitlines()[0]})") from None
        ir_path = path.with_name(path.name[: -len(".plan.json")] + ".mir")
        console.print(plan.summary(), soft_wrap=True, markup=False)
        if ir_path.is_file():
            graph = parse(ir_path.read_text())
            verify(graph)
            check_plan(graph, plan)
            console.print(f"[green]plan re-verified[/green] against {ir_path}")
        else:
            console.print(f"(no IR file {ir_path.name} beside the plan: schedule not re-verified)")
        return 0
    graph = parse(path.read_text())
    verify(graph)
    live = liveness(graph)
    if not args.quiet:
        print(str(graph))
    from rich.table import Table
    table = Table(title=f"graph {graph.name} ({path})")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("nodes", str(len(graph.nodes)))
    table.add_row("inputs", str(len(graph.inputs)))
    table.add_row("params", f"{len(graph.params)} ({format_bytes(sum(int(p.nbytes) for p in graph.params))})")
    table.add_row("activation peak (graph order)", format_bytes(live.peak_bytes))
    for op, n in Counter(n.op for n in graph.nodes).most_common(8):
        table.add_row(f"  {op}", str(n))
    console.print(table)
    console.print("[green]IR verified[/green]")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memplan", description="memory-aware execution planning")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    lower = sub.add_parser("lower", help="lower an ONNX model to IR, a plan and Python code")
    lower.add_argument("model", help="path to an .onnx file")
    lower.add_argument("--target", default="cpu", help="preset name or .yaml/.json spec (see `memplan targets`)")
    lower.add_argument("--budget", default=None, help="memory budget, e.g. 2GiB, 512KiB or bytes")
    lower.add_argument("--emit", default="ir,python,plan", help="comma list of: ir, python, plan, report (PNG + HTML)")
    lower.add_argument("-o", "--output", default="out", help="output directory (default: out)")
    lower.add_argument("--dump-ir-after", default=None, metavar="all|PASS[,PASS]",
                       help="write the IR after each named pass to OUTPUT/dumps")
    lower.add_argument("--input-shape", default=None, metavar="x=1x3x224x224,...",
                       help="concrete shapes for inputs with symbolic dims")
    lower.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    lower.set_defaults(func=cmd_lower)
    show = sub.add_parser("show", help="pretty-print and re-verify an IR (.mir) or plan (.plan.json) file")
    show.add_argument("file")
    show.add_argument("-q", "--quiet", action="store_true", help="summary only, not the IR text")
    show.set_defaults(func=cmd_show)
    targets = sub.add_parser("targets", help="list target presets")
    targets.set_defaults(func=cmd_targets)
    from memplan.solvers.alloc_cli import add_alloc_parser
    add_alloc_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MemplanError as exc:
        if args.debug:
            raise
        print(f"memplan: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("memplan: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal bug: still one line unless --debug
        if args.debug:
            raise
        print(f"memplan: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
