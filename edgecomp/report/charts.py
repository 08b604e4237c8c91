"""The report's charts, from manifests only: one function per chart, each returning a matplotlib figure or
None when the manifests hold nothing for it (a section absent from a manifest is not drawn).

Every chart takes ``exports``: (label, manifest) pairs. A single-export report passes one pair; a
comparison report several, and points are then named ``label: artifact``.
"""

from __future__ import annotations

from ..bench.size import COMPONENTS
from .peers import peer_figures

BAR_COLORS = {"token_embeddings": "#4c72b0", "attention": "#dd8452", "feed_forward": "#55a868",
              "norms_other": "#8172b3", "graph_and_metadata": "#937860"}
MEMORY_COLORS = {"anon_mb": "#4c72b0", "file_mb": "#dd8452", "shmem_mb": "#55a868"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _name(label: str, path: str, several: bool) -> str:
    return f"{label}: {path}" if several else path


def _measured(exports):
    """Every measured artifact (early-exit stages take hidden states: they have no figures of their own)."""
    several = len(exports) > 1
    for label, m in exports:
        for a in m.get("artifacts", []):
            if a.get("role") == "early-exit-stage":
                continue
            yield _name(label, a["path"], several), a, m


def size_breakdown(exports):
    """Bytes per component, one bar per artifact (the primary one included) and the PyTorch reference;
    the legend sits below the bars, never on them."""
    several = len(exports) > 1
    rows = []
    for label, m in exports:
        for name, split in (m.get("size_breakdown") or {}).items():
            if name == "pytorch-fp32" and any(r[0].endswith("pytorch-fp32") for r in rows):
                continue  # one reference bar per model is enough
            rows.append((_name(label, name, several), split))
    if not rows:
        return None
    plt = _plt()
    rows.reverse()  # barh draws bottom-up: the reference first, from the top
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(rows)))
    names = [r[0] for r in rows]
    left = [0.0] * len(rows)
    for c in (*COMPONENTS, "graph_and_metadata"):
        vals = [r[1].get(c, 0) / 1e6 for r in rows]
        ax.barh(names, vals, left=left, label=c.replace("_", " "), color=BAR_COLORS[c])
        left = [lo + v for lo, v in zip(left, vals)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f} MB", va="center", fontsize=8)
    ax.set_xlim(0, max(left) * 1.18 or 1)
    ax.set_xlabel("MB")
    ax.set_title(_title(exports, "where the bytes go"))
    _legend_below(fig, ax, ncol=5)
    return fig


