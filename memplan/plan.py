"""The Plan: the report of a planned IR, as plain data (JSON round-trip).

The planned graph is the plan (``docs/planned-ir.md``); a :class:`Plan` is
derived from it (:meth:`Plan.from_graph`) plus the solver records: ``schedule``
(the node order), ``placement`` (value -> tier, ``own`` or ``kernel``),
``allocation`` (per tier: value -> byte offset in that tier's storage) and
``stats`` (peaks per tier, lower bounds, per-pass and per-solve figures).
Nothing reads a Plan to run a model: the backend prints the planned IR.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from memplan.errors import PlanFormatError
from memplan.files import read_text, short_path
from memplan.units import format_bytes

PLAN_FORMAT = "memplan.plan/1"
MAX_PLAN_FILE_BYTES = 256 * 2**20
MAX_BYTES = 2**62            # offsets and byte counts are below this


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

    @staticmethod
    def from_graph(graph, check, records: dict | None = None, target: str = "") -> "Plan":
        """The report of planned ``graph``: ``check`` is what :func:`~memplan.analysis.check.verify_plan`
        found on it; ``records`` the planning passes' figures (solver statuses, bounds, timings)."""
        from memplan.ir.graph import SLOT
        records = dict(records or {})
        records.pop("check", None)
        stats = dict(records.pop("stats", {}))
        allocation: dict[str, dict[str, int]] = {}
        placement: dict[str, str] = {}
        for v in graph.values():
            if v.alloc is None or v.producer is None:
                continue
            if v.alloc.kind == SLOT:
                tier = graph.storages[v.alloc.storage].tier
                allocation.setdefault(tier, {})[v.name] = v.alloc.offset
                placement[v.name] = tier
            else:
                placement[v.name] = v.alloc.kind
        for tier in allocation:
            allocation[tier] = dict(sorted(allocation[tier].items(), key=lambda kv: kv[1]))
        main = check.main_tier
        outside = check.outside_profile.get(main, [0])
        scratch = {n.name: n.scratch for n in graph.nodes if n.scratch}
        derived = {
            "planned_peak_bytes": check.planned_peak_bytes,
            "arena_bytes": check.storage_bytes.get(main, 0),
            "outside_arena_bytes": max(outside, default=0),
            "resident_bytes": check.resident_bytes.get(main, 0),
            "memory_budget": graph.attrs.get("memory_budget"),
            "scratch_bytes": scratch,
            "buffers": {name: [a, b + 1, size] for name, (a, b, size) in check.live_ranges.items()
                        if name in placement and placement[name] not in ("own", "kernel")},
            "peaks_per_tier": dict(check.peak_bytes),
        }
        stats.update(derived)
        if records.get("pass_seconds"):
            stats["pass_seconds"] = dict(records["pass_seconds"])
        fusion_records = records.get("fusion") or {}
        if fusion_records.get("why_not_fused"):
            stats["why_not_fused"] = dict(fusion_records["why_not_fused"])
        fusion = {n.name: [m.name for m in n.subgraph.nodes] for n in graph.nodes
                  if n.subgraph is not None and n.op.startswith("memplan.")}
        return Plan(graph=graph.name, target=target or str(graph.attrs.get("target", "")),
                    schedule=[n.name for n in graph.nodes], fusion=fusion, placement=placement,
                    allocation=allocation, stats=stats)

    def why_not_fused(self, node: str) -> str:
        """Why node ``node`` (its name in the graph before fusion) is not part of a fused region, or
        which region it runs in."""
        name = getattr(node, "name", node)
        if name in self.fusion:
            return f"it is a fused region of {len(self.fusion[name])} nodes: {', '.join(self.fusion[name])}"
        for region, members in self.fusion.items():
            if name in members:
                return f"fused: it runs in region {region} with {len(members) - 1} other nodes"
        reasons = self.stats.get("why_not_fused", {})
        if name in reasons:
            return reasons[name]
        if name in self.schedule:
            return "not considered: the fuse pass did not run, or found no group for it"
        return f"no node {name!r} in graph {self.graph!r}"

    # ---- serialisation ----------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @staticmethod
    def from_dict(data: dict, where: str = "plan") -> "Plan":
        """A plan from plain data (a parsed ``.plan.json``), checked field by field.

        Raises :class:`~memplan.errors.PlanFormatError` naming ``where`` and the
        field at fault for anything that is not a well-formed plan: unknown or
        missing fields, wrong types, offsets or byte counts that are negative
        or >= 2**62, an allocation without ``stats.arena_bytes``.
        """
        return Plan(**_checked_fields(data, where))

    @staticmethod
    def load(path: str | Path) -> "Plan":
        """Read a ``.plan.json`` file (bounded size, UTF-8 JSON, then :meth:`from_dict`)."""
        path = Path(path)
        where = short_path(path)
        text = read_text(path, MAX_PLAN_FILE_BYTES, PlanFormatError, "a memplan plan (.plan.json)")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanFormatError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                                  f"column {exc.colno})") from None
        except RecursionError:
            raise PlanFormatError(f"{where}: not a plan: JSON nested too deeply") from None
        except ValueError as exc:   # e.g. an integer literal above Python's digit limit
            raise PlanFormatError(f"{where}: not valid JSON ({_cut(str(exc))})") from None
        return Plan.from_dict(data, where)

    # ---- reading ------------------------------------------------------------
    def summary(self) -> str:
        """A human-readable page: peak vs. baselines, what is live at the peak, pass timings."""
        s = self.stats
        lines = [f"plan for graph {self.graph!r} on target {self.target!r}: {len(self.schedule)} steps"]
        if "planned_peak_bytes" in s:
            lines.append(f"  planned peak            : {format_bytes(s['planned_peak_bytes'])} = storage "
                         f"{format_bytes(s['arena_bytes'])} + outside it "
                         f"{format_bytes(s['outside_arena_bytes'])} (outputs, kernel-owned values, scratch)")
        if "free_at_last_use_peak_bytes" in s:
            lines.append(f"  free-at-last-use peak   : {format_bytes(s['free_at_last_use_peak_bytes'])} "
                         "(every value allocated by its kernel, freed at its last use: eager's behaviour)")
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
        if s.get("modelled_seconds") is not None:
            lines.append(f"  modelled time (roofline): {s['modelled_seconds'] * 1000:.3f} ms on the target")
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


