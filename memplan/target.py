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
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memplan.errors import BudgetFormatError, TargetError
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


def load_target(target: str | Path | HardwareSpec | dict) -> HardwareSpec:
    """Resolve a preset name, a YAML/JSON spec file, a dict or a spec to a :class:`HardwareSpec`.

    >>> load_target("h100").main_tier.name
    'hbm'
    """
    if isinstance(target, HardwareSpec):
        return target
    if isinstance(target, dict):
        return _from_dict(target, where="<dict>")
    text = str(target)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise TargetError(f"target file {text!r} does not exist")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(path.read_text())
            else:
                import yaml
                data = yaml.safe_load(path.read_text())
        except Exception as exc:  # parse errors of either format
            raise TargetError(f"target file {text!r} is not valid {path.suffix[1:].upper()}: "
                              f"{str(exc).splitlines()[0]}") from None
        return _from_dict(data, where=text)
    raise TargetError(f"unknown target {text!r}; presets: {', '.join(sorted(PRESETS))}, "
                      "or a .yaml/.json spec file")


def _from_dict(data, where: str) -> HardwareSpec:
    if not isinstance(data, dict):
        raise TargetError(f"target {where}: expected a mapping with 'name' and 'tiers'")
    try:
        tiers = data["tiers"]
        if not tiers:
            raise TargetError(f"target {where}: 'tiers' is empty; give at least one memory tier")
        built = tuple(
            MemoryTier(str(t["name"]), parse_bytes(t["capacity"], what=f"target {where} tier {t['name']} capacity"),
                       float(parse_bytes(t["bandwidth"], what=f"target {where} tier {t['name']} bandwidth")))
            for t in tiers)
        flops = {str(k): float(v) for k, v in (data.get("flops") or {}).items()}
        return HardwareSpec(str(data.get("name", Path(where).stem)), built, flops,
                            float(data.get("launch_overhead_s", 5e-6)),
                            int(data.get("max_threads_per_block", 1024)))
    except KeyError as exc:
        raise TargetError(f"target {where}: missing field {exc.args[0]!r} "
                          "(a tier needs name, capacity, bandwidth)") from None
    except (TypeError, ValueError, BudgetFormatError) as exc:
        raise TargetError(f"target {where}: {exc}") from None
