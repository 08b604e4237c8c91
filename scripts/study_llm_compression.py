#!/usr/bin/env python3
"""Compression study on SmolLM2-135M (Llama, tied 49152x576 table): each edgecomp.compress method applied to
the fp32 model, WikiText-2 perplexity in PyTorch fp32, measured side by side in one run.

Per configuration: parameters, an *estimated* 4-bit artifact size (no ONNX export here), perplexity on the
same WikiText-2 valid windows as results/llm/frontier.md (detokenized, 4 windows of 512 tokens, 2044 scored)
and the compression / evaluation seconds. Calibration text (activation-aware SVD, distillation) is a
disjoint slice of wiki.valid: paragraphs from line 1880 on (the evaluation windows are its first ~2k tokens).

Estimated int4 bytes = sum over 2-D weights of numel * (4 bits + a 16-bit scale per block of 32) / 8
                       + 4 bytes per 1-D parameter (norm weights, biases); a tied table counts once.

    nice python scripts/study_llm_compression.py --quick      # 5 configs
    nice python scripts/study_llm_compression.py --resume     # all configs, reusing compression.partial.json
    nice python scripts/study_llm_compression.py --only svd-emb-256,ae-emb-256

Writes results/llm/compression.json and compression.md (atomically).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgecomp.compress import Calibration, compress_model
from edgecomp.llm.generate import torch_nll
from edgecomp.manifest import write_text_atomic
from edgecomp.paths import cache_dir
from edgecomp.studies.wikitext import detokenize_wikitext, wikitext_valid, wikitext_windows

ROOT = Path(__file__).resolve().parent.parent  # results/ of the checkout

MODEL_DIR = cache_dir() / "smollm2-135m-fp32"
MLP = "model.layers.*.mlp.*"
MLP_ALT = [f"model.layers.{i}.mlp.*" for i in range(0, 30, 2)]  # KnGPT2: every other layer
CAL_FROM_LINE = 1880  # wiki.valid lines before this are never calibration text
# measured ONNX 4-bit artifacts on the same 2044 tokens (results/llm/frontier.md, bench_llm.md)
MEASURED = [("ONNX 4-bit Q4_1 + 8-bit table (lossless)", 115.9, 16.010),
            ("ONNX 4-bit Q4_1 + 4-bit table", 100.4, 17.712)]

# name -> (steps, claim group, note); ratio = dense params / compressed params of the touched modules
CONFIGS: dict[str, tuple[list, str, str]] = {
    "none": ([], "baseline", "uncompressed"),
    "svd-emb-256": ([{"method": "svd-embedding", "latent_dim": 256}], "embedding@256", "tied head reads the factors"),
    "ae-emb-256": ([{"method": "ae-embedding", "latent_dim": 256}], "embedding@256", "300 AE steps x 4096 rows"),
    "svd-emb-128": ([{"method": "svd-embedding", "latent_dim": 128}], "embedding@128", ""),
    "svd-mlp-r1.5": ([{"method": "lowrank", "modules": MLP, "ratio": 1.5}], "mlp@1.5", "weight SVD"),
    "asvd-mlp-r1.5": ([{"method": "lowrank", "modules": MLP, "ratio": 1.5, "activation_aware": True}], "mlp@1.5",
                      "activation-aware SVD"),
    "asvd-mlp-r1.2": ([{"method": "lowrank", "modules": MLP, "ratio": 1.2, "activation_aware": True}], "mlp@1.2",
                      "activation-aware SVD, mild"),
    "svd-mlp-r2": ([{"method": "lowrank", "modules": MLP, "ratio": 2}], "mlp@2", "weight SVD"),
    "asvd-mlp-r2": ([{"method": "lowrank", "modules": MLP, "ratio": 2, "activation_aware": True}], "mlp@2",
                    "activation-aware SVD"),
    "kron-mlp-alt-r2": ([{"method": "kronecker", "modules": MLP_ALT, "ratio": 2}], "mlp-alt@2",
                        "KnGPT2: even layers' MLP, auto factor shapes"),
    "svd-mlp-alt-r2": ([{"method": "lowrank", "modules": MLP_ALT, "ratio": 2}], "mlp-alt@2", "same modules, weight SVD"),
    "asvd-mlp-alt-r2": ([{"method": "lowrank", "modules": MLP_ALT, "ratio": 2, "activation_aware": True}], "mlp-alt@2",
                        "same modules, activation-aware SVD"),
    "asvd-mlp-r1.5+distill": ([{"method": "lowrank", "modules": MLP, "ratio": 1.5, "activation_aware": True},
                               {"method": "distill", "steps": 50, "batch_size": 4, "max_minutes": 8}], "recovery",
                              "layer-wise distillation, 50 steps per block"),
}
QUICK = ["none", "svd-emb-256", "svd-mlp-r2", "asvd-mlp-r2", "kron-mlp-alt-r2"]
NEEDS_TEXT = ("distill",)  # other steps get calibration only if activation-aware (saves two model passes)


def calibration_texts(n: int) -> list[str]:
    lines = wikitext_valid().read_text(encoding="utf-8").splitlines()
    paras = [detokenize_wikitext(s.strip()) for s in lines[CAL_FROM_LINE:] if len(s.split()) >= 40 and not s.strip().startswith("=")]
    return paras[:n]


def est_int4_bytes(model: torch.nn.Module) -> int:
    two_d = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    one_d = sum(p.numel() for p in model.parameters() if p.dim() < 2)
    return int(two_d * (4 + 16 / 32) / 8 + 4 * one_d)


def perplexity(model, windows) -> tuple[float, int]:
    scored = sum(len(w) - 1 for w in windows)
    return float(np.exp(sum(torch_nll(model, w) for w in windows) / scored)), scored


def tied_check(model) -> dict:
    """The LM head still reads the (possibly compressed) input table: one table, counted once."""
    from edgecomp.compress.layers import TiedOutputHead

    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    tied = (head.table is table) if isinstance(head, TiedOutputHead) else (getattr(head, "weight", None) is table.weight)
    return {"tied": bool(tied), "head": type(head).__name__, "table": type(table).__name__,
            "table_params": sum(p.numel() for p in table.parameters())}


def run(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True, dtype=torch.float32).eval()
    windows = wikitext_windows(tok, wikitext_valid(), args.window, args.max_tokens)
    cal_texts = calibration_texts(32 if args.quick else 64)
    calibration = Calibration(tok, cal_texts, max_length=128, batch_size=8)
    names = args.only.split(",") if args.only else (QUICK if args.quick else list(CONFIGS))
    names = ["none"] + [n for n in names if n != "none"]  # every ratio is against the baseline of the same run
    partial = args.out / "compression.partial.json"
    earlier = next((p for p in (partial, args.out / "compression.json") if p.exists()), None)
    done = json.loads(earlier.read_text())["configs"] if args.resume and earlier else {}
    res = {"model": "SmolLM2-135M (fp32, dequantized GGUF)", "quick": args.quick, "threads": args.threads,
           "eval": {"text": "wikitext-2 wiki.valid (detokenized)", "windows": len(windows), "window": args.window,
                    "tokens_scored": sum(len(w) - 1 for w in windows)},
           "calibration": {"text": f"wiki.valid paragraphs (>= 40 words) from line {CAL_FROM_LINE + 1} on",
                           "texts": len(cal_texts), "max_length": 128},
           "size_formula": "2-D: numel*(4 + 16/32)/8 bytes; 1-D: 4 bytes/param; tied table once",
           "measured_onnx": [{"variant": v, "mb": mb, "perplexity": p} for v, mb, p in MEASURED],
           "command": "python " + " ".join(sys.argv), "configs": {}}
    res["configs"].update({n: done[n] for n in names if n in done})
    for name in names:
        if name in res["configs"]:
            continue  # --resume
        steps, group, note = CONFIGS[name]
        row = {"group": group, "note": note, "steps": steps}
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        try:
            aware = any(s.get("activation_aware") or s["method"] in NEEDS_TEXT for s in steps)
            report = compress_model(model, steps, calibration if aware else None)
            row["compress_seconds"] = round(time.perf_counter() - t0, 1)
            row.update(params=report["params_after"], est_int4_bytes=est_int4_bytes(model), tied=tied_check(model),
                       step_reports=[{k: s[k] for k in ("method", "params_before", "params_after", "seconds", "fidelity")
                                      if k in s} for s in report["steps"]])
            t1 = time.perf_counter()
            row["perplexity"], row["tokens_scored"] = perplexity(model, windows)
            row["eval_seconds"] = round(time.perf_counter() - t1, 1)
        except Exception as e:  # one method failing on Llama must not end the study
            row["error"] = f"{type(e).__name__}: {e}"
        row["seconds"] = round(time.perf_counter() - t0, 1)
        res["configs"][name] = row
        write_text_atomic(partial, json.dumps(res, indent=1))
        print(json.dumps({name: {k: row.get(k) for k in ("params", "est_int4_bytes", "perplexity", "seconds", "error")}}),
              flush=True)
        del model
    return res


def ok(res) -> dict:
    return {n: r for n, r in res["configs"].items() if "error" not in r}


def claims(res: dict) -> list[dict]:
    c, out = ok(res), []

    def cmp(title, a, b):
        if a in c and b in c:
            out.append({"claim": title, "a": a, "b": b, "params_a": c[a]["params"], "params_b": c[b]["params"],
                        "ppl_a": c[a]["perplexity"], "ppl_b": c[b]["perplexity"],
                        "held": c[a]["perplexity"] < c[b]["perplexity"]})

    cmp("Kronecker beats weight SVD at equal params (KnGPT2; even layers' MLP, ratio 2)", "kron-mlp-alt-r2", "svd-mlp-alt-r2")
    cmp("Kronecker beats activation-aware SVD at equal params (even layers' MLP, ratio 2)", "kron-mlp-alt-r2", "asvd-mlp-alt-r2")
    for r in ("1.5", "2"):
        cmp(f"activation-aware SVD beats weight SVD (all MLP, ratio {r})", f"asvd-mlp-r{r}", f"svd-mlp-r{r}")
    cmp("activation-aware SVD beats weight SVD (even layers' MLP, ratio 2)", "asvd-mlp-alt-r2", "svd-mlp-alt-r2")
    cmp("direction-loss AE beats SVD on the tied table at equal size (l=256)", "ae-emb-256", "svd-emb-256")
    cmp("layer-wise distillation recovers perplexity (asvd MLP 1.5)", "asvd-mlp-r1.5+distill", "asvd-mlp-r1.5")
    return out


def markdown(res: dict) -> str:
    c = ok(res)
    ref, base_mb = c["none"]["perplexity"], c["none"]["est_int4_bytes"] / 1e6
    ev = res["eval"]
    lines = [f"# Compression study: {res['model']}", "",
             f"Perplexity: PyTorch fp32 of the compressed model (no quantization applied) on {ev['text']}, "
             f"{ev['windows']} windows of {ev['window']}, **{ev['tokens_scored']} tokens scored** (the windows of "
             f"results/llm/frontier.md, whose fp32 perplexity is 16.010). Calibration (activation-aware SVD, "
             f"distillation): {res['calibration']['texts']} {res['calibration']['text']}, at most "
             f"{res['calibration']['max_length']} tokens each, disjoint from the evaluation windows. "
             f"torch threads = {res['threads']}; seconds = compression + evaluation on a shared 2-core host.", "",
             f"Est. int4 MB = {res['size_formula']} (symmetric 4-bit blocks of 32 with an fp16 scale; not an export). "
             "For scale, the *measured* ONNX 4-bit files of the uncompressed model: "
             + "; ".join(f"{m['variant']} {m['mb']} MB, ppl {m['perplexity']:.3f}" for m in res["measured_onnx"])
             + " (Q4_1 stores fp32 scale + minimum per block of 32, so they are larger than this estimate).", "",
             f"Command: `{res['command']}`", "",
             "| config | group | params | est. int4 MB | x none | perplexity | x fp32 | seconds (compress + eval) | tied head |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in c.items():
        mb = r["est_int4_bytes"] / 1e6
        lines.append(f"| {name} | {r['group']} | {r['params'] / 1e6:.2f}M | {mb:.1f} | "
                     f"{mb / base_mb:.3f} | {r['perplexity']:.3f} | "
                     f"{r['perplexity'] / ref:.3f} | {r['compress_seconds']} + {r['eval_seconds']} | "
                     f"{'yes' if r['tied']['tied'] else 'NO'} ({r['tied']['table']}) |")
    for name, r in res["configs"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['group']} | failed: {r['error'][:300]} | | | | | {r['seconds']} | |")
    lines += ["", "Notes: " + "; ".join(f"{n}: {r['note']}" for n, r in res["configs"].items() if r.get("note")), "",
              "## Paper claims (lower perplexity wins)", "",
              "| claim | a | b | params a / b | ppl a / b | held? |", "|---|---|---|---|---|---|"]
    for cl in res["claims"]:
        lines.append(f"| {cl['claim']} | {cl['a']} | {cl['b']} | {cl['params_a'] / 1e6:.2f}M / {cl['params_b'] / 1e6:.2f}M | "
                     f"{cl['ppl_a']:.3f} / {cl['ppl_b']:.3f} | {'yes' if cl['held'] else 'no'} |")
    lines += ["", "## Size-perplexity frontier (est. int4 MB; configs not dominated by a smaller, better one)", "",
              "Perplexities are fp32; a real 4-bit artifact adds its quantization error (uncompressed: 16.010 -> 17.712 "
              "with a 4-bit table, measured).", "", "| config | est. int4 MB | perplexity | x fp32 |", "|---|---|---|---|"]
    best = float("inf")
    for mb, ppl, name in sorted((r["est_int4_bytes"] / 1e6, r["perplexity"], n) for n, r in c.items()):
        if ppl < best:
            lines.append(f"| {name} | {mb:.1f} | {ppl:.3f} | {ppl / ref:.3f} |")
            best = ppl
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}; 32 calibration texts")
    ap.add_argument("--only", help="comma-separated config names: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=2048, help="WikiText-2 tokens to use (whole windows)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "llm")
    ap.add_argument("--resume", action="store_true",
                    help="reuse configs measured in compression.partial.json (a crashed run) or compression.json")
    ap.add_argument("--render", action="store_true", help="only re-render compression.md from compression.json")
    args = ap.parse_args()
    if args.render:
        res = json.loads((args.out / "compression.json").read_text())
        res["claims"] = claims(res)
        write_text_atomic(args.out / "compression.md", markdown(res))
        return
    unknown = [n for n in (args.only or "").split(",") if n and n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    res = run(args)
    res["claims"] = claims(res)
    write_text_atomic(args.out / "compression.json", json.dumps(res, indent=1))
    write_text_atomic(args.out / "compression.md", markdown(res))
    (args.out / "compression.partial.json").unlink(missing_ok=True)  # compression.json now holds it all
    print(markdown(res))


if __name__ == "__main__":
    main()
