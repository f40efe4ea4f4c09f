"""Byte quantities: parsing ``"2GiB"`` and printing ``2.00 GiB``."""
from __future__ import annotations

import math
import re
from fractions import Fraction

from memplan.errors import BudgetFormatError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


MAX_BYTES = 2**62                  # no memory or arena is larger; above it is a typo or hostile text
MAX_BYTES_TEXT = 64                # characters of a byte-count string


def parse_bytes(value: int | str, *, what: str = "memory budget") -> int:
    """Read a byte count from an int or a string such as ``"512KiB"``.

    Counts are at most :data:`MAX_BYTES` (2**62); anything else that is not
    a byte count (negative, NaN, infinite, fractional bytes, too long a
    string) is a :class:`~memplan.errors.BudgetFormatError` naming ``what``.

    >>> parse_bytes("2GiB"), parse_bytes("1.5 MB"), parse_bytes(4096)
    (2147483648, 1500000, 4096)
    """
    if isinstance(value, bool):
        raise BudgetFormatError(f"{what}: expected bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BudgetFormatError(f"{what}: {_brief_int(value)} is negative")
        return _capped(value, what)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or not value.is_integer():
            raise BudgetFormatError(f"{what}: {value!r} is not a whole, non-negative, finite number of bytes")
        return _capped(int(value), what)
    if not isinstance(value, str):
        raise BudgetFormatError(f"{what}: expected an int or a string like '2GiB', got {type(value).__name__}")
    if len(value) > MAX_BYTES_TEXT:
        raise BudgetFormatError(f"{what}: {value[:20]!r}... is longer than {MAX_BYTES_TEXT} characters; "
                                f"the largest count accepted is {MAX_BYTES} bytes (2**62)")
    match = _PATTERN.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise BudgetFormatError(
            f"{what}: cannot read {value!r} as bytes; write e.g. 1048576, '512KiB', '2GiB', '1.5GB' "
            f"(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    number = Fraction(match.group(1)) * _UNITS[match.group(2).lower()]
    if number.denominator != 1 and _UNITS[match.group(2).lower()] == 1:
        # '1.5' or '1.5 B': a fraction of a byte is a mistake; '0.3 MiB' rounds down to whole bytes
        raise BudgetFormatError(f"{what}: {value!r} is not a whole number of bytes")
    return _capped(int(number), what, value)


def _capped(n: int, what: str, text: str | None = None) -> int:
    if n > MAX_BYTES:
        shown = repr(text) if text is not None else _brief_int(n)
        raise BudgetFormatError(f"{what}: {shown} is above the limit of {MAX_BYTES} bytes (2**62)")
    return n


def _brief_int(n: int) -> str:
    return str(n) if n.bit_length() <= 128 else f"an integer of {n.bit_length()} bits"


def format_bytes(n: int | float) -> str:
    """Print a byte count with a binary unit: ``format_bytes(3*2**20) == '3.00 MiB'``."""
    if isinstance(n, int) and n.bit_length() > 1000:     # beyond a float: never a real size
        return f"~2**{n.bit_length() - 1} B"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
