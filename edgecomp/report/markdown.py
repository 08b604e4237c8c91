"""A manifest as Markdown that renders on GitHub: every table has blank lines around it, no cell can split
a row, and the fidelity columns are the task's (edgecomp/tasks)."""

from __future__ import annotations

from ..bench.size import COMPONENTS


def _mb(n: int | float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.1f}"


def _count(v) -> str:
    return "—" if v is None else f"{v:,}"


def _fmt(v, nd=4) -> str:
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


# The fidelity columns of the artifacts table, by what a task's fidelity records (edgecomp/tasks): an
# encoder's cosine against PyTorch fp32, a causal LM's perplexity and greedy tokens.
FIDELITY_COLUMNS = {
    "cos_mean": (("cos mean", lambda f: _fmt(f.get("cos_mean"))), ("cos worst", lambda f: _fmt(f.get("cos_min"))),
                 ("max abs diff", lambda f: _fmt(f.get("max_abs_diff")))),
    "nll_ratio": (("perplexity (PyTorch)", lambda f: f"{_fmt(f.get('ppl'), 3)} ({_fmt(f.get('ppl_torch'), 3)})"),
                  ("NLL ratio", lambda f: _fmt(f.get("nll_ratio"), 5)),
                  ("greedy tokens equal, worst prompt", lambda f: f"{_fmt(f.get('greedy_match_min'))} of "
                                                                  f"{_fmt(f.get('max_new_tokens'))}")),
}


def fidelity_columns(artifacts: list[dict]):
    """The columns for the keys these artifacts' fidelity records hold (cosine when none is known)."""
    keys = {k for a in artifacts for k in ((a.get("metrics") or {}).get("fidelity") or {})}
    cols = [c for key, group in FIDELITY_COLUMNS.items() if key in keys for c in group]
    return cols or list(FIDELITY_COLUMNS["cos_mean"])


