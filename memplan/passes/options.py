"""Typed pass options: each pass declares its options as a dataclass; user options are checked
against the passes of the pipeline before anything runs.

Options reach passes as one flat mapping (``memplan.compile(..., options={...})``, ``memplan lower
--option key=value``): every key must be a field of the options of some pass in the pipeline, and
its value must have that field's type (a ``Literal`` field takes one of its choices). Text values
from the command line are converted by the field's type. Errors are one line naming the option,
the value and what is valid.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

from memplan.errors import MemplanError


def option_fields(options_type) -> list[dataclasses.Field]:
    """The fields of an options dataclass (none for a pass without options)."""
    return list(dataclasses.fields(options_type)) if options_type is not None else []


def _hints(options_type) -> dict[str, Any]:
    return typing.get_type_hints(options_type)


def describe_type(hint) -> str:
    """``bool``, ``float``, ``int or none``, ``one of auto, exact``: how a type reads in a message."""
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, get_args(hint)))
    args = [a for a in get_args(hint) if a is not type(None)]
    if args and len(args) < len(get_args(hint)):  # Optional[X]
        return f"{describe_type(args[0])} or none"
    return getattr(hint, "__name__", str(hint))


def coerce(name: str, value, hint):
    """``value`` as an option of type ``hint`` (text from the command line converted); raises
    :class:`MemplanError` naming the option when it cannot be."""
    shown = repr(value) if not isinstance(value, str) else repr(value[:60])
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value in choices:
            return value
        raise MemplanError(f"option {name}={shown}: must be one of {', '.join(map(str, choices))}")
    args = get_args(hint)
    if type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            return None
        return coerce(name, value, next(a for a in args if a is not type(None)))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 30:
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and len(value) < 40:
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise MemplanError(f"option {name}={shown}: must be {describe_type(hint)}")


def check_options(passes, options: dict) -> dict:
    """``options`` checked against the options dataclasses of ``passes`` (registered
    :class:`~memplan.passes.manager.Pass` objects); returns them with every value converted and
    every default of those passes filled in."""
    fields: dict[str, tuple[Any, Any]] = {}  # option -> (type, default)
    for p in passes:
        if p.options is None:
            continue
        hints = _hints(p.options)
        for f in option_fields(p.options):
            default = f.default if f.default is not dataclasses.MISSING else None
            fields.setdefault(f.name, (hints[f.name], default))
    checked = {}
    for name, value in options.items():
        if name not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise MemplanError(f"unknown option {str(name)[:60]!r} for this pipeline; its passes take: {valid} "
                               "(see `memplan passes`)")
        checked[name] = coerce(name, value, fields[name][0])
    for name, (_hint, default) in fields.items():
        checked.setdefault(name, default)
    return checked


def parse_option_text(text: str) -> tuple[str, str]:
    """``key=value`` from the command line."""
    if "=" not in text:
        raise MemplanError(f"--option {text[:60]!r}: write key=value (see `memplan passes` for the options)")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
