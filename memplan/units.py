"""Byte quantities: parsing ``"2GiB"`` and printing ``2.00 GiB``."""
from __future__ import annotations

import re

from memplan.errors import BudgetFormatError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | str, *, what: str = "memory budget") -> int:
    """Read a byte count from an int or a string such as ``"512KiB"``.

    >>> parse_bytes("2GiB"), parse_bytes("1.5 MB"), parse_bytes(4096)
    (2147483648, 1500000, 4096)
    """
    if isinstance(value, bool):
        raise BudgetFormatError(f"{what}: expected bytes, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BudgetFormatError(f"{what}: {value} is negative")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if not isinstance(value, str):
        raise BudgetFormatError(f"{what}: expected an int or a string like '2GiB', got {value!r}")
    match = _PATTERN.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise BudgetFormatError(
            f"{what}: cannot read {value!r} as bytes; write e.g. 1048576, '512KiB', '2GiB', '1.5GB' "
            f"(units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    number = float(match.group(1)) * _UNITS[match.group(2).lower()]
    return int(number)


def format_bytes(n: int | float) -> str:
    """Print a byte count with a binary unit: ``format_bytes(3*2**20) == '3.00 MiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