def _legend_below(fig, ax, ncol: int) -> None:
    """The legend in a strip of its own under the axes (a fixed height in inches), never over the bars."""
    handles, labels = ax.get_legend_handles_labels()
    strip = 0.4 / fig.get_figheight()
    fig.legend(handles, labels, fontsize=8, ncol=ncol, loc="lower center", bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.tight_layout(rect=(0, strip, 1, 1))


def _title(exports, what: str) -> str:
    if len(exports) == 1:
        m = exports[0][1]
        return f"{m['model']['name']} on {m['target']['name']}: {what}"
    return f"{len(exports)} exports: {what}"


def quality_series(exports) -> list[dict]:
    """The quality measures the manifests hold, each with how to read it from an artifact: the task metrics
    of `edgecomp eval` (metrics.task), the causal-LM perplexity, the cosine against PyTorch fp32."""
    series = []
    tasks = {}
    for _, m in exports:
        for task, spec in (m.get("task_eval") or {}).items():
            tasks.setdefault(task, spec)
    for task, spec in tasks.items():
        ref = (spec.get("reference") or {})
        series.append({"key": f"task-{task}", "label": f"{task}: {spec.get('metric', 'score')}",
                       "higher_is_better": spec.get("higher_is_better", True),
                       "get": lambda a, t=task: ((a.get("metrics") or {}).get("task") or {}).get(t, {}).get("value"),
                       "reference": (ref.get("name", "pytorch-fp32"), ref.get("value")), "peers": False})
    arts = [a for _, a, _ in _measured(exports)]
    if any("ppl" in ((a.get("metrics") or {}).get("fidelity") or {}) for a in arts):
        ppl_ref = next((a["metrics"]["fidelity"].get("ppl_torch") for a in arts
                        if "ppl_torch" in ((a.get("metrics") or {}).get("fidelity") or {})), None)
        series.append({"key": "perplexity", "label": "perplexity (lower is better)", "higher_is_better": False,
                       "get": lambda a: ((a.get("metrics") or {}).get("fidelity") or {}).get("ppl"),
                       "reference": ("pytorch-fp32", ppl_ref), "peers": False})
    if any(isinstance(((a.get("metrics") or {}).get("fidelity") or {}).get("cos_mean"), (int, float)) for a in arts):
        series.append({"key": "cosine", "label": "mean cosine vs PyTorch fp32",
                       "higher_is_better": True,
                       "get": lambda a: ((a.get("metrics") or {}).get("fidelity") or {}).get("cos_mean"),
                       "reference": ("pytorch-fp32", 1.0), "peers": True})
    return series


def _p50(a) -> float | None:
    lat = (a.get("metrics") or {}).get("latency_ms") or {}
    one = (lat.get("threads") or {}).get("1") or {}
    return one.get("p50", lat.get("p50"))


def quality_tradeoff(exports, series: dict):
    """Size–quality and latency–quality side by side for one quality measure, peers marked where this
    project measured them (edgecomp.report.peers)."""
    points = [(name, a["size_bytes"] / 1e6, _p50(a), series["get"](a)) for name, a, _ in _measured(exports)]
    points = [p for p in points if isinstance(p[3], (int, float))]
    if not points:
        return None, None
    peers = peer_figures(exports) if series["peers"] else None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, xi, xlabel in ((axes[0], 1, "size (MB)"), (axes[1], 2, "p50 latency, 1 thread (ms, this host)")):
        mine = [(p[0], p[xi], p[3]) for p in points if p[xi] is not None]
        labels = [(mine, 4, "black", 9)]
        ax.scatter([p[1] for p in mine], [p[2] for p in mine], s=46, color="#4c72b0", zorder=3, label="this export")
        if peers:
            pk = "size_mb" if xi == 1 else "p50_ms_1t"
            pts = [(n, r.get(pk), r.get("cos_mean")) for n, r in peers["rows"].items()
                   if r.get(pk) is not None and r.get("cos_mean") is not None]
            ax.scatter([p[1] for p in pts], [p[2] for p in pts], s=52, marker="D", facecolors="none",
                       edgecolors="#c44e52", zorder=2, label="peers (measured, see below)")
            labels.append((pts, -10, "#c44e52", -9))
        ref_name, ref_value = series["reference"]
        if isinstance(ref_value, (int, float)):
            ax.axhline(ref_value, color="grey", linestyle="--", linewidth=1, label=f"{ref_name}: {ref_value:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(series["label"])
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        for pts, dy, color, step in labels:
            _labels(ax, pts, dy, color, step)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(_title(exports, f"{series['label']} against size and latency"), fontsize=11)
    fig.tight_layout()
    return fig, peers


def _labels(ax, points, dy: float, color: str, step: float = 9) -> None:
    """Name each point; names of points that (nearly) coincide are stacked instead of printed over each other."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    span_x, span_y = abs(x1 - x0) or 1, abs(y1 - y0) or 1
    placed: list[tuple[float, float]] = []
    for n, x, y in points:
        near = sum(1 for px, py in placed if abs(px - x) < 0.15 * span_x and abs(py - y) < 0.04 * span_y)  # a name is ~15% of the width
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, dy + near * step), fontsize=7, color=color)
        placed.append((x, y))


def native_memory(exports):
    """Peak RSS of the runtime's C API per artifact, split anonymous / file-backed / shmem."""
    rows = [(n, a["metrics"]["native"]) for n, a, _ in _measured(exports)
            if "peak_rss_mb" in ((a.get("metrics") or {}).get("native") or {})]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(rows)))
    names = [r[0] for r in rows][::-1]
    vals = [r[1] for r in rows][::-1]
    left = [0.0] * len(rows)
    for key, label in (("anon_mb", "anonymous (heap, arena)"), ("file_mb", "file-backed (code, mapped model)"),
                       ("shmem_mb", "shmem (memfd)")):
        part = [float(v.get(key) or 0) for v in vals]
        ax.barh(names, part, left=left, label=label, color=MEMORY_COLORS[key])
        left = [lo + p for lo, p in zip(left, part)]
    for y, v in enumerate(vals):
        ax.text(max(left[y], v["peak_rss_mb"]), y, f" peak {v['peak_rss_mb']:.1f} MB", va="center", fontsize=8)
    ax.set_xlim(0, max(max(left), max(v["peak_rss_mb"] for v in vals)) * 1.25)
    ax.set_xlabel("MB at the peak stage (native probe, no Python)")
    ax.set_title(_title(exports, "native memory per artifact"))
    _legend_below(fig, ax, ncol=3)
    return fig


def arm64(exports):
    """Emulated aarch64 figures that carry over to a device: instructions per inference, guest peak RSS."""
    rows = [(n, a["arm64"]) for n, a, _ in _measured(exports)
            if isinstance(a.get("arm64"), dict) and "instructions_per_inference" in a["arm64"]]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.8 + 0.45 * len(rows)))
    names = [r[0] for r in rows][::-1]
    instr = [r[1]["instructions_per_inference"] / 1e6 for r in rows][::-1]
    rss = [((r[1].get("native") or {}).get("peak_rss_mb") or r[1].get("guest_peak_rss_mb") or 0) for r in rows][::-1]
    axes[0].barh(names, instr, color="#4c72b0")
    axes[0].set_xlabel("guest instructions per inference (millions)")
    axes[1].barh(names, rss, color="#55a868")
    axes[1].set_xlabel("guest peak RSS MB (native probe where measured)")
    axes[1].set_yticklabels([])
    for ax, vals in ((axes[0], instr), (axes[1], rss)):
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:,.1f}", va="center", fontsize=8)
        ax.set_xlim(0, (max(vals) or 1) * 1.25)
    fig.suptitle(_title(exports, "ARM64 under qemu-aarch64 (emulated; no wall time)"), fontsize=11)
    fig.tight_layout()
    return fig


