#!/usr/bin/env python3
"""Fewer ARM instructions than int8 at int8's quality: FFN pruning x activation smoothing x 4-bit tables on the
real all-MiniLM-L6-v2, each configuration measured side by side in one run.

Why this study exists: on a Cortex-A76, ORT's 4-bit MatMuls (MatMulNBits) need MORE instructions than its int8
ones (260 M vs 220 M per inference), so a recipe that must beat int8 on ARM compute keeps int8 MatMuls and
removes multiply-adds instead (prune-ffn), recovers the quality int8 loses to per-tensor activation ranges
(smooth), and takes bytes off where no compute is (4-bit token table).

Per configuration: ONNX bytes of the int8 artifact and of the int8 + 4-bit-tables artifact, embedding cosine
vs PyTorch fp32 on held-out SST-2 dev sentences run at batch 1 (how a device runs it: ORT's dynamic int8 takes
one activation range per batch), the SST-2 drop-in probe, and guest instructions per inference of the
int8 + 4-bit-tables artifact on aarch64 ORT under qemu (seq 128, cortex-a76; needs scripts/setup_arm64.sh).

    nice python scripts/study_arm_int8.py                   # ~30 min on 2 cores
    nice python scripts/study_arm_int8.py --only none,fast --no-arm

Writes results/arm64/study_int8.json, .md and .png (atomically).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecomp.compress import Calibration, compress_model
from edgecomp.manifest import save_figure_atomic, write_text_atomic
from edgecomp.models import model_dir, resolve_model
from edgecomp.runtime import open_artifact
from edgecomp.studies.encoder_artifacts import lower_encoder, quantized, train_view
from edgecomp.studies.sst2_embeddings import cos_stats, embed_artifact, embed_torch, fit_probe, probe_accuracy, study_texts

ROOT = Path(__file__).resolve().parent.parent  # results/ of the checkout

SMOOTH = {"method": "smooth", "alpha": 0.85, "exclude": ["*.attention.output.dense"]}


# the artifact the `fast` recipe ships: int8 MatMuls (dynamic per-tensor activations) + 4-bit token table
INT4_TABLES = {"weights": {"bits": 8}, "table": {"bits": 4, "block": 32}, "activations": "dynamic-per-tensor"}


def distill_t4():
    return {"method": "distill", "quant_aware": True, "steps": 100, "lr": 1e-4}  # trains for INT4_TABLES


def prune(keep: float):
    return {"method": "prune-ffn", "keep": keep}


CONFIGS: dict[str, list] = {
    "none": [],
    "smooth": [SMOOTH],
    "prune-0.9": [prune(0.9)],
    "prune-0.9+smooth": [prune(0.9), SMOOTH],
    "fast": list(resolve_model("all-minilm-l6-v2").recipe("fast").steps),  # exactly the shipped recipe
    "prune-0.85+smooth+distill": [prune(0.85), SMOOTH, distill_t4()],
    "prune-0.8+smooth+distill": [prune(0.8), SMOOTH, distill_t4()],
    "prune-0.75+smooth+distill": [prune(0.75), SMOOTH, distill_t4()],
}


def arm_instructions(path: Path) -> dict:
    from edgecomp.bench import arm64
    from edgecomp.runtime import open_artifact

    if not arm64.env_present():
        return {"skipped": arm64.SETUP_HINT}
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
             "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
    x86 = open_artifact(path, threads=1).run(feeds)
    b = arm64.arm64_block(path, feeds, x86)
    return {k: b[k] for k in ("instructions_per_inference", "guest_peak_rss_mb", "emulated_cpu")}


def run(args) -> dict:
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    mdir = model_dir(resolve_model("all-minilm-l6-v2"))
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    base = AutoModel.from_pretrained(mdir, local_files_only=True, torch_dtype=torch.float32).eval()
    texts = study_texts(True)  # the compression study's quick split
    calibration = Calibration(tok, texts.calibration, max_length=128, batch_size=16)
    ref = embed_torch(base, tok, texts.held)
    probe = fit_probe(embed_torch(base, tok, [s for s, _ in texts.probe_train]),
                      np.array([y for _, y in texts.probe_train]))
    dev_texts, ydv = [t for t, _ in texts.probe_dev], np.array([y for _, y in texts.probe_dev])
    res = {"model": "all-MiniLM-L6-v2", "held_out": len(texts.held), "calibration": len(texts.calibration),
           "probe_dev": len(texts.probe_dev), "ort_batch": 1,
           "lowering": "edgecomp.lower.onnx + onnxslim + edgecomp.optimize.quantize", "configs": {}}
    work = Path(tempfile.mkdtemp(prefix="edgecomp-arm-int8-"))
    for name in (args.only.split(",") if args.only else CONFIGS):
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        report = compress_model(model, CONFIGS[name], calibration, quant=train_view(INT4_TABLES))
        # prune-ffn and smooth leave dense Linears: folded as `edgecomp export` folds them
        fp32 = lower_encoder(model, work / f"{name}.onnx")
        arts = {"int8": quantized(fp32, work / f"{name}.int8.onnx", "dynamic-per-channel"),
                "int8_int4_tables": quantized(fp32, work / f"{name}.t4.onnx", INT4_TABLES)}
        row = {"steps": CONFIGS[name], "params": report["params_after"], "artifacts": {}}
        for kind, path in arts.items():
            runner = open_artifact(path, threads=args.threads)
            # batch 1, how a device runs it: ORT's dynamic int8 takes one activation range per batch
            a = {"size_bytes": path.stat().st_size, **cos_stats(ref, embed_artifact(runner, tok, texts.held, batch_size=1))}
            if kind == "int8_int4_tables":
                a["probe_fp32"] = probe_accuracy(probe, embed_artifact(runner, tok, dev_texts, batch_size=1), ydv)
                if not args.no_arm:
                    a["arm64"] = arm_instructions(path)
            row["artifacts"][kind] = a
        row["seconds"] = round(time.perf_counter() - t0, 1)
        res["configs"][name] = row
        print(json.dumps({name: row["artifacts"]}), flush=True)
    return res


def markdown(res: dict) -> str:
    base = res["configs"].get("none", {}).get("artifacts", {}).get("int8_int4_tables", {}).get("arm64", {})
    base_instr = base.get("instructions_per_inference")
    lines = ["# int8 on ARM: pruning x smoothing x 4-bit tables (all-MiniLM-L6-v2)", "",
             f"Held-out: {res['held_out']} SST-2 dev sentences at ORT batch 1; calibration: {res['calibration']} train "
             f"sentences; probe: the uncompressed model's SST-2 probe on {res['probe_dev']} dev sentences. "
             "ARM: guest instructions per inference (aarch64 ORT under qemu, cortex-a76, seq 128), never emulated time.", "",
             "| config | int8 MB | int8 cos mean / worst | int8 + 4-bit tables MB | cos mean / worst | probe | ARM instr (M) | vs none |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res["configs"].items():
        a8, t4 = r["artifacts"]["int8"], r["artifacts"]["int8_int4_tables"]
        instr = t4.get("arm64", {}).get("instructions_per_inference")
        arm = f"{instr / 1e6:.1f} | {instr / base_instr:.3f}" if instr and base_instr else "- | -"
        lines.append(f"| {name} | {a8['size_bytes'] / 1e6:.2f} | {a8['cos_mean']:.4f} / {a8['cos_min']:.4f} | "
                     f"{t4['size_bytes'] / 1e6:.2f} | {t4['cos_mean']:.4f} / {t4['cos_min']:.4f} | {t4['probe_fp32']} | {arm} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, png: Path) -> None:
    """ARM instructions vs cosine of the shipped kind (int8 + 4-bit tables): where a recipe can sit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(n, r["artifacts"]["int8_int4_tables"]) for n, r in res["configs"].items()]
    pts = [(n, a["arm64"]["instructions_per_inference"] / 1e6, a["cos_mean"]) for n, a in pts
           if a.get("arm64", {}).get("instructions_per_inference")]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, x, y in pts:
        ax.scatter(x, y, color="tab:red" if name == "fast" else "tab:blue")
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    base = dict((n, x) for n, x, _ in pts).get("none")
    if base:
        ax.axvline(base, color="grey", ls=":", lw=1, label="no compression (int8 + 4-bit tables)")
    ax.axhline(0.99, color="grey", ls="--", lw=1, label="cosine floor 0.99")
    ax.set_xlabel("aarch64 ORT instructions per inference, millions (Cortex-A76 under qemu, seq 128)")
    ax.set_ylabel("embedding cosine vs fp32 (held-out)")
    ax.set_title("all-MiniLM-L6-v2, int8 MatMuls: fewer instructions vs fidelity")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure_atomic(fig, png)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated config names: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-arm", action="store_true", help="skip the qemu instruction counts")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "arm64")
    ap.add_argument("--render", type=Path, help="only re-render the Markdown and plot of an existing JSON result")
    args = ap.parse_args()
    res = json.loads(args.render.read_text()) if args.render else run(args)
    write_text_atomic(args.out / "study_int8.json", json.dumps(res, indent=1))
    write_text_atomic(args.out / "study_int8.md", markdown(res) + "\n![instructions vs cosine](study_int8.png)\n")
    plot(res, args.out / "study_int8.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