# ---- loading: the schema of a plan file ------------------------------------------------------------

class _Bad(Exception):
    """A field that breaks the schema: ``path`` (``stats.solves[2].gap``) and what is wrong."""

    def __init__(self, path: str, what: str):
        super().__init__(f"field {path!r} {what}")


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _brief(value) -> str:
    """A value from a plan file for an error message: its type and, when short, itself."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"the string {_cut(value)!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    return f"a {type(value).__name__}"


def _str(value, path):
    if not isinstance(value, str):
        raise _Bad(path, f"must be a string, got {_brief(value)}")
    return value


def _int(value, path):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(path, f"must be an integer, got {_brief(value)}")
    if not -MAX_BYTES < value < MAX_BYTES:
        raise _Bad(path, f"is out of range ({_brief(value)}; the limit is 2**62)")
    return value


def _bytes(value, path):
    """A byte count or offset: an int in [0, 2**62)."""
    _int(value, path)
    if value < 0:
        raise _Bad(path, f"must not be negative, got {value}")
    return value


def _number(value, path):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(path, f"must be a number, got {_brief(value)}")
    if isinstance(value, int):
        _int(value, path)
    return value


def _optional_bytes(value, path):
    return None if value is None else _bytes(value, path)


def _list_of(item):
    def check(value, path):
        if not isinstance(value, list):
            raise _Bad(path, f"must be a list, got {_brief(value)}")
        for k, v in enumerate(value):
            item(v, f"{path}[{k}]")
        return value
    return check


def _dict_of(item):
    """An object whose keys are strings and whose values pass ``item``."""
    def check(value, path):
        if not isinstance(value, dict):
            raise _Bad(path, f"must be an object, got {_brief(value)}")
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Bad(path, f"must have string keys, got {_brief(k)}")
            item(v, f"{path}.{_cut(k, 40)}")
        return value
    return check


def _record(required: dict, optional: dict | None = None):
    """An object with these fields (others allowed: passes add their own figures)."""
    def check(value, path):
        if not isinstance(value, dict):
            raise _Bad(path, f"must be an object, got {_brief(value)}")
        for name, item in required.items():
            if name not in value:
                raise _Bad(path, f"lacks its field {name!r}")
            item(value[name], f"{path}.{name}")
        for name, item in (optional or {}).items():
            if name in value:
                item(value[name], f"{path}.{name}")
        return value
    return check


def _anything(value, path):
    return value


def _buffer_triple(value, path):
    _list_of(_int)(value, path)
    if len(value) != 3:
        raise _Bad(path, f"must be [start, end, bytes], got a list of {len(value)} items")
    _bytes(value[2], f"{path}[2]")
    return value


# What the summary, the report, the checker and the backends read from ``stats``; other fields
# (a pass's own figures) are kept as they are.
STATS_FIELDS = {
    "peak_bytes": _bytes, "peak_step": _int, "peak_node": _str, "resident_bytes": _bytes,
    "live_at_peak": _list_of(_record({"value": _str, "bytes": _bytes, "start": _int, "end": _int},
                                     {"source": _str})),
    "topological_peak_bytes": _bytes, "heuristic_peak_bytes": _bytes, "lower_bound_bytes": _bytes,
    "live_profile": _list_of(_bytes), "topological_live_profile": _list_of(_bytes),
    "heuristic_peaks": _dict_of(_bytes), "scratch_bytes": _dict_of(_bytes),
    "solves": _list_of(_record({"pass": _str, "method": _str, "status": _str, "objective": _number,
                                "bound": _number, "gap": _number, "wall_s": _number})),
    "arena_bytes": _bytes, "arena_lower_bound_bytes": _bytes, "outside_arena_bytes": _bytes,
    "planned_peak_bytes": _bytes, "memory_budget": _optional_bytes, "free_at_last_use_peak_bytes": _bytes,
    "buffers": _dict_of(_buffer_triple), "pass_seconds": _dict_of(_number), "joint": _dict_of(_anything),
    "peaks_per_tier": _dict_of(_bytes), "why_not_fused": _dict_of(_str), "modelled_seconds": _number,
}

PLAN_FIELDS = {
    "graph": _str, "target": _str,
    "schedule": _list_of(_str),
    "fusion": _dict_of(_list_of(_str)),
    "tiling": _dict_of(_dict_of(_anything)),
    "placement": _dict_of(_str),
    "allocation": _dict_of(_dict_of(_bytes)),
    "stats": _record({}, STATS_FIELDS),
}


def _checked_fields(data, where: str) -> dict:
    """The fields of a plan (``format`` removed), each checked against :data:`PLAN_FIELDS`."""
    if not isinstance(data, dict):
        raise PlanFormatError(f"{where}: a plan must be a JSON object, got {_brief(data)}")
    fields = dict(data)
    fmt = fields.pop("format", PLAN_FORMAT)
    if fmt != PLAN_FORMAT:
        shown = repr(_cut(fmt)) if isinstance(fmt, str) else _brief(fmt)
        raise PlanFormatError(f"{where}: plan format {shown} is not {PLAN_FORMAT!r}")
    unknown = [k for k in fields if k not in PLAN_FIELDS]
    if unknown:
        raise PlanFormatError(f"{where}: unknown field {_cut(str(unknown[0]))!r}; a plan has "
                              f"format, {', '.join(PLAN_FIELDS)}")
    for name in ("graph", "target"):
        if name not in fields:
            raise PlanFormatError(f"{where}: missing field {name!r}")
    try:
        for name, value in fields.items():
            PLAN_FIELDS[name](value, name)
    except _Bad as bad:
        raise PlanFormatError(f"{where}: {bad}") from None
    stats = fields.get("stats", {})
    if fields.get("allocation") and "arena_bytes" not in stats:
        raise PlanFormatError(f"{where}: the plan allocates buffers but field 'stats.arena_bytes' (the arena's "
                              "size) is missing")
    if "planned_peak_bytes" in stats:
        for name in ("arena_bytes", "outside_arena_bytes"):
            if name not in stats:
                raise PlanFormatError(f"{where}: field 'stats.planned_peak_bytes' is given without "
                                      f"'stats.{name}'")
    return fields
