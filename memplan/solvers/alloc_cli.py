"""``memplan alloc``: pack the buffers of a MiniMalloc CSV into one arena.

::

    memplan alloc buffers.csv --capacity 2MiB --time-limit 10 -o offsets.csv

Prints the height reached, the interval lower bound, the gap, the method
that won and the solve time. With ``--capacity``, a packing that does not fit
by the time limit is an error (exit status 1) that gives the best height
found and whether the capacity is proven impossible; no file is written.
Arguments and ``-o`` are checked before anything is solved; every error is
one line.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from memplan.errors import MemplanError, OutputPathError
from memplan.solvers.alloc_csv import read_buffers_csv, write_offsets_csv
from memplan.solvers.allocation import METHODS, solve_allocation, validate
from memplan.units import format_bytes, parse_bytes

MAX_ALIGNMENT = 2**30


class AllocationCapacityError(MemplanError):
    """No packing within the requested capacity was found (or one is proven impossible)."""


def add_alloc_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``alloc`` subcommand to an ``argparse`` subparsers object and return it."""
    parser = subparsers.add_parser(
        "alloc", help="pack buffers (MiniMalloc CSV: id,lower,upper,size) into one arena",
        description="Static allocation: a byte offset for every buffer of a MiniMalloc CSV "
                    "(id,lower,upper,size; lifetime [lower, upper)), as low as possible or within --capacity.")
    parser.add_argument("buffers", help="CSV file with header id,lower,upper,size")
    parser.add_argument("--capacity", default=None, help="arena size to fit in, e.g. 1048576 or 2MiB")
    parser.add_argument("--time-limit", type=float, default=10.0, metavar="S", help="seconds (default 10)")
    parser.add_argument("--alignment", type=int, default=1, metavar="A", help="offsets are multiples of A")
    parser.add_argument("--method", default="auto", choices=METHODS, help="allocator (default auto)")
    parser.add_argument("-o", "--output", default=None, help="write id,lower,upper,size,offset here")
    parser.set_defaults(func=cmd_alloc)
    return parser


def cmd_alloc(args) -> int:
    """Run ``memplan alloc``; returns the exit status, raises MemplanError on failure."""
    path = Path(args.buffers)
    capacity = None if args.capacity is None else parse_bytes(args.capacity, what="--capacity")
    if not 1 <= args.alignment <= MAX_ALIGNMENT:
        raise MemplanError(f"--alignment must be in 1..{MAX_ALIGNMENT}, got {args.alignment}")
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise MemplanError(f"--time-limit must be a finite positive number of seconds, got {args.time_limit:g}")
    if args.output:
        _check_output(Path(args.output))
    buffers = read_buffers_csv(path)
    try:
        result = solve_allocation(buffers, capacity=capacity, time_limit=args.time_limit,
                                  alignment=args.alignment, method=args.method)
    except ValueError as exc:       # a buffer set the solver cannot take (e.g. a duplicate id)
        raise MemplanError(f"{path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    validate(buffers, result.offsets, alignment=args.alignment)   # a bug if this ever fails
    _print_result(path, len(buffers), result)
    if not result.fits:
        proof = ("it is proven impossible" if result.status == "infeasible"
                 else "none was proven impossible either")
        raise AllocationCapacityError(
            f"{path}: no packing of {len(buffers)} buffers fits in capacity {capacity} "
            f"({format_bytes(capacity)}) after {result.wall_s:.1f} s; best height {result.height} "
            f"({format_bytes(result.height)}), lower bound {result.lower_bound}; {proof}")
    if args.output:
        try:
            write_offsets_csv(args.output, buffers, result.offsets)
        except OSError as exc:
            raise OutputPathError(f"-o {args.output}: cannot write ({exc.strerror or type(exc).__name__})") from None
        print(f"wrote {args.output}")
    return 0


def _check_output(out: Path) -> None:
    """``-o`` must name a file that can be created: fail now, not after the solve."""
    if out.is_dir():
        raise OutputPathError(f"-o {out}: is a folder; give the path of the CSV file to write")
    if out.exists() and not out.is_file():
        raise OutputPathError(f"-o {out}: exists and is not a regular file")
    parent = out.parent
    if not parent.is_dir():
        raise OutputPathError(f"-o {out}: folder {parent} does not exist")


def _print_result(path: Path, count: int, result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"allocation of {count} buffers from {path}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("height reached", f"{result.height} ({format_bytes(result.height)})")
    table.add_row("lower bound", f"{result.lower_bound} ({format_bytes(result.lower_bound)})")
    table.add_row("gap", f"{100 * result.gap:.3f}%")
    if result.capacity is not None:
        table.add_row("capacity", f"{result.capacity} ({format_bytes(result.capacity)})")
    table.add_row("status", result.status)
    table.add_row("method", result.method)
    table.add_row("solve time", f"{result.wall_s:.2f} s")
    Console(highlight=False).print(table)
