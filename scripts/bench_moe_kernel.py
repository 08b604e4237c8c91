"""One MiniLM-sized feed-forward layer (H=384, F=1536, batch 1, seq 128, 1 thread): the plain int8 export's
form (DynamicQuantizeLinear + MatMulInteger) against edgecomp.MoEFeedForward's kernel (edgecomp/kernels)
at several expert fractions, and against the node's standard-op function body (no library).

    python scripts/bench_moe_kernel.py [--experts 16 32] [--fractions 1 0.5 0.3 0.2] [--no-arm64]
                                       [--out results/dsti/bench_moe_kernel]

Figures come from the native probe (edgecomp/bench/native/probe.c, ORT's C API): x86 latency medians on
this host and guest instructions per inference under qemu-aarch64 -cpu cortex-a76 (the insn_count plugin).
The weights are random at BERT's init scale; the kernel's experts are the dense FFN's neuron blocks, so at
100% the kernel computes the dense layer (the fidelity block says how closely). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgecomp.bench.arm64 import env_present
from edgecomp.kernels.bench import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


def markdown(result: dict) -> str:
    s = result["shape"]
    arm = result["emulated_cpu"] is not None
    lines = [f"# edgecomp.MoEFeedForward vs dense int8 FFN (H={s['hidden']}, F={s['ffn']}, seq {s['seq']}, batch 1, 1 thread)",
             "", f"onnxruntime {result['onnxruntime']}; kernel paths: "
             + "; ".join(f"{m}: {p}" for m, p in result["kernel_paths"].items()), "",
             "| configuration | experts run | " + ("ARM instr / inference (A76) | vs dense int8 | " if arm else "")
             + "x86 p50 ms | vs dense int8 | max rel err vs reference |",
             "|---|---|" + ("---:|---:|" if arm else "") + "---:|---:|---:|"]
    for r in result["rows"]:
        run = f"{r['active']}/{r['experts']} ({r['active'] / r['experts']:.0%})" if r.get("experts") else "all (dense)"
        cells = [r["config"], run]
        if arm:
            cells += [f"{r['arm_instructions']:,}", f"{r['arm_instructions_vs_dense_int8']:.3f}"]
        cells += [f"{r['x86_latency_ms_p50']:.3f}", f"{r['x86_latency_vs_dense_int8']:.2f}", str(r.get("rel_err_vs_reference", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Fidelity (cosine per token, minimum): " + ", ".join(f"{k} {v}" for k, v in result["fidelity"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.2])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--x86-runs", type=int, default=30)
    ap.add_argument("--arm-runs", type=int, default=2)
    ap.add_argument("--no-arm64", action="store_true", help="skip the qemu instruction counts")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "dsti" / "bench_moe_kernel")
    a = ap.parse_args()
    arm = not a.no_arm64 and env_present()
    with tempfile.TemporaryDirectory(prefix="edgecomp-moe-bench-") as tmp:
        result = run_benchmark(Path(tmp), experts=tuple(a.experts), fractions=tuple(a.fractions), seq=a.seq,
                               x86_runs=a.x86_runs, arm_runs=a.arm_runs, arm=arm)
    result["command"] = "python scripts/bench_moe_kernel.py " + " ".join(
        [f"--experts {' '.join(map(str, a.experts))}", f"--fractions {' '.join(map(str, a.fractions))}"]
        + (["--no-arm64"] if not arm else []))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    a.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
