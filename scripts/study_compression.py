#!/usr/bin/env python3
"""Compression study on the real all-MiniLM-L6-v2 (mean pooling + L2 norm): each method at a few ratios,
alone and combined, measured side by side in one run.

Per configuration: parameters, ONNX artifact bytes (fp32, int8 per-channel dynamic, int4 blocks 32 via
MatMulNBits + GatherBlockQuantized) with a size breakdown, embedding cosine vs the PyTorch fp32 model
(mean / worst) on held-out SST-2 dev sentences (>= 10 words), and SST-2 logistic-regression probe
accuracy (probe trained on a train.tsv subset, evaluated on dev.tsv): `probe_fp32` = the probe trained on
the uncompressed model's embeddings applied to the artifact's (drop-in), `probe_retrained` = a probe
trained on the artifact's own embeddings. Calibration text (activation-aware SVD, distillation) comes from
train.tsv sentences, never from the evaluation sentences.

    nice python scripts/study_compression.py --quick            # a few minutes on 2 cores
    nice python scripts/study_compression.py                    # all configurations, more text
    nice python scripts/study_compression.py --only ae-emb-96,svd-emb-96

Writes results/compression/study.json and study.md (atomically).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecomp.bench.size import COMPONENTS, onnx_size_breakdown
from edgecomp.compress import Calibration, compress_model
from edgecomp.manifest import write_text_atomic
from edgecomp.models import model_dir, resolve_model
from edgecomp.runtime import open_artifact
from edgecomp.studies.encoder_artifacts import lower_encoder, quantized, train_view
from edgecomp.studies.sst2_embeddings import embed_artifact, embed_torch, fit_probe, measure, probe_accuracy, study_texts

ROOT = Path(__file__).resolve().parent.parent  # results/ of the checkout

ENC = "encoder.layer.*"
FF = ["encoder.layer.*.intermediate.dense", "encoder.layer.*.output.dense"]

# name -> (steps, claim group, note). Ratios: for a Linear method, dense params / compressed params of
# the touched modules; for embeddings, the latent size l sets the size (V*l + l*d).
CONFIGS: dict[str, tuple[list, str, str]] = {
    "none": ([], "baseline", "uncompressed"),
    # --- claim: direction-loss AE beats SVD on the token table at equal size (+ Kronecker at equal size)
    "svd-emb-96": ([{"method": "svd-embedding", "latent_dim": 96}], "embedding@96", ""),
    "ae-emb-96": ([{"method": "ae-embedding", "latent_dim": 96}], "embedding@96", ""),
    "kron-emb-d2=4": ([{"method": "kron-embedding", "d2": 4}], "embedding@96", "V*96 + 4 params, same as l=96"),
    "svd-emb-192": ([{"method": "svd-embedding", "latent_dim": 192}], "embedding@192", ""),
    "ae-emb-192": ([{"method": "ae-embedding", "latent_dim": 192}], "embedding@192", ""),
    "kron-emb-d2=2": ([{"method": "kron-embedding", "d2": 2}], "embedding@192", "V*192 + 2 params"),
    # --- claim: Kronecker vs SVD at equal params (every encoder Linear, ratio 2)
    "svd-lin-r2": ([{"method": "lowrank", "modules": ENC, "ratio": 2}], "linear@2", "weight SVD"),
    "asvd-lin-r2": ([{"method": "lowrank", "modules": ENC, "ratio": 2, "activation_aware": True}], "linear@2",
                    "activation-aware (whitened) SVD"),
    "kron-lin-r2": ([{"method": "kronecker", "modules": ENC, "ratio": 2}], "linear@2", "auto factor shapes"),
    "asvd-lin-r2-global": ([{"method": "lowrank", "modules": ENC, "ratio": 2, "activation_aware": True,
                             "allocation": "global"}], "linear@2", "one budget, ranks where output energy is"),
    # --- claim: joint (cross-layer) AE vs per-layer AE at equal ratio
    "ae-w-joint-r2": ([{"method": "ae-weights", "modules": ENC, "ratio": 2}], "ae-weights@2", "lowering (b) matmul"),
    "ae-w-layer-r2": ([{"method": "ae-weights", "modules": ENC, "ratio": 2, "joint": False}], "ae-weights@2", ""),
    # --- recovery by distillation
    "asvd-lin-r2+distill": ([{"method": "lowrank", "modules": ENC, "ratio": 2, "activation_aware": True},
                             {"method": "distill"}], "recovery", ""),
    "asvd-ff-r1.5": ([{"method": "lowrank", "modules": FF, "ratio": 1.5, "activation_aware": True}], "recovery", ""),
    "asvd-ff-r1.5+distill-q8": ([{"method": "lowrank", "modules": FF, "ratio": 1.5, "activation_aware": True},
                                 {"method": "distill", "quant_aware": True}], "recovery", ""),
    "asvd-ff-r1.5+distill-q4": ([{"method": "lowrank", "modules": FF, "ratio": 1.5, "activation_aware": True},
                                 {"method": "distill", "quant_aware": True}], "recovery", "fewer MACs and int4"),
    "distill-q4": ([{"method": "distill", "quant_aware": True}], "recovery",
                   "no compression; quantization-aware recovery for int4"),
    # --- candidates for the `small` recipe (< 8 MB)
    "small-a": ([{"method": "ae-embedding", "latent_dim": 192},
                 {"method": "distill", "quant_aware": True}], "small", ""),
    "small-b": ([{"method": "ae-embedding", "latent_dim": 128},
                 {"method": "lowrank", "modules": FF, "ratio": 1.5, "activation_aware": True},
                 {"method": "distill", "quant_aware": True}], "small", ""),
    # the ~8.9 MB point: the smallest table that keeps int4 layers, with int4-aware recovery of everything after it
    "ae-emb-96+distill-q4": ([{"method": "ae-embedding", "latent_dim": 96},
                              {"method": "distill", "quant_aware": True}], "small", ""),
    "ae-emb-128+distill-q4": ([{"method": "ae-embedding", "latent_dim": 128},
                               {"method": "distill", "quant_aware": True}], "small", ""),
    "none-b128": ([], "baseline", "int4 artifact with blocks of 128"),
    "distill-q4-b128": ([{"method": "distill", "quant_aware": True}], "recovery", "int4 artifact with blocks of 128"),
    "distill-q4-b64": ([{"method": "distill", "quant_aware": True}], "recovery", "int4 artifact with blocks of 64"),
    "distill-q4-b128-long": ([{"method": "distill", "quant_aware": True, "steps": 200, "final_steps": 100}],
                             "recovery", "blocks of 128; 2x block steps + 100 end-to-end steps"),
}
INT4_BLOCK = {"none-b128": 128, "distill-q4-b128": 128, "distill-q4-b64": 64, "distill-q4-b128-long": 128}  # default 32


def int4(name: str) -> dict:
    return {"weights": {"bits": 4, "block": INT4_BLOCK.get(name, 32)}}


INT8 = "dynamic-per-channel"
# what each config's quant-aware distillation trains for: the int8 ("-q8") or the int4 ONNX artifact
TRAINS_FOR = {n: (INT8 if "q8" in n else int4(n)) for n, (steps, _, _) in CONFIGS.items()
              if any(s.get("quant_aware") for s in steps)}
QUICK = ["none", "svd-emb-96", "ae-emb-96", "kron-emb-d2=4", "svd-lin-r2", "asvd-lin-r2", "kron-lin-r2",
         "ae-w-joint-r2", "ae-w-layer-r2", "distill-q4", "small-b", "asvd-ff-r1.5", "asvd-ff-r1.5+distill-q8"]


def run(args) -> dict:
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    mdir = model_dir(resolve_model("all-minilm-l6-v2"))
    tok = AutoTokenizer.from_pretrained(mdir, local_files_only=True)
    base = AutoModel.from_pretrained(mdir, local_files_only=True, torch_dtype=torch.float32).eval()
    texts = study_texts(args.quick)
    calibration = Calibration(tok, texts.calibration, max_length=128, batch_size=16)
    ytr, ydv = np.array([y for _, y in texts.probe_train]), np.array([y for _, y in texts.probe_dev])
    held_ref = embed_torch(base, tok, texts.held)
    probe = fit_probe(embed_torch(base, tok, [s for s, _ in texts.probe_train]), ytr)
    ref_probe = probe_accuracy(probe, embed_torch(base, tok, [s for s, _ in texts.probe_dev]), ydv)
    names = args.only.split(",") if args.only else (QUICK if args.quick else list(CONFIGS))
    partial = args.out / f"{args.tag}.partial.json"
    done = json.loads(partial.read_text())["configs"] if args.resume and partial.exists() else {}
    results = {"model": "all-MiniLM-L6-v2", "quick": args.quick, "threads": args.threads,
               "texts": {"held_out": len(texts.held), "calibration": len(texts.calibration),
                         "probe_train": len(texts.probe_train), "probe_dev": len(texts.probe_dev)},
               "lowering": "edgecomp.lower.onnx + onnxslim without constant folding (keep_factorized) + edgecomp.optimize.quantize",
               "reference_probe": ref_probe, "configs": {}}
    results["configs"].update({n: done[n] for n in names if n in done})
    work = Path(tempfile.mkdtemp(prefix="edgecomp-study-"))
    for name in names:
        if name in results["configs"]:
            continue  # --resume: measured before a crash
        steps, group, note = CONFIGS[name]
        t0 = time.perf_counter()
        model = copy.deepcopy(base)
        try:
            quant = train_view(TRAINS_FOR[name]) if name in TRAINS_FOR else None
            report = compress_model(model, steps, calibration, quant=quant)
        except Exception as e:  # one impossible configuration must not end the study
            results["configs"][name] = {"group": group, "note": note, "steps": steps, "error": str(e)}
            print(json.dumps({name: {"error": str(e)}}), flush=True)
            continue
        row = {"group": group, "note": note, "steps": steps, "params": report["params_after"],
               "compress_seconds": round(time.perf_counter() - t0, 1),
               "compress_report": report, "artifacts": {}}
        # the probe is run where it decides things: the artifacts (PyTorch fp32 only outside --quick)
        row["torch_fp32"] = measure(lambda t: embed_torch(model, tok, t), held_ref, texts, probe, probe=not args.quick)
        # keep_factorized: the study measures each method's factorized form (folding would re-densify it)
        fp32 = lower_encoder(model, work / f"{name}.onnx", keep_factorized=True)
        arts = {"onnx_fp32": fp32,
                "onnx_int8": quantized(fp32, work / f"{name}.int8.onnx", INT8),
                "onnx_int4": quantized(fp32, work / f"{name}.int4.onnx", int4(name))}
        for kind, path in arts.items():
            breakdown = onnx_size_breakdown(path)
            a = {"size_bytes": os.path.getsize(path), "size_breakdown": {k: breakdown[k] for k in COMPONENTS}}
            if kind != "onnx_fp32":  # fp32 ONNX == PyTorch (tests check it); measure the quantized ones
                wants_probe = kind == "onnx_int8" or group in ("baseline", "small", "recovery") or not args.quick
                runner = open_artifact(path, threads=args.threads)
                a.update(measure(lambda t, r=runner: embed_artifact(r, tok, t), held_ref, texts, probe, probe=wants_probe))
            row["artifacts"][kind] = a
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results["configs"][name] = row
        write_text_atomic(args.out / f"{args.tag}.partial.json", json.dumps(results, indent=1))  # survive a crash
        print(json.dumps({name: {"params": row["params"], "s": row["seconds"], "torch": row["torch_fp32"],
                                 **{k: {kk: v.get(kk) for kk in ("size_bytes", "cos_mean", "cos_min", "probe_fp32")}
                                    for k, v in row["artifacts"].items()}}}), flush=True)
        for p in arts.values():
            p.unlink(missing_ok=True)
    return results


def ok_configs(res: dict) -> dict:
    return {n: r for n, r in res["configs"].items() if "error" not in r}


def claims(res: dict) -> list[dict]:
    c = ok_configs(res)
    out = []

    def cmp(title, a, b, where="torch_fp32"):
        if a in c and b in c:
            ga = c[a][where] if where == "torch_fp32" else c[a]["artifacts"][where]
            gb = c[b][where] if where == "torch_fp32" else c[b]["artifacts"][where]
            out.append({"claim": title, "a": a, "b": b, "params_a": c[a]["params"], "params_b": c[b]["params"],
                        "cos_a": ga["cos_mean"], "cos_b": gb["cos_mean"], "held": ga["cos_mean"] > gb["cos_mean"]})

    cmp("direction-loss AE beats SVD on the token table at equal size (l=96)", "ae-emb-96", "svd-emb-96")
    cmp("direction-loss AE beats SVD on the token table at equal size (l=192)", "ae-emb-192", "svd-emb-192")
    cmp("Kronecker embedding beats SVD at equal size (l=96)", "kron-emb-d2=4", "svd-emb-96")
    cmp("Kronecker beats SVD on encoder Linears at equal params (ratio 2)", "kron-lin-r2", "svd-lin-r2")
    cmp("Kronecker beats activation-aware SVD at equal params (ratio 2)", "kron-lin-r2", "asvd-lin-r2")
    cmp("activation-aware SVD beats weight SVD (ratio 2)", "asvd-lin-r2", "svd-lin-r2")
    cmp("joint (cross-layer) AE beats per-layer AE at equal ratio (2)", "ae-w-joint-r2", "ae-w-layer-r2")
    cmp("layer-wise distillation recovers fidelity (asvd ratio 2)", "asvd-lin-r2+distill", "asvd-lin-r2")
    cmp("int8-aware distillation recovers (asvd FF 1.5, int8 artifact)", "asvd-ff-r1.5+distill-q8", "asvd-ff-r1.5", "onnx_int8")
    cmp("int4-aware distillation recovers int4 RTN (int4 artifact)", "distill-q4", "none", "onnx_int4")
    return out


def fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(res: dict) -> str:
    base = res["configs"].get("none")
    lines = [f"# Compression study: {res['model']}", "",
             f"Held-out: {res['texts']['held_out']} SST-2 dev sentences (>= 10 words); calibration: "
             f"{res['texts']['calibration']} train sentences; probe: {res['texts']['probe_train']} train / "
             f"{res['texts']['probe_dev']} dev. Cosine is vs the PyTorch fp32 uncompressed model (mean pooling + L2). "
             f"`probe fp32` = uncompressed model's probe applied to these embeddings; `retrained` = probe fit on them. "
             f"quick={res['quick']}, torch threads={res['threads']}.", ""]
    if res.get("reference_probe") is not None:
        lines += [f"Uncompressed probe accuracy (PyTorch fp32): {res['reference_probe']}%", ""]
    if base:
        lines += [f"Uncompressed int8 artifact probe (drop-in / retrained): "
                  f"{fmt(base['artifacts']['onnx_int8']['probe_fp32'])}% / {fmt(base['artifacts']['onnx_int8']['probe_retrained'])}%", ""]
    lines += ["| config | group | params | torch cos mean / min | int8 MB | int8 cos mean / min | int8 probe fp32 / retrained "
              "| int4 MB | int4 cos mean / min | int4 probe fp32 / retrained |", "|" + "---|" * 10]
    for name, r in ok_configs(res).items():
        a8, a4, t = r["artifacts"]["onnx_int8"], r["artifacts"]["onnx_int4"], r["torch_fp32"]
        lines.append(f"| {name} | {r['group']} | {r['params'] / 1e6:.2f}M | {t['cos_mean']:.4f} / {t['cos_min']:.4f} | "
                     f"{a8['size_bytes'] / 1e6:.2f} | {a8['cos_mean']:.4f} / {a8['cos_min']:.4f} | "
                     f"{fmt(a8['probe_fp32'])} / {fmt(a8['probe_retrained'])} | {a4['size_bytes'] / 1e6:.2f} | "
                     f"{a4['cos_mean']:.4f} / {a4['cos_min']:.4f} | {fmt(a4['probe_fp32'])} / {fmt(a4['probe_retrained'])} |")
    lines += ["", "## Size breakdown (MB: token embeddings / attention / feed-forward / other)", "",
              "| config | fp32 | int8 | int4 |", "|---|---|---|---|"]
    for name, r in ok_configs(res).items():
        cells = []
        for kind in ("onnx_fp32", "onnx_int8", "onnx_int4"):
            b = dict(r["artifacts"][kind]["size_breakdown"])
            star = ""
            if sum(b.values()) > r["artifacts"][kind]["size_bytes"]:
                # recorded before 4-bit tables were packed: the table counted one byte per 4-bit value;
                # with blocks of 32 and fp32 scales the stored bytes are 5/9 of that (value/2 + value/8)
                b["token_embeddings"] = b["token_embeddings"] * 5 / 9
                star = "*"
            cells.append(" / ".join(f"{b[k] / 1e6:.2f}" for k in ("token_embeddings", "attention", "feed_forward", "norms_other")) + star)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "\\* corrected: this row's int4 token-table bytes were recorded at one byte per 4-bit value "
              "(the artifact size in the first table was always the file's size)."]
    for name, r in res["configs"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['group']} | refused: {r['error']} |" + " |" * 7)
    lines += ["", "## Paper claims", "", "| claim | a | b | params a / b | cos a / b | held? |", "|---|---|---|---|---|---|"]
    for c in res["claims"]:
        lines.append(f"| {c['claim']} | {c['a']} | {c['b']} | {c['params_a'] / 1e6:.2f}M / {c['params_b'] / 1e6:.2f}M | "
                     f"{c['cos_a']:.4f} / {c['cos_b']:.4f} | {'yes' if c['held'] else 'no'} |")
    front = sorted(((r["artifacts"][k]["size_bytes"], r["artifacts"][k]["cos_mean"], f"{n} {k[5:]}")
                    for n, r in ok_configs(res).items() for k in ("onnx_int8", "onnx_int4")))
    lines += ["", "## Size-fidelity frontier (quantized artifacts not dominated by a smaller, better one)", "",
              "| artifact | MB | cos mean |", "|---|---|---|"]
    best = -1.0
    for size, cos, label in front:
        if cos > best:
            lines.append(f"| {label} | {size / 1e6:.2f} | {cos:.4f} |")
            best = cos
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer configurations and texts (a few minutes)")
    ap.add_argument("--only", help="comma-separated config names: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "compression")
    ap.add_argument("--tag", default="study", help="output file stem")
    ap.add_argument("--resume", action="store_true", help="reuse configs measured in <tag>.partial.json")
    ap.add_argument("--render", type=Path, help="only re-render the Markdown of an existing JSON result")
    ap.add_argument("--merge", type=Path, nargs="*", default=[], help="add the configs of earlier JSON results")
    args = ap.parse_args()
    if args.render:  # with --merge: fold later --only runs (same texts and seeds) into this result
        res = json.loads(args.render.read_text())
        for earlier in args.merge:
            res["configs"].update(json.loads(earlier.read_text())["configs"])
        res["claims"] = claims(res)
        if args.merge:
            write_text_atomic(args.render, json.dumps(res, indent=1))
        write_text_atomic(args.render.with_suffix(".md"), markdown(res))
        return
    if args.only:
        unknown = [n for n in args.only.split(",") if n not in CONFIGS]
        if unknown:
            ap.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    res = run(args)
    for earlier in args.merge:  # e.g. a later --only run adding configs to the quick study
        old = json.loads(earlier.read_text())
        res["configs"] = {**old["configs"], **res["configs"]}
    res["claims"] = claims(res)
    write_text_atomic(args.out / f"{args.tag}.json", json.dumps(res, indent=1))
    write_text_atomic(args.out / f"{args.tag}.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
