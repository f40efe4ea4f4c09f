"""Reading a file a user hands memplan: bounded in size, UTF-8, every failure a typed one-line error.

Every reader of user files (``.mir``, ``.plan.json``, target specs, the CLI) starts here, so a
huge, binary or unreadable file fails the same way everywhere, before any parsing.
"""
from __future__ import annotations

from pathlib import Path

from memplan.errors import MemplanError


def short_path(path) -> str:
    """``path`` as text, cut to its last 200 characters for messages."""
    text = str(path)
    return text if len(text) <= 200 else "..." + text[-200:]


def read_text(path, limit: int, error: type[MemplanError], what: str) -> str:
    """The UTF-8 text of ``path``, at most ``limit`` bytes; ``error(message)`` naming the file and
    ``what`` it should hold if it cannot be read, is larger, or is not UTF-8 text."""
    where = short_path(path)
    try:
        with open(Path(path), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"{where}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise error(f"{where}: larger than the limit of {limit} bytes for {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    f"expected {what}") from None
