"""Pictures of a plan: the memory timeline before/after and the arena layout (PNG + HTML).

Everything drawn comes from the plan's own data (``plan.stats``), so a saved
``.plan.json`` can be drawn again without the model::

    memplan lower model.onnx --emit report -o out/   # out/model.report.png, out/model.report.html
    cm.plan.plot("plan.png")
"""
from __future__ import annotations

import html
from pathlib import Path

from memplan.units import format_bytes

MiB = 2**20


def _unit(peak: int) -> tuple[float, str]:
    return (MiB, "MiB") if peak >= MiB else (1024, "KiB") if peak >= 1024 else (1, "B")


def plot_plan(plan, path: str | Path) -> Path:
    """Draw the plan to ``path`` (PNG): live bytes per step (eager order vs. memplan) and the arena."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    s = plan.stats
    after = s.get("live_profile", [])
    before = s.get("topological_live_profile", [])
    buffers = s.get("buffers", {})
    offsets = {name: off for tier in plan.allocation.values() for name, off in tier.items()}
    peak = max([*before, *after, s.get("arena_bytes", 0), 1])
    scale, unit = _unit(peak)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.3]})
    steps = range(len(after))
    if before:
        top.step(range(len(before)), [b / scale for b in before], where="post", color="#c44e52",
                 label=f"topological order (eager): peak {format_bytes(max(before))}")
    if after:
        top.step(steps, [a / scale for a in after], where="post", color="#4c72b0",
                 label=f"memplan order: peak {format_bytes(max(after))}")
    if "lower_bound_bytes" in s:
        top.axhline(s["lower_bound_bytes"] / scale, color="gray", ls=":", label=f"lower bound {format_bytes(s['lower_bound_bytes'])}")
    top.set_ylabel(f"live bytes ({unit})")
    top.set_title(f"{plan.graph} on {plan.target}: memory timeline")
    top.legend(loc="upper right", fontsize=8)

    rects = []
    for name, (lo, hi, size) in buffers.items():
        if name in offsets and size:
            rects.append(Rectangle((lo, offsets[name] / scale), hi - lo, size / scale))
    if rects:
        bottom.add_collection(PatchCollection(rects, facecolor="#55a868", edgecolor="#2d5f3a", linewidth=0.4,
                                              alpha=0.8))
    arena = s.get("arena_bytes", 0)
    bottom.axhline(arena / scale, color="black", lw=1, label=f"storage {format_bytes(arena)}")
    bottom.set_xlim(0, max(len(after), 1))
    bottom.set_ylim(0, max(arena, 1) / scale * 1.05)
    bottom.set_xlabel("schedule step")
    bottom.set_ylabel(f"storage offset ({unit})")
    bottom.set_title(f"storage layout: {len(rects)} slots (time x address)")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(plan, directory: str | Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.report.png`` and ``<stem>.report.html`` (the summary, the picture, the largest buffers)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = plot_plan(plan, directory / f"{stem}.report.png")
    rows = "".join(
        f"<tr><td>%{html.escape(item['value'])}</td><td>{format_bytes(item['bytes'])}</td>"
        f"<td>{item['start']}..{item['end']}</td><td>{html.escape(item.get('source', ''))}</td></tr>"
        for item in plan.stats.get("live_at_peak", []))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>memplan plan: {html.escape(plan.graph)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} pre{{background:#f6f6f6;padding:1em}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px}}</style></head>
<body><h1>memplan plan: {html.escape(plan.graph)} on {html.escape(plan.target)}</h1>
<pre>{html.escape(plan.summary())}</pre>
<img src="{png.name}" alt="memory timeline and arena layout" style="width:100%">
<h2>Largest buffers live at the peak</h2>
<table><tr><th>value</th><th>bytes</th><th>steps</th><th>source</th></tr>{rows}</table>
</body></html>
"""
    page_path = directory / f"{stem}.report.html"
    page_path.write_text(page)
    return png, page_path
