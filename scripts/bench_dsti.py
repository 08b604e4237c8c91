#!/usr/bin/env python3
"""DSTI on all-MiniLM-L6-v2: the plain int8 export against DSTI (sparsify -> moefy -> expert-gates, int8
experts on edgecomp.MoEFeedForward's kernel) at several expert thresholds or dynamic-k budgets. Per row: STS-B
dev Spearman drop (PyTorch and artifact) against the dense fp32 model, FFN multiply-adds per token, ARM
instructions per inference (qemu Cortex-A76, native probe with the artifact's custom_ops option), x86
latency median, bytes. Protocol: edgecomp/studies/dsti.py.

    nice -n 10 python scripts/bench_dsti.py --thresholds 0.3 0.5            # a first run
    nice -n 10 python scripts/bench_dsti.py --thresholds 0 0.2 0.3 0.4 0.5 --budgets 0.99
    python scripts/bench_dsti.py --render                                     # Markdown + plot only

Writes results/dsti/bench_dsti.{json,md,png}; rows already in the JSON are kept (--fresh drops them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from edgecomp.bench.arm64 import env_present  # noqa: E402
from edgecomp.manifest import save_figure_atomic, write_json_atomic, write_text_atomic  # noqa: E402
from edgecomp.studies import dsti  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = f"<= {dsti.GOAL_ARM_RATIO}x the ARM instructions of plain int8 at an STS drop <= {dsti.GOAL_DROP:g} point"


def markdown(result: dict) -> str:
    lines = [f"# DSTI on {result['model']}: instructions vs quality (seq {result['seq_len']}, batch 1, 1 thread)", "",
             f"Goal (issue 18): {GOAL}. STS: {result['sts']}; dense fp32 PyTorch Spearman x100 = "
             f"{result['sts_fp32_pytorch']}. Bench input: {result['bench_input']}.", "",
             *([f"Kernel paths: " + "; ".join(f"{m}: {p}" for m, p in result["kernel_paths"].items()), ""]
               if "kernel_paths" in result else []),
             "| row | taus per layer | experts run | FFN MACs / token (vs dense) | STS drop PyTorch | STS drop artifact | "
             "ARM instr / inference (A76) | vs int8 | x86 p50 ms (row pass) | vs int8 | x86 side by side vs int8 | MB | "
             "artifact vs its PyTorch (cos min) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        share = r.get("expert_share_per_layer")
        taus = ", ".join(f"{t:g}" for t in r["thresholds"]) if r.get("thresholds") else "dense"
        lines.append("| " + " | ".join([
            r["name"], taus, f"{sum(share) / len(share):.0%}" if share else "100%",
            f"{r['ffn_macs_per_token'] / 1e6:.2f} M ({r['ffn_macs_vs_dense']:.2f}x)",
            f"{r['sts_pytorch_drop']:+.2f}", f"{r['sts_artifact_drop']:+.2f}",
            f"{r['arm_instructions']:,}" if "arm_instructions" in r else "-",
            f"{r['arm_vs_dense_int8']:.3f}" if "arm_vs_dense_int8" in r else "-",
            f"{r['x86_latency_ms_p50']:.2f}", f"{r['x86_vs_dense_int8']:.2f}",
            f"{r['x86_side_by_side_vs_dense_int8']:.2f}" if "x86_side_by_side_vs_dense_int8" in r else "-",
            f"{r['bytes'] / 1e6:.1f}",
            f"{r['artifact_vs_its_pytorch_cos_min']:.4f}"]) + " |")
    lines += ["", "STS drop: dense fp32 PyTorch Spearman minus the row's (positive = worse). Experts run: mean share "
              "per token on the STS sentences, all layers. ARM instructions: native probe under qemu-aarch64 "
              "(insn_count plugin), median of 2 runs; x86: native probe median, per row as measured (row pass: other "
              "processes' load varied between rows) and, where measured, side by side (--latency-pass: round-robin, "
              "median of 3 rounds of 10). Rows are resumable: the commands below measured them in turn on one "
              "host; ARM instruction counts do not depend on its load, x86 latencies do.", ""]
    if "command" in result:
        lines += [f"Command: `{result['command']}`", ""]
    for c in result.get("commands", []):
        lines.append(f"- `{c}`")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "arm_vs_dense_int8" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    dsti.draw_frontier(ax, [(r["arm_vs_dense_int8"], r["sts_artifact_drop"], r["name"].replace("dsti ", ""),
                             r["kind"] != "dsti") for r in rows],
                       "STS-B dev Spearman drop vs fp32 (points)", f"DSTI on {result['model']}: work vs quality")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)


def render(out: Path, result: dict) -> None:
    write_text_atomic(out.with_suffix(".md"), markdown(result))
    plot(result, out.with_suffix(".png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.0, 0.3, 0.4, 0.5])
    ap.add_argument("--budgets", type=float, nargs="*", default=[], help="dynamic-k budget searches (held-aside cosine)")
    ap.add_argument("--sparsify-steps", type=int, default=None)
    ap.add_argument("--variant", choices=sorted(dsti.VARIANTS), default="dsti",
                    help="the DSTI build: all steps, or without the sparsify fine-tune")
    ap.add_argument("--x86-runs", type=int, default=20)
    ap.add_argument("--no-arm64", action="store_true")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-render the Markdown and plot")
    ap.add_argument("--latency-rows", nargs="*", default=None, help="the rows the latency pass measures (default: all)")
    ap.add_argument("--latency-pass", action="store_true",
                    help="re-measure every row's x86 latency side by side (round-robin) and re-render")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "dsti" / "bench_dsti")
    a = ap.parse_args()
    out_json = a.out.with_suffix(".json")
    if a.render:
        render(a.out, json.loads(out_json.read_text()))
        return
    if a.latency_pass:
        t0 = time.time()
        render(a.out, dsti.latency_pass(out_json, names=a.latency_rows, log=lambda s: print(f"{time.time() - t0:7.1f}s {s}", file=sys.stderr)))
        return
    arm = not a.no_arm64 and env_present()
    t0 = time.time()
    result = dsti.run_study(out_json, dsti.parse_rows(a.thresholds, a.budgets, a.variant), arm=arm, x86_runs=a.x86_runs,
                            fresh=a.fresh, sparsify_steps=a.sparsify_steps, variant=a.variant,
                            log=lambda s: print(f"{time.time() - t0:7.1f}s {s}", file=sys.stderr, flush=True))
    result["command"] = "python scripts/bench_dsti.py " + " ".join(sys.argv[1:])
    write_json_atomic(out_json, result)
    render(a.out, result)
    print(markdown(result))


if __name__ == "__main__":
    main()
