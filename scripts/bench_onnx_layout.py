"""One .onnx in both layouts (self-contained vs weights in a memory-mapped data file), measured by the native
probe on this host and in the aarch64 guest:

    python scripts/bench_onnx_layout.py OUT/model.onnx [--repeats 3] [--no-arm64] [--out results/native/onnx_layout]

Feeds: batch 1, 128 tokens of the built-in sentences' ids (random ids work as well: the layout changes memory,
not arithmetic). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgecomp.bench.layouts import compare_onnx_layouts

ROOT = Path(__file__).resolve().parents[1]


def markdown(r: dict) -> str:
    arm = any("arm64" in row for row in r["rows"])
    lines = [f"# .onnx layouts of `{Path(r['artifact']).name}`: one file vs external data", "",
             "Native probe (ORT's C API, no Python), batch 1, seq 128, 1 thread; x86: medians of "
             f"{r['rows'][0]['x86']['runs']} fresh processes per layout, alternating; outputs differ by "
             f"{r['max_abs_diff_between_layouts']:.1e} between layouts.", "",
             "| layout | MB stored | x86 peak RSS MB | anon MB | file MB | p50 ms | "
             + ("arm64 guest peak RSS MB | anon MB | file MB | ARM instr / inference |" if arm else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|" if arm else "")]
    for row in r["rows"]:
        x = row["x86"]
        cells = [row["layout"], f"{row['bytes'] / 1e6:.1f}", f"{x['peak_rss_mb']:.1f}", f"{x['anon_mb']:.1f}",
                 f"{x['file_mb']:.1f}", f"{x['latency_p50_ms']:.1f}"]
        if arm:
            a = row.get("arm64") or {}
            cells += [f"{a.get('peak_rss_mb', 0):.1f}", f"{a.get('anon_mb', 0):.1f}", f"{a.get('file_mb', 0):.1f}",
                      f"{a.get('instructions_per_inference', 0):,}"]
        lines.append("| " + " | ".join(cells) + " |")
    one, ext = r["rows"]
    lines += ["", f"External data / one file: x86 peak RSS {ext['x86']['peak_rss_mb'] / one['x86']['peak_rss_mb']:.2f}x, "
              f"anonymous {ext['x86']['anon_mb'] / one['x86']['anon_mb']:.2f}x"
              + (f"; arm64 guest peak RSS {ext['arm64']['peak_rss_mb'] / one['arm64']['peak_rss_mb']:.2f}x" if arm else "") + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-arm64", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "native" / "onnx_layout")
    args = ap.parse_args()
    from edgecomp.texts import default_texts

    import onnx

    names = [i.name for i in onnx.load(str(args.onnx), load_external_data=False).graph.input]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.onnx.parent))
    enc = tok(" ".join(default_texts()[:20]), truncation=True, max_length=128, padding="max_length", return_tensors="np")
    feeds = {k: np.asarray(enc[k], np.int64) for k in names}
    result = compare_onnx_layouts(args.onnx, feeds, args.repeats, not args.no_arm64, log=print)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
