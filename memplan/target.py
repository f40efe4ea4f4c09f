"""Hardware targets: memory tiers, compute peaks and a roofline cost model.

A target is plain data. Presets are looked up by name (``memplan targets``
lists them); a YAML or JSON file with the same fields describes any other
machine::

    name: my-npu
    tiers:
      - {name: sram, capacity: 2MiB, bandwidth: 200GB}
      - {name: dram, capacity: 4GiB, bandwidth: 25GB}
    flops: {float32: 1.0e12, float16: 4.0e12}
    launch_overhead_s: 2.0e-6

Tier 0 is the fastest tier; the last tier is the main memory that holds
weights and graph inputs by default.

A spec file is data a user hands memplan, so it is read defensively: at most
``MAX_SPEC_BYTES``, YAML without aliases, each field of its documented type
(``name``: a short string; ``tiers``: 1 to 16 mappings of ``name`` (an
identifier), ``capacity`` (bytes), ``bandwidth`` (bytes/s); ``flops``: dtype
name -> FLOP/s; ``launch_overhead_s``: seconds; ``max_threads_per_block``: a
positive int), and errors quote at most a few dozen characters of it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memplan.errors import BudgetFormatError, TargetError
from memplan.files import read_text, short_path
from memplan.units import parse_bytes


@dataclass(frozen=True)
class MemoryTier:
    """One level of memory: its capacity in bytes and bandwidth in bytes/s."""

    name: str
    capacity: int
    bandwidth: float


@dataclass(frozen=True)
class HardwareSpec:
    """A machine as the planner sees it (tiers fastest first, peaks in FLOP/s)."""

    name: str
    tiers: tuple[MemoryTier, ...]
    flops: dict[str, float] = field(default_factory=dict)
    launch_overhead_s: float = 5e-6
    max_threads_per_block: int = 1024

    @property
    def main_tier(self) -> MemoryTier:
        """The largest, slowest tier: where weights, inputs and the arena live by default."""
        return self.tiers[-1]

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s for ``dtype`` (falls back to the float32 figure)."""
        return self.flops.get(dtype, self.flops.get("float32", 1e11))

    def roofline_seconds(self, flops: float, bytes_moved: float, dtype: str = "float32",
                         tier: int | None = None) -> float:
        """Estimated time of one kernel: max(compute, memory traffic) plus launch overhead."""
        bandwidth = (self.tiers[tier] if tier is not None else self.main_tier).bandwidth
        return max(flops / self.peak_flops(dtype), bytes_moved / bandwidth) + self.launch_overhead_s

    def to_dict(self) -> dict:
        """Plain-data form (what YAML/JSON spec files contain)."""
        return asdict(self)


def _spec(name, tiers, flops, launch=5e-6):
    return HardwareSpec(name, tuple(MemoryTier(n, parse_bytes(c, what=f"capacity of tier {n}"), float(b))
                                    for n, c, b in tiers), dict(flops), launch)


PRESETS: dict[str, HardwareSpec] = {
    "cpu": _spec("cpu", [("dram", "24GiB", 20e9)], {"float32": 1.5e11, "float64": 0.75e11}, 2e-6),
    "h100": _spec("h100", [("smem", "50MiB", 30e12), ("hbm", "80GiB", 3.35e12)],
                  {"float32": 67e12, "tf32": 495e12, "bfloat16": 989e12, "float16": 989e12}, 4e-6),
    "a100": _spec("a100", [("smem", "40MiB", 19e12), ("hbm", "80GiB", 2.0e12)],
                  {"float32": 19.5e12, "tf32": 156e12, "bfloat16": 312e12, "float16": 312e12}, 4e-6),
    "rtx4090": _spec("rtx4090", [("l2", "72MiB", 5e12), ("gddr", "24GiB", 1.0e12)],
                     {"float32": 82.6e12, "float16": 165e12, "bfloat16": 165e12}, 4e-6),
    "mcu": _spec("mcu", [("sram", "512KiB", 0.4e9), ("flash", "2MiB", 0.1e9)],
                 {"float32": 0.2e9, "int8": 0.8e9}, 1e-6),
}