def early_exit(exports):
    """Accuracy against mean layers run per input, over the τ grid (exits) and the static depths."""
    blocks = [(label, m["early_exit"]) for label, m in exports if m.get("early_exit")]
    if not blocks:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for label, b in blocks:
        suffix = f" ({label})" if len(exports) > 1 else ""
        grid = sorted(b.get("tau_grid") or [], key=lambda r: r["mean_exit_layer"])
        if grid:
            ax.plot([r["mean_exit_layer"] for r in grid], [100 * r["accuracy"] for r in grid], marker="o", ms=3,
                    label=f"early exit over τ{suffix}")
        depths = b.get("depths") or []
        if depths:
            ax.plot([d["depth"] for d in depths], [100 * d["accuracy"] for d in depths], marker="s", ms=4,
                    linestyle=":", label=f"static depth (first k layers){suffix}")
        chosen = next((r for r in grid if r.get("tau") == b.get("tau")), None)
        if chosen:
            ax.scatter([chosen["mean_exit_layer"]], [100 * chosen["accuracy"]], s=90, marker="*", color="#c44e52",
                       zorder=4, label=f"shipped τ = {b['tau']}{suffix}")
        full = (b.get("accuracy") or {}).get("full")
        if full is not None:
            ax.axhline(100 * full, color="grey", linestyle="--", linewidth=1, label=f"full model {100 * full:.2f}%")
    ax.set_xlabel("mean transformer layers run per input (compute, so latency, scales with it)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(_title(exports, "early-exit accuracy against compute"))
    fig.tight_layout()
    return fig


def fit_frontier(exports):
    """`edgecomp fit`: every candidate's size against its quality drop, the Pareto frontier, the choice."""
    blocks = [(label, m["fit"]) for label, m in exports if (m.get("fit") or {}).get("candidates")]
    if not blocks:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label, f in blocks:
        cands = [c for c in f["candidates"] if c.get("size_bytes") is not None and c.get("quality_drop") is not None]
        measured = [c for c in cands if c.get("measured")]
        estimated = [c for c in cands if not c.get("measured")]
        if estimated:
            ax.scatter([c["size_bytes"] / 1e6 for c in estimated], [c["quality_drop"] for c in estimated], s=18,
                       color="#bbbbbb", label="estimated only")
        ax.scatter([c["size_bytes"] / 1e6 for c in measured], [c["quality_drop"] for c in measured], s=30,
                   color="#4c72b0", label="exported and measured")
        front = sorted((c for c in cands if c.get("on_frontier")), key=lambda c: c["size_bytes"])
        if front:
            ax.plot([c["size_bytes"] / 1e6 for c in front], [c["quality_drop"] for c in front], color="#4c72b0",
                    linewidth=1.2, label="Pareto frontier")
        for c in cands:
            if c.get("chosen"):
                ax.scatter([c["size_bytes"] / 1e6], [c["quality_drop"]], s=140, marker="*", color="#c44e52", zorder=4,
                           label=f"chosen: {c['name']}")
        budget = f.get("budget") or {}
        max_size = _bytes(budget.get("max_size_bytes") or budget.get("max_size"))
        if max_size is not None:
            ax.axvline(max_size / 1e6, color="#c44e52", linestyle="--", linewidth=1, label=f"size budget {max_size / 1e6:g} MB")
        floor = _quality_floor(f.get("quality"))
        if floor is not None:
            ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"quality floor {f.get('quality')}")
        for c in front:
            ax.annotate(c["name"], (c["size_bytes"] / 1e6, c["quality_drop"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    ax.set_xlabel("size (MB)")
    ax.set_ylabel("quality drop vs PyTorch fp32 (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(_title(exports, "fit: candidates and frontier"))
    fig.tight_layout()
    return fig


def _bytes(v) -> float | None:
    """A size budget as bytes: a number, or a string such as "12MB" (decimal units, as the CLI takes them)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        units = {"GB": 1e9, "MB": 1e6, "KB": 1e3, "B": 1.0}
        for unit, scale in units.items():
            if v.strip().upper().endswith(unit):
                try:
                    return float(v.strip()[: -len(unit)]) * scale
                except ValueError:
                    return None
    return None


def _quality_floor(q) -> float | None:
    """"sts:-1.0" -> the drop allowed, as a positive number of points (the y axis is the drop)."""
    try:
        return abs(float(str(q).split(":", 1)[1]))
    except (IndexError, ValueError):
        return None
