"""comparison.md: several exports side by side (the rows of `edgecomp bench A B`, read from the
manifests, not re-measured), with the comparison charts."""

from __future__ import annotations

from ..bench.compare import COLUMNS, comparison_rows, table_cells
from .markdown import _chart_lines, _fmt, _tidy, table


def render_comparison(exports, charts: dict) -> str:
    lines = ["# edgecomp report: exports side by side", "",
             "Figures as each manifest recorded them (`edgecomp bench A B` re-measures them in one run). Ratios are "
             "against the first export's artifact of the same format.", ""]
    lines += table(["export", "model", "target", "recipe", "created", "measured on"],
                   [[f"`{d}`", m["model"]["name"], m["target"]["name"], (m.get("recipe") or {}).get("name", "—"),
                     m.get("created", "—"), f"{(m.get('host') or {}).get('machine', '?')} "
                                            f"({(m.get('host') or {}).get('cpus', '?')} CPUs)"] for d, m in exports])
    rows = comparison_rows(exports)
    lines += ["## Artifacts"]
    lines += table(list(COLUMNS), [[f"`{c}`" if i in (0, 2) else c for i, c in enumerate(table_cells(r))] for r in rows])
    tasks = sorted({t for _, m in exports for t in (m.get("task_eval") or {})})
    for task in tasks:
        out = []
        for d, m in exports:
            spec = (m.get("task_eval") or {}).get(task)
            if not spec:
                continue
            ref = spec.get("reference") or {}
            out.append([f"`{d}`", ref.get("name", "pytorch-fp32"), _fmt(ref.get("value"), 2), "—"])
            for a in m["artifacts"]:
                r = ((a.get("metrics") or {}).get("task") or {}).get(task)
                if r:
                    out.append([f"`{d}`", f"`{a['path']}`", _fmt(r.get("value"), 2), _fmt(r.get("drop"), 2)])
        lines += ["", f"## Task quality: {task}"]
        lines += table(["export", "model", "value", "drop (points)"], out)
    for prefix, title in (("quality-", None), ("size", "Size breakdown"), ("native", "Native memory"),
                          ("arm64", "ARM64 (emulated)"), ("early-exit", "Early exit"), ("fit", "Fit")):
        chart = _chart_lines(charts, prefix)
        if chart:
            lines += ([f"## {title}"] if title else ["## Quality against size and latency"]) + chart
    return _tidy(lines)
