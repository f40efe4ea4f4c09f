"""MiniMalloc's CSV interchange: ``id,lower,upper,size`` in, the same plus ``offset`` out.

>>> import io
>>> buffers = parse_buffers_csv(io.StringIO("id,lower,upper,size\\nx,0,2,64\\ny,1,3,32\\n"), "demo.csv")
>>> buffers[1]
Buffer(id='y', lower=1, upper=3, size=32)
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from memplan.errors import MemplanError
from memplan.solvers.allocation import MAX_VALUE, Buffer

COLUMNS = ("id", "lower", "upper", "size")
_ASCII_INT = re.compile(r"[+-]?[0-9]+")
MAX_ID_CHARS = 1024          # a buffer id
MAX_NUMBER_CHARS = 24        # a lower/upper/size field (|value| < 2**62 has at most 19 digits)


class BufferFileError(MemplanError):
    """A buffers CSV that cannot be read; the message names the file, line and field."""


def read_buffers_csv(path: str | Path) -> list[Buffer]:
    """Read buffers from a MiniMalloc CSV file (header ``id,lower,upper,size``, any column order).

    Extra columns (such as an ``offset`` from a previous run) are ignored.
    The file is UTF-8 text; lifetimes and sizes are integers below 2**62 in
    magnitude. Raises :class:`BufferFileError` naming the file, line and
    field at fault (quoting at most a few dozen characters of the file).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark is not a column
            return parse_buffers_csv(handle, str(path))
    except FileNotFoundError:
        raise BufferFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BufferFileError(f"{path}: is a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise BufferFileError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise BufferFileError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _cut(text: str, limit: int = 40) -> str:
    """``repr`` of file text for a message, cut to ``limit`` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def parse_buffers_csv(handle: TextIO, name: str = "<csv>") -> list[Buffer]:
    """Parse buffers from an open CSV text stream; ``name`` is used in error messages."""
    reader = csv.reader(handle)
    try:
        return _parse_rows(reader, name)
    except csv.Error as exc:
        raise BufferFileError(f"{name}:{reader.line_num}: not valid CSV ({str(exc)[:80]})") from None


def _parse_rows(reader, name: str) -> list[Buffer]:
    header = next(reader, None)
    if header is None:
        raise BufferFileError(f"{name}: empty file; expected a header line 'id,lower,upper,size'")
    header = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise BufferFileError(f"{name}:1: header {_cut(','.join(header), 60)} lacks column(s) "
                              f"{', '.join(missing)} (expected 'id,lower,upper,size')")
    where = {c: header.index(c) for c in COLUMNS}
    buffers: list[Buffer] = []
    first_line: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            columns = ",".join(header)
            columns = columns if len(columns) <= 60 else columns[:60] + "..."
            raise BufferFileError(f"{name}:{line}: {len(row)} field(s), expected {len(header)} ({columns})")
        values: dict[str, int] = {}
        for column in ("lower", "upper", "size"):
            text = row[where[column]].strip()
            try:
                if len(text) > MAX_NUMBER_CHARS or not _ASCII_INT.fullmatch(text):
                    raise ValueError  # int() would also take '1_000' and other scripts' digits
                values[column] = int(text)
            except ValueError:
                raise BufferFileError(f"{name}:{line}: field {column!r} is {_cut(text)}, not an integer"
                                      + (" below 2**62" if _ASCII_INT.fullmatch(text) else "")) from None
            if not -MAX_VALUE < values[column] < MAX_VALUE:
                raise BufferFileError(f"{name}:{line}: field {column!r} ({values[column]}) is out of range: "
                                      f"lifetimes and sizes must be below 2**62 ({MAX_VALUE}) in magnitude")
        buffer_id = row[where["id"]].strip()
        if not buffer_id:
            raise BufferFileError(f"{name}:{line}: field 'id' is empty")
        if len(buffer_id) > MAX_ID_CHARS:
            raise BufferFileError(f"{name}:{line}: id {_cut(buffer_id)} is longer than {MAX_ID_CHARS} characters")
        if buffer_id in first_line:
            raise BufferFileError(f"{name}:{line}: id {_cut(buffer_id)} already used on line {first_line[buffer_id]}")
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