def cell(text) -> str:
    """A table cell: pipes escaped and no line breaks, so a value can never split a row; "<" as an entity,
    so a manifest string is never read as HTML (GitHub and report.html both show it as "<")."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def table(header: list[str], rows: list[list]) -> list[str]:
    """A GitHub table with a blank line before and after: text next to a table is never read as a row."""
    return ["", "| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in r) + " |" for r in rows), ""]


def render(manifest: dict, charts: dict | None = None) -> str:
    """The report of one export; ``charts``: chart key -> (relative PNG path, caption) to show."""
    charts = charts or {}
    m, t = manifest["model"], manifest["target"]
    lines = [
        f"# edgecomp export: {m['name']} for {t['name']}",
        "",
        f"- model: `{m['name']}` ({m['task']}, {m['params']:,} parameters), source `{m['source']}`",
        f"- target: `{t['name']}` — {t.get('description', '')}",
        f"- recipe: `{manifest['recipe']['name']}` — {manifest['recipe'].get('description', '')}",
        f"- edgecomp {manifest['edgecomp_version']}, {manifest.get('created', '')}",
        f"- measured on: {manifest.get('host', {}).get('machine', '?')} ({manifest.get('host', {}).get('cpus', '?')} CPUs); "
        "all latency and memory figures below are from this machine, not a device.",
        "",
        "## Artifacts",
    ]
    ref_bytes = manifest.get("reference", {}).get("size_bytes")
    arts = manifest["artifacts"]
    fcols = fidelity_columns(arts)
    header = ["file", "format", "runtime", "precision", "MB", "vs fp32 PyTorch", "native peak RSS MB",
              "Python peak RSS MB", "p50 ms (1 thr)", "p50 ms (2 thr)", *(c[0] for c in fcols)]
    rows = []
    for a in arts:
        met = a.get("metrics", {})
        lat = met.get("latency_ms") or {}
        th = lat.get("threads", {})
        fid = met.get("fidelity") or {}
        ratio = f"{a['size_bytes'] / ref_bytes:.2f}x" if ref_bytes else "—"
        rows.append([f"`{a['path']}`", a["format"], a["runtime"], a["precision"], _mb(a["size_bytes"]), ratio,
                     _fmt((met.get("native") or {}).get("peak_rss_mb"), 1), _fmt(met.get("peak_rss_mb"), 1),
                     _fmt(th.get("1", {}).get("p50"), 2), _fmt(th.get("2", {}).get("p50"), 2),
                     *(c[1](fid) if fid else "—" for c in fcols)])
    for sk in manifest.get("skipped_artifacts", []):
        rows.append([f"`{sk['path']}`", sk["format"], "—", "—", "not built", sk["reason"], *[""] * (len(header) - 6)])
    lines += table(header, rows)
    lat0 = next((a["metrics"].get("latency_ms") for a in arts if a.get("metrics", {}).get("latency_ms")), None)
    if lat0 and lat0.get("threads"):
        lines += [f"Latency: batch {lat0.get('batch')}, sequence {lat0.get('seq_len')}, median (p50) of "
                  f"{next(iter(lat0['threads'].values())).get('runs')} runs after warm-up.", ""]
    fid0 = next((a["metrics"].get("fidelity") for a in arts if a.get("metrics", {}).get("fidelity")), None)
    if fid0:
        lines += [f"Fidelity: each artifact run on its runtime vs the uncompressed PyTorch fp32 model on "
                  f"{fid0.get('n_texts', '?')} texts.", ""]
    lines += _task_section(manifest)
    quality = _chart_lines(charts, "quality-")
    if quality:
        lines += ["", "## Quality against size and latency", *quality]
    sb = manifest.get("size_breakdown")
    if sb:
        comps = (*COMPONENTS, "graph_and_metadata", "total")
        lines += ["## Size breakdown"]
        lines += table(["component", *sb], [[c, *(_mb(v.get(c)) + (" MB" if v.get(c) is not None else "") for v in sb.values())]
                                                for c in comps])
        lines += _chart_lines(charts, "size")
    lines += _native_section(manifest)
    lines += _chart_lines(charts, "native")
    lines += _generation_section(manifest)
    if any(a.get("arm64") for a in arts):
        lines += _arm64_section(manifest)
        lines += _chart_lines(charts, "arm64")
    lines += _mobile_section(manifest)
    lines += _early_exit_section(manifest)
    lines += _chart_lines(charts, "early-exit")
    lines += _fit_section(manifest)
    lines += _chart_lines(charts, "fit")
    for key in ("compression", "early_exit", "generation"):
        if manifest.get(key):
            lines += ["", f"## {key.replace('_', ' ').title()} (manifest block)", "", "<details><summary>JSON</summary>",
                      "", "```json", _json(manifest[key]), "```", "", "</details>"]
    return _tidy(lines)


def _tidy(lines: list[str]) -> str:
    """At most one blank line in a row: the sections above pad themselves on both sides."""
    out: list[str] = []
    for ln in lines:
        if ln == "" and (not out or out[-1] == ""):
            continue
        out.append(ln)
    return "\n".join(out).strip("\n") + "\n"


def _chart_lines(charts: dict, prefix: str) -> list[str]:
    out = []
    for key, (rel, caption) in charts.items():
        if key.startswith(prefix):
            out += ["", f"![{key}]({rel})", "", *([caption, ""] if caption else [])]
    return out


def _task_section(manifest: dict) -> list[str]:
    """`edgecomp eval`: the task's metric for the fp32 PyTorch model and each artifact, with the drop."""
    evals = manifest.get("task_eval") or {}
    if not evals:
        return []
    out = ["", "## Task quality (`edgecomp eval`)"]
    for task, spec in evals.items():
        ref = spec.get("reference") or {}
        rows = [[ref.get("name", "pytorch-fp32"), _fmt(ref.get("value"), 2), "—"]]
        for a in manifest["artifacts"]:
            r = ((a.get("metrics") or {}).get("task") or {}).get(task)
            if r:
                rows.append([f"`{a['path']}`", _fmt(r.get("value"), 2), _fmt(r.get("drop"), 2)])
        out += ["", f"### {task}: {spec.get('metric', '')}", ""]
        out += table(["model", spec.get("metric", "value"), "drop (points)"], rows)
        out += [f"Data: `{spec.get('data', '?')}` ({_count(spec.get('n'))} examples).", ""]
    return out