MAX_SPEC_BYTES = 256 * 1024     # a target file
MAX_TIERS = 16
MAX_FLOPS_ENTRIES = 64
MAX_NAME_CHARS = 128              # the target's name, a dtype name in ``flops``
MAX_YAML_DEPTH = 16               # nesting of YAML collections
MAX_YAML_NODES = 10_000
MAX_THREADS_PER_BLOCK = 2**16
FIELDS = ("name", "tiers", "flops", "launch_overhead_s", "max_threads_per_block")
TIER_FIELDS = ("name", "capacity", "bandwidth")
_TIER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def load_target(target: str | Path | HardwareSpec | dict) -> HardwareSpec:
    """Resolve a preset name, a YAML/JSON spec file, a dict or a spec to a :class:`HardwareSpec`.

    A spec file is untrusted data: it is read with bounded size, YAML aliases
    are refused (no "billion laughs"), and every field must have its
    documented type (see the module docstring); anything else is a one-line
    :class:`~memplan.errors.TargetError`.

    >>> load_target("h100").main_tier.name
    'hbm'
    """
    if isinstance(target, HardwareSpec):
        return target
    if isinstance(target, dict):
        return _from_dict(target, where="<dict>")
    if not isinstance(target, (str, Path)):
        raise TargetError(f"target must be a preset name, a spec file, a dict or a HardwareSpec, "
                          f"got {type(target).__name__}")
    text = str(target)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return _from_dict(_read_spec_file(path), where=short_path(text), default_name=path.stem)
    raise TargetError(f"unknown target {_brief(text)}; presets: {', '.join(sorted(PRESETS))}, "
                      "or a .yaml/.json spec file")


def _read_spec_file(path: Path):
    where = short_path(path)
    if not path.is_file():
        raise TargetError(f"target file {where!r} does not exist")
    text = read_text(path, MAX_SPEC_BYTES, TargetError, "a target spec (YAML or JSON)")
    kind = path.suffix[1:].upper()
    if kind == "YML":
        kind = "YAML"
    try:
        return json.loads(text) if kind == "JSON" else _load_yaml(text)
    except RecursionError:
        raise TargetError(f"target file {where} is not valid {kind}: nested too deeply") from None
    except TargetError as exc:
        raise TargetError(f"target file {where} is not valid {kind}: {exc}") from None
    except Exception as exc:  # parse errors of either format (json.JSONDecodeError, yaml.YAMLError, ...)
        raise TargetError(f"target file {where} is not valid {kind}: {_parse_error(exc)}") from None


