"""Native peak RSS (the runtime's C API, no Python) beside the Python-process figure, per artifact of one
or more exports, on this host and in the aarch64 guest; with the smaps split of where the memory sits.

    python scripts/bench_native.py OUT [OUT ...] [--repeat 3] [--no-arm64] [--json results.json]

Each artifact runs with the session options of its format (edgecomp/runtime/options.py), at batch
1, sequence 128, 1 thread. Host figures are medians of --repeat fresh processes; the guest figure is one
qemu-aarch64 run (deterministic up to allocator noise). The Python guest figure is the manifest's
(`arm64.guest_peak_rss_mb`, measured by the export or `edgecomp bench`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from edgecomp.bench import arm64
from edgecomp.bench.memory import peak_rss_mb
from edgecomp.bench.native import arm64_native_block, native_block, synthetic_feeds, tflite_signature_feeds
from edgecomp.runtime.options import session_options


def measure(out: Path, repeat: int, guest: bool) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for rec in manifest["artifacts"]:
        path = out / rec["path"]
        feeds = synthetic_feeds(rec, min(128, rec.get("max_length") or 128))
        fed, sig = tflite_signature_feeds(feeds, rec.get("seq_buckets")) if path.suffix == ".tflite" else (feeds, None)
        opts = session_options(path)  # what edgecomp runs it with now (the Python runner applies the same)
        blocks = [native_block(path, fed, options=opts, signature=sig, runs=5)[0] for _ in range(repeat)]
        block = sorted(blocks, key=lambda b: b["peak_rss_mb"])[len(blocks) // 2]
        python = statistics.median(peak_rss_mb(path, feeds, threads=1) for _ in range(repeat))
        row = {"export": str(out), "recipe": manifest["recipe"]["name"], "artifact": rec["path"],
               "precision": rec["precision"], "size_mb": round(rec["size_bytes"] / 1e6, 1),
               "native_peak_rss_mb": block["peak_rss_mb"], "python_peak_rss_mb": python,
               "native_smaps_mb": block["smaps_mb"], "session_options": block["session_options"]}
        if guest and arm64.env_present():
            g, _ = arm64_native_block(path, fed, options=opts, signature=sig)
            row.update(guest_native_peak_rss_mb=g["peak_rss_mb"], guest_smaps_mb=g["smaps_mb"],
                       guest_instructions_per_inference=g["instructions_per_inference"],
                       guest_python_peak_rss_mb=(rec.get("arm64") or {}).get("guest_peak_rss_mb"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| export | artifact | MB | native peak RSS MB (x86) | Python peak RSS MB (x86) | native guest peak RSS MB | "
            "Python guest peak RSS MB | guest instr/inference (M) | native x86 smaps: runtime lib / model file / "
            "other files / anon / shmem MB |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        s = r["native_smaps_mb"]
        instr = r.get("guest_instructions_per_inference")
        lines.append(f"| {r['recipe']} | `{r['artifact']}` | {r['size_mb']} | {r['native_peak_rss_mb']} | "
                     f"{r['python_peak_rss_mb']} | {r.get('guest_native_peak_rss_mb', '—')} | "
                     f"{r.get('guest_python_peak_rss_mb') or '—'} | {round(instr / 1e6, 1) if instr else '—'} | "
                     f"{s['runtime_library']} / {s['model_file']} / {s['other_files']} / {s['anon']} / {s['shmem']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-arm64", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = [r for out in a.exports for r in measure(out, a.repeat, not a.no_arm64)]
    print(table(rows))
    if a.json:
        a.json.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