def _early_exit_section(manifest: dict) -> list[str]:
    b = manifest.get("early_exit")
    if not b:
        return []
    acc = b.get("accuracy") or {}
    out = ["", "## Early exit", "",
           f"τ = {b.get('tau')}: accuracy {_pct(acc.get('early_exit'))} (full model {_pct(acc.get('full'))}, drop "
           f"{_fmt(acc.get('drop_points'), 2)} points, budget {_fmt(b.get('max_accuracy_drop_points'))}), mean exit layer "
           f"{_fmt(b.get('mean_exit_layer'), 2)} of {b.get('n_layers')} ({_fmt(b.get('layer_speedup'), 2)}x fewer layers); "
           f"static depth {b.get('static_depth')}. Rule: {b.get('exit_rule', '')}.", ""]
    grid = b.get("tau_grid") or []
    if grid:
        out += table(["τ", "accuracy", "agrees with full", "mean exit layer", "layer speedup"],
                     [[_fmt(r.get("tau")), _pct(r.get("accuracy")), _pct(r.get("agreement_with_full")),
                       _fmt(r.get("mean_exit_layer"), 2), _fmt(r.get("layer_speedup"), 2)] for r in grid])
    return out


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _fit_section(manifest: dict) -> list[str]:
    """`edgecomp fit`: the budget, every candidate, which are on the frontier, which was chosen."""
    f = manifest.get("fit")
    if not f:
        return []
    budget = ", ".join(f"{k} {v}" for k, v in (f.get("budget") or {}).items()) or "none"
    out = ["", "## Fit (`edgecomp fit`)", "", f"Budget: {budget}; quality floor: `{f.get('quality', '—')}`.", ""]
    rows = []
    arm = any("arm_instructions" in c for c in f.get("candidates") or [])
    for c in f.get("candidates") or []:
        instr = c.get("arm_instructions")
        rows.append([("**" + c.get("name", "?") + "**") if c.get("chosen") else c.get("name", "?"), c.get("recipe", "—"),
                     _mb(c.get("size_bytes")), _fmt(c.get("rss_mb"), 1), _fmt(c.get("quality_drop"), 2),
                     _fmt(c.get("latency_ms"), 2), *([_fmt(instr / 1e6 if instr else None, 1)] if arm else []),
                     "yes" if c.get("on_frontier") else "", "yes" if c.get("chosen") else "",
                     "measured" if c.get("measured") else "estimated"])
    out += table(["candidate", "recipe", "MB", "RSS MB", "quality drop", "p50 ms", *(["ARM M instr/inference"] if arm else []),
                  "frontier", "chosen", "figures"], rows)
    return out


