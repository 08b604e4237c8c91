"""A fit's candidates as a Markdown table and a size-quality plot (from the manifest's `fit` block / fit.json)."""

from __future__ import annotations

from pathlib import Path


def frontier_markdown(fit: dict) -> str:
    b = fit["budget"]
    arm = any("arm_instructions" in c for c in fit["candidates"])
    lines = [f"Budget: max size {b['max_size_bytes'] / 1e6:g} MB"
             + (f", native RSS {b['max_rss_mb']:g} MB" if b.get("max_rss_mb") else "")
             + f", quality {fit['quality']} on {fit.get('data', '?')} (fp32 {fit['reference']['metric']} "
             f"{fit['reference']['value']:.2f}); {fit['measured']} measured of {fit['buildable']} buildable "
             f"({fit['searched']} in the space)"
             + (f"; ARM instructions per inference <= {b['max_arm_instructions'] / 1e6:.1f} M"
                + (f" ({b['max_arm_ratio']:g}x the target's plain export, {b['arm_baseline_instructions'] / 1e6:.1f} M)"
                   if b.get("max_arm_ratio") else "") if b.get("max_arm_instructions") else ""), "",
             "| candidate | size MB | native RSS MB | drop | latency p50 ms | " + ("ARM M instr | " if arm else "")
             + "frontier | chosen |",
             "|---|---:|---:|---:|---:|" + ("---:|" if arm else "") + ":-:|:-:|"]
    for c in fit["candidates"]:
        if c.get("lost"):
            lines.append(f"| {c['name']} | lost: {c['lost']} |")
        if not c["measured"]:
            continue
        instr = c.get("arm_instructions")
        lines.append(f"| {c['name']} | {c['size_bytes'] / 1e6:.2f} | {c['rss_mb'] if c['rss_mb'] is not None else '—'} | "
                     f"{c['quality_drop']:.2f} | {c['latency_ms'] if c['latency_ms'] is not None else '—'} | "
                     + (f"{instr / 1e6:.1f} | " if arm and instr else ("— | " if arm else ""))
                     + f"{'yes' if c['on_frontier'] else ''} | {'**yes**' if c['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def plot_frontier(fit: dict, png: Path) -> Path:
    """The report's fit chart (edgecomp.report.charts.fit_frontier) for a fit.json outside an export."""
    from ..manifest import save_figure_atomic
    from ..report.charts import fit_frontier

    manifest = {"model": {"name": fit["model"]}, "target": {"name": fit["target"]}, "fit": fit}
    save_figure_atomic(fit_frontier([(fit["model"], manifest)]), Path(png))
    return Path(png)
