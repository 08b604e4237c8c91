"""A fit's candidates as a Markdown table and a size-quality plot (from the manifest's `fit` block / fit.json)."""

from __future__ import annotations

from pathlib import Path


def frontier_markdown(fit: dict) -> str:
    b = fit["budget"]
    lines = [f"Budget: max size {b['max_size_bytes'] / 1e6:g} MB"
             + (f", native RSS {b['max_rss_mb']:g} MB" if b.get("max_rss_mb") else "")
             + f", quality {fit['quality']} on {fit.get('data', '?')} (fp32 {fit['reference']['metric']} "
             f"{fit['reference']['value']:.2f}); {fit['measured']} measured of {fit['buildable']} buildable "
             f"({fit['searched']} in the space)", "",
             "| candidate | size MB | native RSS MB | drop | latency p50 ms | frontier | chosen |",
             "|---|---:|---:|---:|---:|:-:|:-:|"]
    for c in fit["candidates"]:
        if not c["measured"]:
            continue
        lines.append(f"| {c['name']} | {c['size_bytes'] / 1e6:.2f} | {c['rss_mb'] if c['rss_mb'] is not None else '—'} | "
                     f"{c['quality_drop']:.2f} | {c['latency_ms'] if c['latency_ms'] is not None else '—'} | "
                     f"{'yes' if c['on_frontier'] else ''} | {'**yes**' if c['chosen'] else ''} |")
    return "\n".join(lines) + "\n"


def plot_frontier(fit: dict, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..manifest import save_figure_atomic

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    est = [c for c in fit["candidates"] if not c["measured"]]
    ax.scatter([c["size_bytes"] / 1e6 for c in est], [0] * len(est), marker="|", color="0.75",
               label="estimated only (size)")
    for c in fit["candidates"]:
        if c["measured"]:
            ax.scatter(c["size_bytes"] / 1e6, c["quality_drop"], s=60 if c["chosen"] else 30,
                       color="tab:red" if c["chosen"] else ("tab:blue" if c["on_frontier"] else "0.4"), zorder=3)
            ax.annotate(c["name"], (c["size_bytes"] / 1e6, c["quality_drop"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    ax.axvline(fit["budget"]["max_size_bytes"] / 1e6, color="tab:red", ls="--", lw=1, label="size budget")
    ax.axhline(fit["budget"]["max_drop"], color="tab:orange", ls="--", lw=1, label="quality floor")
    ax.set_xlabel("largest shipped artifact (MB)")
    ax.set_ylabel(f"{fit['reference']['metric']} drop vs fp32 (points)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure_atomic(fig, Path(png))
    return Path(png)