def _native_section(manifest: dict) -> list[str]:
    """What a process without Python pays (edgecomp/bench/native/probe.c), split as /proc/self/smaps_rollup
    splits it at the peak stage: anonymous (heap: packed weights, arena, activations), file-backed
    (the runtime library's code and mapped model bytes) and shmem (memfd, e.g. XNNPACK's weight cache)."""
    rows = [a for a in manifest["artifacts"] if (a.get("metrics") or {}).get("native")]
    if not rows:
        return []
    out = ["", "## Native memory (the runtime's C API, no Python)", "",
           "| file | MB | peak RSS MB | after load | after first run | anon MB | file MB | shmem MB | load ms | p50 ms | p90 ms | session options |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in rows:
        n = a["metrics"]["native"]
        if "skipped" in n:
            out.append(f"| `{a['path']}` | {_mb(a['size_bytes'])} | not measured: {n['skipped']} | | | | | | | | | |")
            continue
        opts = ", ".join(f"{k}={v}" for k, v in n.get("session_options", {}).items()) or "defaults"
        out.append(f"| `{a['path']}` | {_mb(a['size_bytes'])} | {n['peak_rss_mb']:.1f} | {n['rss_mb']['loaded']:.1f} | "
                   f"{n['rss_mb']['first_run']:.1f} | {n['anon_mb']:.1f} | {n['file_mb']:.1f} | {n.get('shmem_mb', 0):.1f} | "
                   f"{n['load_ms']:.0f} | {n['latency_ms']['p50']:.2f} | {n['latency_ms']['p90']:.2f} | {opts} |")
    n0 = next((a["metrics"]["native"] for a in rows if "skipped" not in a["metrics"]["native"]), None)
    if n0:
        out += ["", f"Batch 1, sequence {n0['seq_len']}, {n0['threads']} thread, {n0['runs']} timed runs after warm-up; "
                    "the Python peak RSS in the table above is a fresh interpreter that imports the runtime (about "
                    "47 MB before any model), shown for comparison."]
    return out


def _generation_section(manifest: dict) -> list[str]:
    """Causal LMs: greedy tokens and perplexity vs PyTorch, decode speed (the table above has no cosine for them)."""
    rows = [a for a in manifest["artifacts"] if "nll_ratio" in a.get("metrics", {}).get("fidelity", {})]
    if not rows:
        return []
    out = ["", "## Text generation (vs PyTorch fp32)", "",
           "| file | greedy tokens equal to PyTorch (per prompt, of N) | perplexity | PyTorch perplexity | NLL ratio | "
           "decode tok/s (1 thr) | decode ms/token (1 thr) |", "|---|---|---|---|---|---|---|"]
    for a in rows:
        f, lat = a["metrics"]["fidelity"], a["metrics"].get("latency_ms") or {}
        out.append(f"| `{a['path']}` | {f['greedy_match']} of {f['max_new_tokens']} | {f['ppl']:.3f} | {f['ppl_torch']:.3f} | "
                   f"{f['nll_ratio']:.5f} | {_fmt(lat.get('tokens_per_s'), 1)} | {_fmt(lat.get('p50'), 2)} |")
    lat0 = next((a["metrics"].get("latency_ms") for a in rows if a["metrics"].get("latency_ms")), None)
    if lat0:
        out += ["", f"Latency here is one decode step (one token through the KV cache) after a {lat0['seq_len']}-token "
                    "prompt; peak RSS is a fresh process that loads the artifact, prefills and decodes 8 tokens."]
    return out


def _arm64_section(manifest: dict) -> list[str]:
    out = ["", "## ARM64 (emulated: qemu-aarch64, not real hardware)", "",
           "These figures come from the aarch64 builds of the runtimes under qemu-aarch64. Parity, guest "
           "instructions per inference and guest memory carry over to a device; emulated wall time does not and is "
           "never reported as latency. All other figures in this report are from the x86 build machine.", "",
           "| file | core | parity | max abs diff vs x86 | worst cos vs x86 | instructions / inference | native guest peak RSS MB | "
           "native instructions / inference | Python guest peak RSS MB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for a in manifest["artifacts"]:
        b = a.get("arm64")
        if not b:
            continue
        if "skipped" in b:
            out.append(f"| `{a['path']}` | — | not measured: {b['skipped']} | | | | | | |")
            continue
        nat = b.get("native") or {}
        out.append(f"| `{a['path']}` | {b.get('emulated_cpu')} | {'ok' if b.get('parity_ok') else 'FAIL'} | "
                   f"{b['max_abs_diff']:.2e} | {b.get('cos_min_vs_x86', float('nan')):.5f} | "
                   f"{b['instructions_per_inference']:,} | {_fmt(nat.get('peak_rss_mb'), 1)} | "
                   f"{_count(nat.get('instructions_per_inference'))} | {b['guest_peak_rss_mb']:.1f} |")
    return out


def _mobile_section(manifest: dict) -> list[str]:
    out = []
    for a in manifest["artifacts"]:
        mc = a.get("mobile_check")
        if mc:
            out += ["", f"## ORT mobile usability (`{a['path']}`)", "",
                    "| execution provider | shapes | nodes on accelerator | partitions | verdict |", "|---|---|---|---|---|"]
            for key, modes in mc.get("eps", {}).items():
                for mode in ("as_is", "fixed_shapes"):
                    r = modes.get(mode)
                    if not r:
                        continue
                    out.append(f"| {modes.get('ep', key)} | {mode} | {r.get('nodes_on_accelerator')}/{r.get('nodes')} | {r.get('partitions')} | "
                               f"{r.get('verdict', '')} |")
            out += ["", f"Recommendation: {mc.get('recommendation', '')}"]
        ro = a.get("required_operators")
        if ro:
            out += ["", f"## Reduced ORT build (`{a['path']}`)", "",
                    f"`{ro['config']}` lists {ro['n_operators']} operators; build ONNX Runtime with "
                    f"`--include_ops_by_config {ro['config']}` to ship only these kernels: "
                    + ", ".join(f"`{o}`" for o in ro["operators"])]
        xn = a.get("xnnpack")
        if xn:
            out += ["", f"## LiteRT XNNPACK delegate (`{a['path']}`)", "",
                    f"{xn['nodes_on_xnnpack']}/{xn['nodes']} nodes in {xn['partitions']} partition(s) run on XNNPACK; "
                    f"left on the reference CPU kernels: {', '.join(xn.get('ops_left_on_cpu', [])) or 'none'}."]
    return out


def _json(d) -> str:
    import json

    return json.dumps(d, indent=2)[:6000]
