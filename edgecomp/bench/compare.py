"""Side-by-side comparison of several exports measured in one `edgecomp bench` run.

`edgecomp bench OUT_A OUT_B ... [--target arm64] [--summary DIR]` re-measures every export and then
lines their artifacts up by format: size, fidelity, x86 latency and RSS, and (under emulation) guest
instructions per inference and guest RSS, each also as a ratio to the first export's artifact of the same
format. The first export is the baseline (e.g. the uncompressed int8 export), so "the compressed recipe
needs fewer ARM instructions than int8" is one row of one table from one run.
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import write_json_atomic, write_text_atomic

COLUMNS = ("export", "recipe", "artifact", "precision", "MB", "size ratio", "cos mean", "cos worst",
           "p50 ms 1thr", "native peak RSS MB", "Python peak RSS MB", "ARM instr/inference (M)", "instr ratio",
           "ARM native guest RSS MB", "ARM Python guest RSS MB")


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def comparison_rows(exports: list[tuple[Path, dict]]) -> list[dict]:
    """One row per (export, artifact); ratios against the first export's artifact of the same format."""
    baseline: dict[str, dict] = {}
    rows = []
    for i, (out_dir, manifest) in enumerate(exports):
        for rec in manifest["artifacts"]:
            if rec.get("role") == "early-exit-stage":
                continue
            m = rec.get("metrics", {})
            arm = rec.get("arm64") or {}
            row = {
                "export": str(out_dir), "recipe": manifest["recipe"]["name"], "artifact": rec["path"],
                "format": rec["format"], "precision": rec["precision"], "size_mb": round(rec["size_bytes"] / 1e6, 2),
                "cos_mean": m.get("fidelity", {}).get("cos_mean"), "cos_min": m.get("fidelity", {}).get("cos_min"),
                "p50_ms_1thr": ((m.get("latency_ms") or {}).get("threads") or {}).get("1", {}).get("p50"),
                "native_peak_rss_mb": (m.get("native") or {}).get("peak_rss_mb"),
                "peak_rss_mb": m.get("peak_rss_mb"),
                "arm_instructions": arm.get("instructions_per_inference"),
                "arm_native_rss_mb": (arm.get("native") or {}).get("peak_rss_mb"),
                "arm_guest_rss_mb": arm.get("guest_peak_rss_mb"),
                "arm_emulated": bool(arm),
            }
            key = f"{rec['format']}:{rec['path']}"
            if i == 0:
                baseline.setdefault(key, row)
            base = baseline.get(key) or next((b for k, b in baseline.items() if k.startswith(rec["format"] + ":")), None)
            row["size_ratio"] = _ratio(row["size_mb"], base and base["size_mb"])
            row["instructions_ratio"] = _ratio(row["arm_instructions"], base and base["arm_instructions"])
            rows.append(row)
    return rows


def _cell(v, spec: str = "") -> str:
    if v is None:
        return "—"
    return format(v, spec) if spec else str(v)


def table_cells(row: dict) -> list[str]:
    instr = row["arm_instructions"]
    return [row["export"], row["recipe"], row["artifact"], row["precision"], _cell(row["size_mb"], ".2f"),
            _cell(row["size_ratio"]), _cell(row["cos_mean"], ".4f"), _cell(row["cos_min"], ".4f"),
            _cell(row["p50_ms_1thr"]), _cell(row.get("native_peak_rss_mb")), _cell(row["peak_rss_mb"]),
            _cell(instr and round(instr / 1e6, 1)), _cell(row["instructions_ratio"]), _cell(row.get("arm_native_rss_mb")),
            _cell(row["arm_guest_rss_mb"])]


def comparison_markdown(rows: list[dict]) -> str:
    lines = [
        "# edgecomp bench: exports side by side (one run)", "",
        "Ratios are against the first export's artifact of the same format. ARM columns come from qemu-aarch64 "
        "(emulated; instruction counts and guest RSS, never emulated milliseconds). x86 latency and RSS are "
        "measured on this host. Native RSS: the runtime's C API in a C process (edgecomp/bench/native); "
        "Python RSS: a fresh interpreter with the runtime imported.", "",
        "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_comparison(rows: list[dict], summary_dir: Path) -> tuple[Path, Path]:
    summary_dir = Path(summary_dir)
    summary_dir.mkdir(parents=True, exist_ok=True)
    js, md = summary_dir / "comparison.json", summary_dir / "comparison.md"
    write_json_atomic(js, {"rows": rows})
    write_text_atomic(md, comparison_markdown(rows))
    return js, md