def _load_yaml(text: str):
    """``yaml.safe_load`` that refuses aliases and bounds the nesting and number of nodes."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        nodes = depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise TargetError(f"YAML aliases (*name) are not accepted, line {mark.line + 1}")
            self.nodes += 1
            if self.nodes > MAX_YAML_NODES:
                raise TargetError(f"more than {MAX_YAML_NODES} YAML nodes")
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise TargetError(f"YAML nested deeper than {MAX_YAML_DEPTH}")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_error(exc: Exception) -> str:
    problem = getattr(exc, "problem", None)       # yaml.MarkedYAMLError
    mark = getattr(exc, "problem_mark", None)
    if problem is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return _cut(f"{problem}{where}")
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    lines = str(exc).splitlines()
    return _cut(lines[0] if lines else type(exc).__name__)


def _cut(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _brief(value) -> str:
    """A value from a spec file, for an error message: never the whole of a big one."""
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a value of type {type(value).__name__}"


def _number(value, what: str, *, positive: bool) -> float:
    """A finite float from an int, a float or a decimal string (YAML 1.1 reads ``1.0e12`` as one)."""
    if isinstance(value, str) and len(value) <= 40 and _DECIMAL.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TargetError(f"{what} must be a number, got {_brief(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise TargetError(f"{what} is out of range ({_brief(value)})") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise TargetError(f"{what} must be a finite {'positive' if positive else 'non-negative'} number, "
                          f"got {_brief(value)}")
    return number


def _name(value, what: str) -> str:
    if not isinstance(value, str):
        raise TargetError(f"{what} must be a string, got {_brief(value)}")
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise TargetError(f"{what} must be 1 to {MAX_NAME_CHARS} printable characters, got {_brief(value)}")
    return value


def _from_dict(data, where: str, default_name: str = "target") -> HardwareSpec:
    if not isinstance(data, dict):
        raise TargetError(f"target {where}: expected a mapping with 'name' and 'tiers', got {_brief(data)}")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise TargetError(f"target {where}: unknown field {_brief(unknown[0])}; fields are {', '.join(FIELDS)}")
    if "tiers" not in data:
        raise TargetError(f"target {where}: missing field 'tiers' (a list of memory tiers, fastest first)")
    tiers = data["tiers"]
    if not isinstance(tiers, (list, tuple)):       # a tuple from HardwareSpec.to_dict()
        raise TargetError(f"target {where}: 'tiers' must be a list of memory tiers, got {_brief(tiers)}")
    if not tiers:
        raise TargetError(f"target {where}: 'tiers' is empty; give at least one memory tier")
    if len(tiers) > MAX_TIERS:
        raise TargetError(f"target {where}: {len(tiers)} tiers, more than the limit of {MAX_TIERS}")
    built = tuple(_tier(t, k, where) for k, t in enumerate(tiers))
    names = [t.name for t in built]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise TargetError(f"target {where}: tier name {duplicate!r} is used twice")
    flops = data.get("flops", {})
    if flops is None:
        flops = {}
    if not isinstance(flops, dict):
        raise TargetError(f"target {where}: 'flops' must be a mapping of dtype name to FLOP/s, got {_brief(flops)}")
    if len(flops) > MAX_FLOPS_ENTRIES:
        raise TargetError(f"target {where}: 'flops' has {len(flops)} entries, more than the limit of "
                          f"{MAX_FLOPS_ENTRIES}")
    peaks = {_name(k, f"target {where}: a dtype name in 'flops'"):
             _number(v, f"target {where}: flops of {_brief(k)}", positive=True) for k, v in flops.items()}
    name = (_name(data["name"], f"target {where}: 'name'") if "name" in data
            else _name(default_name[:MAX_NAME_CHARS] or "target", f"target {where}: the name from the file name"))
    launch = _number(data.get("launch_overhead_s", 5e-6), f"target {where}: 'launch_overhead_s'", positive=False)
    threads = data.get("max_threads_per_block", 1024)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS_PER_BLOCK:
        raise TargetError(f"target {where}: 'max_threads_per_block' must be an int in 1..{MAX_THREADS_PER_BLOCK}, "
                          f"got {_brief(threads)}")
    return HardwareSpec(name, built, peaks, launch, threads)


def _tier(tier, k: int, where: str) -> MemoryTier:
    if not isinstance(tier, dict):
        raise TargetError(f"target {where}: tier {k} must be a mapping with name, capacity, bandwidth, "
                          f"got {_brief(tier)}")
    unknown = [f for f in tier if f not in TIER_FIELDS]
    if unknown:
        raise TargetError(f"target {where}: tier {k} has unknown field {_brief(unknown[0])}; "
                          f"a tier has {', '.join(TIER_FIELDS)}")
    missing = [f for f in TIER_FIELDS if f not in tier]
    if missing:
        raise TargetError(f"target {where}: tier {k} is missing field {missing[0]!r} "
                          "(a tier needs name, capacity, bandwidth)")
    name = tier["name"]
    if not isinstance(name, str) or not _TIER_NAME.fullmatch(name):
        raise TargetError(f"target {where}: tier {k} name must be an identifier of at most 64 characters "
                          f"(letters, digits, _), got {_brief(name)}")
    try:
        capacity = parse_bytes(tier["capacity"], what=f"target {where} tier {name} capacity")
        bandwidth = tier["bandwidth"]
        if isinstance(bandwidth, str):
            bandwidth = parse_bytes(bandwidth, what=f"target {where} tier {name} bandwidth")
    except BudgetFormatError as exc:
        raise TargetError(str(exc)) from None
    if capacity <= 0:
        raise TargetError(f"target {where} tier {name} capacity must be positive, got {capacity}")
    return MemoryTier(name, capacity, _number(bandwidth, f"target {where} tier {name} bandwidth", positive=True))
