"""Render a manifest as Markdown, plus a size-breakdown plot."""

from __future__ import annotations

from pathlib import Path

from ..bench.size import COMPONENTS
from ..manifest import save_figure_atomic, write_text_atomic


def _mb(n: int | float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.1f}"


def _count(v) -> str:
    return "—" if v is None else f"{v:,}"


def _fmt(v, nd=4) -> str:
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def render(manifest: dict) -> str:
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
        "",
        "| file | format | runtime | precision | MB | vs fp32 PyTorch | native peak RSS MB | Python peak RSS MB | p50 ms (1 thr) | p50 ms (2 thr) | cos mean | cos worst | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref_bytes = manifest.get("reference", {}).get("size_bytes")
    for a in manifest["artifacts"]:
        met = a.get("metrics", {})
        lat = met.get("latency_ms") or {}
        th = lat.get("threads", {})
        fid = met.get("fidelity", {})
        ratio = f"{a['size_bytes'] / ref_bytes:.2f}x" if ref_bytes else "—"
        lines.append(
            f"| `{a['path']}` | {a['format']} | {a['runtime']} | {a['precision']} | {_mb(a['size_bytes'])} | {ratio} | "
            f"{_fmt((met.get('native') or {}).get('peak_rss_mb'), 1)} | "
            f"{_fmt(met.get('peak_rss_mb'), 1)} | {_fmt(th.get('1', {}).get('p50'), 2)} | {_fmt(th.get('2', {}).get('p50'), 2)} | "
            f"{_fmt(fid.get('cos_mean'))} | {_fmt(fid.get('cos_min'))} | {_fmt(fid.get('max_abs_diff'))} |"
        )
    for sk in manifest.get("skipped_artifacts", []):
        lines.append(f"| `{sk['path']}` | {sk['format']} | — | — | not built | | | | | | | | {sk['reason']} |")
    lat0 = next((a["metrics"].get("latency_ms") for a in manifest["artifacts"] if a.get("metrics", {}).get("latency_ms")), None)
    if lat0:
        lines += ["", f"Latency: batch {lat0['batch']}, sequence {lat0['seq_len']}, median (p50) of {next(iter(lat0['threads'].values()))['runs']} runs after warm-up."]
    fid0 = next((a["metrics"].get("fidelity") for a in manifest["artifacts"] if a.get("metrics", {}).get("fidelity")), None)
    if fid0:
        lines.append(f"Fidelity: each artifact run on its runtime vs the uncompressed PyTorch fp32 model on {fid0['n_texts']} texts.")
    sb = manifest.get("size_breakdown")
    if sb:
        lines += ["", "## Size breakdown", "", "| component | " + " | ".join(sb) + " |", "|---|" + "---|" * len(sb)]
        for c in (*COMPONENTS, "graph_and_metadata", "total"):
            lines.append(f"| {c} | " + " | ".join(_mb(v.get(c)) + " MB" for v in sb.values()) + " |")
        if Path(manifest.get("_dir", "."), "size_breakdown.png").exists():
            lines += ["", "![size breakdown](size_breakdown.png)"]
    lines += _native_section(manifest)
    lines += _generation_section(manifest)
    if any(a.get("arm64") for a in manifest["artifacts"]):
        lines += _arm64_section(manifest)
    lines += _mobile_section(manifest)
    for key in ("compression", "early_exit", "generation"):
        if manifest.get(key):
            lines += ["", f"## {key.replace('_', ' ').title()}", "", "```json", _json(manifest[key]), "```"]
    return "\n".join(lines) + "\n"


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


def plot_size_breakdown(manifest: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sb = manifest["size_breakdown"]
    names = list(sb)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.55 * len(names)))
    left = [0.0] * len(names)
    for c in (*COMPONENTS, "graph_and_metadata"):
        vals = [sb[n].get(c, 0) / 1e6 for n in names]
        ax.barh(names, vals, left=left, label=c.replace("_", " "))
        left = [l + v for l, v in zip(left, vals)]
    ax.set_xlabel("MB")
    ax.set_title(f"{manifest['model']['name']} on {manifest['target']['name']}: where the bytes go")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure_atomic(fig, png)


def write_report(manifest: dict, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if manifest.get("size_breakdown"):
        plot_size_breakdown(manifest, out_dir / "size_breakdown.png")
    text = render({**manifest, "_dir": str(out_dir)})
    p = out_dir / "report.md"
    write_text_atomic(p, text)
    return p
