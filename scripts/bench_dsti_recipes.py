#!/usr/bin/env python3
"""DSTI recipes end to end: `edgecomp export --target android` + `edgecomp eval` per row, on all-MiniLM-L6-v2
(STS-B dev) and the SST-2 classifier (SST-2 dev), with ARM instructions per inference against each model's
plain int8 export of the same run. Protocol: edgecomp/studies/dsti_recipes.py.

    python scripts/bench_dsti_recipes.py                  # every row, two at a time (about 40 minutes)
    python scripts/bench_dsti_recipes.py --only "minilm-sst2: int8" "minilm-sst2: dsti"
    python scripts/bench_dsti_recipes.py --render         # Markdown + plot only

Writes results/dsti/dsti_recipes.{json,md,png}; rows already in the JSON are kept (--fresh drops them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from edgecomp.manifest import save_figure_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from edgecomp.studies import dsti_recipes  # noqa: E402
from edgecomp.studies.dsti import GOAL_ARM_RATIO, GOAL_DROP, draw_frontier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = f"<= {GOAL_ARM_RATIO}x the plain int8 export's ARM instructions per inference at a task drop <= {GOAL_DROP:g} point"


def _fmt_rows(result: dict):
    for r in result["rows"]:
        if "failed" in r:
            yield [r["label"], r["recipe"] or "(none)", r["texts"] or "built-in", "", "", "", "", "", "failed: " + r["failed"], ""]
            continue
        for a in r["artifacts"]:
            if a["path"].endswith(".ort") and any(b["path"].endswith(".onnx") for b in r["artifacts"]):
                continue  # the .ort computes what the .onnx does (same drop, same instructions within 0.01%)
            yield [r["label"], r["recipe"] or "(none)", r["texts"] or "built-in", a["path"], f"{a['bytes'] / 1e6:.2f}",
                   f"{r['metric']} {r['fp32']:.2f}", f"{a['value']:.2f}", f"{a['drop']:+.2f}",
                   f"{a['arm_instructions'] / 1e6:.1f} M" if a["arm_instructions"] else "-",
                   f"{a['arm_vs_int8']:.3f}" if a.get("arm_vs_int8") else "-"]


def markdown(result: dict) -> str:
    lines = ["# DSTI recipes end to end: `edgecomp export --target android` + `edgecomp eval`", "",
             f"Goal (issue 18): {GOAL}. Drop: the dense fp32 PyTorch model's score minus the artifact's, on all of "
             "STS-B dev (1,500 pairs, Spearman x100) or SST-2 dev (6,735 rows, accuracy). ARM: qemu-aarch64 Cortex-A76, "
             "the export's arm64 check (native probe, 1 thread) on its bench input: the export's reference texts (`--texts`, "
             "else the built-in sentences) joined and cut at 128 tokens. A dense graph does the same work on any 128 tokens; "
             "a DSTI graph's follows the experts the text makes it run.", "",
             "| row | recipe | text | artifact | MB | fp32 | artifact | drop | ARM instr / inference | vs int8 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(c) + " |" for c in _fmt_rows(result)]
    lines += ["", "`.ort` rows are left out where the `.onnx` is listed: same graph, same drop, instructions within 0.01%. "
              "The int8 rows' `.tflite` runs on LiteRT (XNNPACK); the DSTI recipes ship no `.tflite` (no custom-op path).", ""]
    lines += ["Commands (each run adds the rows it measured):", ""] + [f"- `{c}`" for c in result.get("commands", [])]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, model in zip(axes, dsti_recipes.TASKS):
        pts = [(a["arm_vs_int8"], a["drop"], r["label"].split(": ", 1)[1]) for r in result["rows"]
               if r["model"] == model and "failed" not in r for a in r["artifacts"]
               if a["path"].endswith(".onnx") and a.get("arm_vs_int8")]
        draw_frontier(ax, [(x, y, name, name == "int8") for x, y, name in pts],
                      f"{dsti_recipes.TASKS[model][0]} drop vs fp32 (points)", model)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)


def render(out: Path, result: dict) -> None:
    write_text_atomic(out.with_suffix(".md"), markdown(result))
    plot(result, out.with_suffix(".png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="row labels to run (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="where the exports go (default: a temporary folder)")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-render the Markdown and plot")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "dsti" / "dsti_recipes")
    a = ap.parse_args()
    out_json = a.out.with_suffix(".json")
    if a.render:
        render(a.out, json.loads(out_json.read_text()))
        return
    rows = dsti_recipes.default_rows()
    if a.only is not None:
        unknown = sorted(set(a.only) - {r.label for r in rows})
        if unknown:
            print(f"error: no row {unknown[0]!r}. Fix: use one of: " + "; ".join(r.label for r in rows), file=sys.stderr)
            sys.exit(2)
        rows = [r for r in rows if r.label in a.only]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="edgecomp-dsti-recipes-") as tmp:
        result = dsti_recipes.run_study(out_json, rows, a.work or Path(tmp), jobs=a.jobs, fresh=a.fresh,
                                        log=lambda s: print(f"{time.time() - t0:7.1f}s {s}", file=sys.stderr, flush=True))
    command = "python scripts/bench_dsti_recipes.py " + " ".join(f'"{x}"' if " " in x else x for x in sys.argv[1:])
    result["commands"] = [c for c in result.get("commands", []) if c != command] + [command]
    write_json_atomic(out_json, result)
    render(a.out, result)
    print(markdown(result))


if __name__ == "__main__":
    main()
