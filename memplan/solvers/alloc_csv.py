"""MiniMalloc's CSV interchange: ``id,lower,upper,size`` in, the same plus ``offset`` out.

>>> import io
>>> buffers = parse_buffers_csv(io.StringIO("id,lower,upper,size\\nx,0,2,64\\ny,1,3,32\\n"), "demo.csv")
>>> buffers[1]
Buffer(id='y', lower=1, upper=3, size=32)
"""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from memplan.errors import MemplanError
from memplan.solvers.allocation import Buffer

COLUMNS = ("id", "lower", "upper", "size")


class BufferFileError(MemplanError):
    """A buffers CSV that cannot be read; the message names the file, line and field."""


def read_buffers_csv(path: str | Path) -> list[Buffer]:
    """Read buffers from a MiniMalloc CSV file (header ``id,lower,upper,size``, any column order).

    Extra columns (such as an ``offset`` from a previous run) are ignored.
    Raises :class:`BufferFileError` naming the file, line and field at fault.
    """
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            return parse_buffers_csv(handle, str(path))
    except FileNotFoundError:
        raise BufferFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BufferFileError(f"{path}: is a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise BufferFileError(f"{path}: not a text file ({exc.reason})") from None


def parse_buffers_csv(handle: TextIO, name: str = "<csv>") -> list[Buffer]:
    """Parse buffers from an open CSV text stream; ``name`` is used in error messages."""
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        raise BufferFileError(f"{name}: empty file; expected a header line 'id,lower,upper,size'")
    header = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise BufferFileError(f"{name}:1: header {','.join(header)!r} lacks column(s) {', '.join(missing)} "
                              f"(expected 'id,lower,upper,size')")
    where = {c: header.index(c) for c in COLUMNS}
    buffers: list[Buffer] = []
    first_line: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise BufferFileError(f"{name}:{line}: {len(row)} field(s), expected {len(header)} ({','.join(header)})")
        values: dict[str, int] = {}
        for column in ("lower", "upper", "size"):
            text = row[where[column]].strip()
            try:
                values[column] = int(text)
            except ValueError:
                raise BufferFileError(f"{name}:{line}: field {column!r} is {text!r}, not an integer") from None
        buffer_id = row[where["id"]].strip()
        if not buffer_id:
            raise BufferFileError(f"{name}:{line}: field 'id' is empty")
        if buffer_id in first_line:
            raise BufferFileError(f"{name}:{line}: id {buffer_id!r} already used on line {first_line[buffer_id]}")
        if values["upper"] <= values["lower"]:
            raise BufferFileError(f"{name}:{line}: field 'upper' ({values['upper']}) must be greater than "
                                  f"'lower' ({values['lower']}); lifetimes are [lower, upper)")
        if values["size"] < 0:
            raise BufferFileError(f"{name}:{line}: field 'size' is negative ({values['size']})")
        first_line[buffer_id] = line
        buffers.append(Buffer(buffer_id, values["lower"], values["upper"], values["size"]))
    return buffers


def write_offsets_csv(path: str | Path, buffers: Sequence[Buffer], offsets: Mapping[str, int]) -> None:
    """Write ``id,lower,upper,size,offset``, one row per buffer, in the input order."""
    Path(path).write_text(format_offsets_csv(buffers, offsets))


def format_offsets_csv(buffers: Sequence[Buffer], offsets: Mapping[str, int]) -> str:
    """The text :func:`write_offsets_csv` writes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS + ("offset",))
    for b in buffers:
        writer.writerow([b.id, b.lower, b.upper, b.size, offsets[b.id]])
    return out.getvalue()
