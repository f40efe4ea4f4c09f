"""The Plan: everything the pipeline decides, as plain data (JSON round-trip).

See ``shared/DESIGN.md``: ``schedule`` (node order), ``fusion``, ``tiling``,
``placement``, ``allocation`` (per tier: buffer -> byte offset) and
``stats`` (peaks, lower bound, per-pass and per-solve timings).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memplan.units import format_bytes

PLAN_FORMAT = "memplan.plan/1"


@dataclass
class Plan:
    graph: str
    target: str
    schedule: list[str] = field(default_factory=list)
    fusion: dict[str, list[str]] = field(default_factory=dict)
    tiling: dict[str, dict] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)
    allocation: dict[str, dict[str, int]] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    # ---- serialisation ----------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @staticmethod
    def from_dict(data: dict) -> "Plan":
        data = dict(data)
        fmt = data.pop("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise ValueError(f"plan format {fmt!r} is not {PLAN_FORMAT!r}")
        return Plan(**data)

    @staticmethod
    def load(path: str | Path) -> "Plan":
        return Plan.from_dict(json.loads(Path(path).read_text()))

    # ---- reading ------------------------------------------------------------
    def summary(self) -> str:
        """A human-readable page: peak vs. baselines, what is live at the peak, pass timings."""
        s = self.stats
        lines = [f"plan for graph {self.graph!r} on target {self.target!r}: {len(self.schedule)} steps"]
        if "planned_peak_bytes" in s:
            lines.append(f"  planned peak            : {format_bytes(s['planned_peak_bytes'])} = arena "
                         f"{format_bytes(s['arena_bytes'])} + outside the arena "
                         f"{format_bytes(s['outside_arena_bytes'])} (outputs, scratch)")
        if "peak_bytes" in s:
            lines.append(f"  live-bytes peak of order: {format_bytes(s['peak_bytes'])} "
                         f"(at step {s.get('peak_step')}, {s.get('peak_node', '')})")
        if "topological_peak_bytes" in s:
            lines.append(f"  topological-order peak  : {format_bytes(s['topological_peak_bytes'])} "
                         f"(eager order){_saved(s['topological_peak_bytes'], s.get('peak_bytes'))}")
        if "heuristic_peak_bytes" in s:
            lines.append(f"  best heuristic order    : {format_bytes(s['heuristic_peak_bytes'])}")
        if "lower_bound_bytes" in s:
            lines.append(f"  lower bound (any order) : {format_bytes(s['lower_bound_bytes'])}")
        if "arena_lower_bound_bytes" in s:
            lines.append(f"  arena lower bound       : {format_bytes(s['arena_lower_bound_bytes'])} "
                         "(max bytes live at once in this order)")
        if "resident_bytes" in s:
            lines.append(f"  inputs + weights        : {format_bytes(s['resident_bytes'])} (resident)")
        if "memory_budget" in s and s["memory_budget"] is not None:
            lines.append(f"  memory budget           : {format_bytes(s['memory_budget'])}")
        if s.get("live_at_peak"):
            lines.append("  largest buffers live at the peak:")
            for item in s["live_at_peak"][:5]:
                lines.append(f"    %{item['value']:<24} {format_bytes(item['bytes']):>12}  "
                             f"steps {item['start']}..{item['end']}  {item.get('source', '')}")
        for solve in s.get("solves", []):
            lines.append(f"  solver {solve['pass']:<9}: {solve['method']}, {solve['status']}, objective "
                         f"{format_bytes(solve['objective'])}, bound {format_bytes(solve['bound'])}, "
                         f"gap {100 * solve['gap']:.2f}%, {solve['wall_s'] * 1000:.0f} ms")
        if s.get("pass_seconds"):
            lines.append("  compile time per pass:")
            for name, sec in s["pass_seconds"].items():
                lines.append(f"    {name:<16} {sec * 1000:9.1f} ms")
        return "\n".join(lines)

    def plot(self, path) -> Path:
        """Draw the memory timeline (eager order vs. this plan) and the arena layout to a PNG."""
        from memplan.report import plot_plan
        return plot_plan(self, path)

    def __str__(self) -> str:
        return self.summary()


def _saved(before: int, after: int | None) -> str:
    if after is None or before <= 0 or after >= before:
        return ""
    return f"; memory reduced from {format_bytes(before)} to {format_bytes(after)} (-{100 * (1 - after / before):.1f}%)"
