#!/usr/bin/env python3
"""SmolLM2-135M on device: perplexity, size, peak RSS, prefill latency and decode speed of PyTorch fp32,
every edgecomp export variant and the peer (optimum's ONNX export + ORT int8 per-channel), in one run.

Perplexity: WikiText-2 valid (detokenized as its README says), tokenized once, cut into fixed windows of
``--window`` tokens; the first token of a window is context only, so a window scores window-1 tokens.
Latency: batch 1, a 128-token prompt (prefill) and 32 greedy decode steps, median over ``--runs`` rounds,
the variants interleaved within each round so they share the machine's load. Peak RSS: a fresh process
that loads the artifact and runs one prefill + 8 decode steps at 1 thread.

    nice python scripts/bench_llm.py --max-tokens 8192          # ~25 min on 2 busy cores
    nice python scripts/bench_llm.py --max-tokens 2048 --runs 3 # quick look
Writes results/llm/bench_llm.json and results/llm/bench_llm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgecomp.bench.memory import peak_rss_mb
from edgecomp.studies.wikitext import wikitext_valid, wikitext_windows

ROOT = Path(__file__).resolve().parents[1]  # results/ of the checkout

PROMPT = ("The history of the city begins in the Roman period, when a small settlement grew around the river "
          "crossing. Over the following centuries it became")


# --- variants: each knows how to score NLL, prefill and decode -------------------------------------------
class OrtVariant:
    def __init__(self, name, path, kind="edgecomp", note=""):
        self.name, self.path, self.kind, self.note = name, Path(path), kind, note
        self.sessions = {}

    def session(self, threads):
        from edgecomp.llm.generate import open_causal_lm

        if threads not in self.sessions:
            self.sessions[threads] = open_causal_lm(self.path, threads)
        return self.sessions[threads]

    def size(self):
        return self.path.stat().st_size

    def nll(self, ids):
        from edgecomp.llm.generate import nll_of_ids

        return nll_of_ids(self.session(2), ids)

    def greedy(self, ids, n):
        return self.session(2).greedy(ids, n)["tokens"]

    def timed(self, ids, threads, n_decode):
        r = self.session(threads).greedy(ids, n_decode + 1)
        return r["prefill_ms"], r["tokens_per_s"]

    def close(self):
        self.sessions.clear()


class TorchVariant:
    def __init__(self, model, directory):
        self.name, self.kind, self.note = "PyTorch fp32 (dequantized GGUF)", "reference", "transformers, eager"
        self.model, self.dir = model, Path(directory)

    def size(self):
        return sum(p.stat().st_size for p in self.dir.glob("*.safetensors"))

    def nll(self, ids):
        from edgecomp.llm.generate import torch_nll

        return torch_nll(self.model, ids)

    def greedy(self, ids, n):
        from edgecomp.llm.generate import torch_greedy

        return torch_greedy(self.model, ids, n)

    def timed(self, ids, threads, n_decode):
        import torch

        torch.set_num_threads(threads)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(torch.tensor([ids]), use_cache=True)
            t1 = time.perf_counter()
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            for _ in range(n_decode):
                out = self.model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
            t2 = time.perf_counter()
        torch.set_num_threads(2)
        return (t1 - t0) * 1e3, n_decode / (t2 - t1)

    def close(self):
        pass


class LlamaCppVariant:
    """llama.cpp on the shipped GGUF (the on-device reference for decoders), when llama-cpp-python is installed."""

    def __init__(self, gguf, window):
        self.name, self.kind, self.note = "llama.cpp (shipped Q4_1 GGUF)", "peer", "llama-cpp-python"
        self.path, self.window = Path(gguf), window
        self.llms = {}

    def llm(self, threads, logits_all=False):
        from llama_cpp import Llama

        key = (threads, logits_all)
        if key not in self.llms:
            self.llms[key] = Llama(model_path=str(self.path), n_ctx=max(self.window, 256), n_threads=threads,
                                   n_batch=max(self.window, 256), logits_all=logits_all, verbose=False)
        return self.llms[key]

    def size(self):
        return self.path.stat().st_size

    def nll(self, ids):
        from edgecomp.llm.generate import summed_nll

        llm = self.llm(2, True)
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], np.float32)
        return summed_nll(logits, ids)

    # logits_all everywhere: llama-cpp-python 0.3.36 leaves `scores` zero without it, and the ONNX exports
    # compute every position's logits in prefill too.
    def greedy(self, ids, n):
        llm = self.llm(2, True)
        llm.reset()
        out = []
        llm.eval(ids)
        for _ in range(n):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(tok)
            llm.eval([tok])
        return out

    def timed(self, ids, threads, n_decode):
        llm = self.llm(threads, True)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, n_decode / (t2 - t1)

    def close(self):
        self.llms.clear()


# --- fresh-process peak RSS -------------------------------------------------------------------------------
RSS_PROMPT = {"input_ids": np.arange(1000, 1128, dtype=np.int64)[None]}  # 128 tokens; the probe adds 8 decode steps


def peak_rss(kind: str, path, repeats: int = 3) -> float | None:
    """Median peak RSS (MiB) of ``repeats`` fresh processes (one process varied by up to ~20 MiB); ``kind`` is
    an edgecomp.bench.probe kind (causal-lm, torch-causal-lm, llama.cpp)."""
    got = []
    for _ in range(repeats):
        try:
            got.append(peak_rss_mb(Path(path), RSS_PROMPT, threads=1, kind=kind))
        except Exception as e:  # one variant's probe must not end the benchmark
            print(f"  RSS probe failed for {path}: {e}", file=sys.stderr)
            return None
    return round(statistics.median(got), 1)


# --- building the variants --------------------------------------------------------------------------------
def build_variants(loaded, work: Path, log) -> list[OrtVariant]:
    from edgecomp.llm.export import export_causal_lm_onnx
    from edgecomp.llm.quantize import LlmQuantConfig, quantize_causal_lm

    work.mkdir(parents=True, exist_ok=True)
    from edgecomp.optimize.simplify import simplify_onnx

    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32" / "model.onnx"  # optimum's export as is: the peer's starting point
    if not fp32.exists():
        log("export fp32 ONNX (optimum text-generation-with-past)")
        export_causal_lm_onnx(loaded.model, fp32)
    slim = work / "fp32-slim.onnx"  # edgecomp's: + onnxslim, as export_causal_lm does
    if not slim.exists():
        log("simplify (onnxslim)")
        simplify_onnx(fp32, slim)
    variants = [OrtVariant("edgecomp ONNX fp32", slim, note="optimum export + onnxslim, tied table once")]
    configs = [
        ("edgecomp 4-bit Q4_1 layers + 8-bit table (lossless)", LlmQuantConfig("q4_1", "int8-split")),
        ("edgecomp same, int8 activations in layers (accuracy_level 4)",
         LlmQuantConfig("q4_1", "int8-split", accuracy_level=4)),
        ("edgecomp int8 per-channel layers + 8-bit table", LlmQuantConfig("int8-per-channel", "int8-split")),
        ("edgecomp 4-bit Q4_1 layers + 4-bit table", LlmQuantConfig("q4_1", "int4")),
        ("edgecomp 4-bit Q4_1 layers + 4-bit table, int8 activations (accuracy_level 4, head too)",
         LlmQuantConfig("q4_1", "int4", accuracy_level=4, head_accuracy_level=4)),
        ("edgecomp 4-bit Q4_1 layers + 4-bit table, int8 activations in layers only",
         LlmQuantConfig("q4_1", "int4", accuracy_level=4)),
        ("edgecomp 4-bit Q4_1 layers + 4-bit table, int8 activations in the LM head only",
         LlmQuantConfig("q4_1", "int4", head_accuracy_level=4)),
        ("edgecomp 4-bit int-zp block 64 + 4-bit table block 64", LlmQuantConfig("int4", "int4", block_size=64,
                                                                                   table_block_size=64)),
    ]
    for name, cfg in configs:
        dst = work / f"{cfg.name}.b{cfg.block_size}.t{cfg.table_block_size}.a{cfg.accuracy_level}.onnx"
        log(f"quantize {cfg}")  # always: seconds each, and a cached file could predate the quantizer's code
        quantize_causal_lm(slim, dst, cfg)
        variants.append(OrtVariant(name, dst, note=str(cfg)))
    # The peer: optimum's ONNX export + ORT dynamic int8 per-channel through optimum's own quantizer
    # (what `optimum-cli onnxruntime quantize --avx512 --per_channel` does).
    peer_dir = work / "peer-int8"
    peer = peer_dir / "model_quantized.onnx"
    if not peer.exists():
        log("peer: optimum ORTQuantizer avx512 per-channel dynamic int8")
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        q = ORTQuantizer.from_pretrained(fp32.parent, file_name="model.onnx")
        q.quantize(save_dir=peer_dir, quantization_config=AutoQuantizationConfig.avx512(is_static=False, per_channel=True))
    variants.append(OrtVariant("peer: optimum ONNX + ORT int8 per-channel (avx512)", peer, kind="peer",
                               note="optimum ORTQuantizer, dynamic, per_channel=True"))
    return variants


FRONTIER = [  # (label, config): the size-perplexity frontier toward the 50 MB goal, RTN weight-only
    ("4-bit Q4_1 + 8-bit table (lossless)", dict(layers="q4_1", table="int8-split")),
    ("4-bit Q4_1 + 4-bit table", dict(layers="q4_1", table="int4")),
    ("4-bit b64 + 4-bit table b64", dict(layers="int4", table="int4", block_size=64, table_block_size=64)),
    ("4-bit attention, 2-bit FFN b64 + 4-bit table b64",
     dict(layers="int4", ffn_layers="int2", table="int4", block_size=64, table_block_size=64)),
    ("2-bit b64 + 4-bit table b64", dict(layers="int2", table="int4", block_size=64, table_block_size=64)),
]


def frontier(args, loaded, work: Path, log) -> None:
    """Perplexity and size only (no latency) for the FRONTIER configs; writes frontier.json/.md."""
    from edgecomp.llm.generate import CausalLMSession, nll_of_ids, torch_nll
    from edgecomp.llm.quantize import LlmQuantConfig, quantize_causal_lm
    from edgecomp.llm.sizes import onnx_llm_size_breakdown

    slim = work / "fp32-slim.onnx"
    if not slim.exists():
        build_variants(loaded, work, log)
    windows = wikitext_windows(loaded.tokenizer, wikitext_valid(), args.window, args.max_tokens)
    scored = sum(len(w) - 1 for w in windows)
    ref = float(np.exp(sum(torch_nll(loaded.model, w) for w in windows) / scored))
    rows = [{"variant": "PyTorch fp32", "size_bytes": sum(p.stat().st_size for p in loaded.directory.glob("*.safetensors")),
             "perplexity": ref}]
    for label, kw in FRONTIER:
        cfg = LlmQuantConfig(**kw)
        dst = work / f"frontier.{cfg.name}.b{cfg.block_size}.t{cfg.table_block_size}.onnx"
        log(f"quantize {cfg}")
        quantize_causal_lm(slim, dst, cfg)
        sess = CausalLMSession(dst, 2)
        ppl = float(np.exp(sum(nll_of_ids(sess, w) for w in windows) / scored))
        rows.append({"variant": label, "config": kw, "size_bytes": dst.stat().st_size, "perplexity": ppl,
                     "size_breakdown": onnx_llm_size_breakdown(dst)})
        log(f"  {label}: {dst.stat().st_size / 1e6:.1f} MB, ppl {ppl:.3f} ({ppl / ref:.3f}x)")
    res = {"tokens_scored": scored, "window": args.window, "command": " ".join(sys.argv), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps(res, indent=1))
    lines = ["# SmolLM2-135M size-perplexity frontier (round-to-nearest weight-only, ONNX Runtime)\n",
             f"WikiText-2 valid, {len(windows)} windows of {args.window}, {scored} tokens scored. "
             f"Command: `{' '.join(sys.argv)}`\n", "| variant | MB | perplexity | x fp32 |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['size_bytes'] / 1e6:.1f} | {r['perplexity']:.3f} | {r['perplexity'] / ref:.3f} |"
              for r in rows]
    (args.out / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=8192, help="WikiText-2 tokens to use (whole windows)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5, help="latency rounds (median)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--work", type=Path, default=None, help="artifact folder (default: edgecomp cache)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "llm")
    ap.add_argument("--only", default="", help="comma-separated substrings: bench only matching variants")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="also measure this artifact (.onnx/.ort/.tflite with a KV cache)")
    ap.add_argument("--frontier", action="store_true", help="only the size-perplexity frontier (no latency)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    import edgecomp.llm  # noqa: F401  (registers the gguf source)
    import edgecomp.tasks.text_generation  # noqa: F401  (until tasks/__init__ imports it)
    from edgecomp.llm.gguf_source import gguf_origin
    from edgecomp.models import load_model, resolve_model
    from edgecomp.paths import cache_dir
    from edgecomp.llm.sizes import onnx_llm_size_breakdown

    def log(s):
        print(f"[{time.strftime('%H:%M:%S')}] {s}", flush=True)

    loaded = load_model(resolve_model("smollm2-135m"))
    tok = loaded.tokenizer
    work = args.work or cache_dir() / "bench-llm"
    if args.frontier:
        return frontier(args, loaded, work, log)
    variants = [TorchVariant(loaded.model, loaded.directory)] + build_variants(loaded, work, log)
    gguf = gguf_origin(loaded.directory)
    try:
        import llama_cpp  # noqa: F401

        variants.append(LlamaCppVariant(gguf, args.window))
    except ImportError:
        log("llama-cpp-python not installed: llama.cpp row skipped")
    for spec in args.extra:  # e.g. the android .tflite: "LiteRT int4 block32=out/model.tflite"
        name, _, path = spec.rpartition("=")
        variants.append(OrtVariant(name or Path(path).name, path, note="extra artifact"))
    if args.only:
        keys = [k.strip().lower() for k in args.only.split(",")]
        variants = [v for v in variants if v.kind == "reference" or any(k in v.name.lower() for k in keys)]

    windows = wikitext_windows(tok, wikitext_valid(), args.window, args.max_tokens)
    scored = sum(len(w) - 1 for w in windows)
    log(f"WikiText-2 valid: {len(windows)} windows x {args.window} tokens, {scored} tokens scored")
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    prompt128 = (prompt * 8)[:128]

    rows = []
    ref_greedy = variants[0].greedy(prompt, 32)
    for v in variants:
        log(f"perplexity: {v.name}")
        t0 = time.time()
        nll = sum(v.nll(w) for w in windows)
        g = v.greedy(prompt, 32)
        match = next((i for i, (a, b) in enumerate(zip(ref_greedy, g)) if a != b), len(ref_greedy))
        row = {"variant": v.name, "kind": v.kind, "note": v.note, "size_bytes": v.size(),
               "perplexity": float(np.exp(nll / scored)), "nll_sum": nll, "tokens_scored": scored,
               "greedy_match_vs_pytorch": match, "ppl_seconds": round(time.time() - t0, 1)}
        if isinstance(v, OrtVariant) and v.path.suffix == ".onnx":
            row["size_breakdown"] = onnx_llm_size_breakdown(v.path)
        rows.append(row)
        log(f"  ppl {row['perplexity']:.3f}  match {match}/32  {row['size_bytes'] / 1e6:.1f} MB")

    threads = [int(t) for t in args.threads.split(",")]
    lat = {(v.name, t): {"prefill_ms": [], "tok_s": []} for v in variants for t in threads}
    for t in threads:
        for v in variants:  # warm-up
            v.timed(prompt128, t, 4)
        for r in range(args.runs):
            log(f"latency round {r + 1}/{args.runs}, {t} thread(s)")
            for v in variants:
                p, s = v.timed(prompt128, t, args.decode_tokens)
                lat[(v.name, t)]["prefill_ms"].append(p)
                lat[(v.name, t)]["tok_s"].append(s)
    for v, row in zip(variants, rows):
        for t in threads:
            d = lat[(v.name, t)]
            row[f"prefill128_ms_{t}t"] = round(statistics.median(d["prefill_ms"]), 1)
            row[f"decode_tok_s_{t}t"] = round(statistics.median(d["tok_s"]), 2)
        v.close()
    log("peak RSS (fresh processes)")
    for v, row in zip(variants, rows):
        kind = "torch-causal-lm" if isinstance(v, TorchVariant) else "llama.cpp" if isinstance(v, LlamaCppVariant) else "causal-lm"
        row["peak_rss_mib"] = peak_rss(kind, v.dir if isinstance(v, TorchVariant) else v.path)

    import onnxruntime

    fp32_ppl = rows[0]["perplexity"]
    result = {"model": "smollm2-135m", "data": "WikiText-2 valid (detokenized)", "window": args.window,
              "windows": len(windows), "tokens_scored": scored, "threads": threads, "runs": args.runs,
              "decode_tokens": args.decode_tokens, "prompt_tokens": 128,
              "host": {"cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                       "loadavg": os.getloadavg()},
              "command": " ".join(sys.argv), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / ".bench_llm.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out / "bench_llm.json")
    peer = next((r for r in rows if r["kind"] == "peer" and "optimum" in r["variant"]), None)
    lines = [f"# SmolLM2-135M: edgecomp exports vs PyTorch and the peer\n",
             f"WikiText-2 valid, detokenized, {len(windows)} windows of {args.window} tokens, **{scored} tokens scored**. "
             f"Latency: batch 1, 128-token prompt, {args.decode_tokens} decode steps, median of {args.runs} interleaved "
             f"rounds; peak RSS: median of 3 fresh processes (1 thread). Host: {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f} at the end (shared machine: compare ratios within this table only).\n",
             f"Command: `{' '.join(sys.argv)}`\n",
             "| variant | MB | peak RSS MiB | perplexity | x fp32 | greedy match /32 | prefill 128 ms (1t / 2t) | decode tok/s (1t / 2t) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pre = " / ".join(str(r.get(f"prefill128_ms_{t}t")) for t in threads)
        dec = " / ".join(str(r.get(f"decode_tok_s_{t}t")) for t in threads)
        lines.append(f"| {r['variant']} | {r['size_bytes'] / 1e6:.1f} | {r['peak_rss_mib']} | {r['perplexity']:.3f} | "
                     f"{r['perplexity'] / fp32_ppl:.3f} | {r['greedy_match_vs_pytorch']} | {pre} | {dec} |")
    if peer:
        lines += ["", "Ratios vs the peer (optimum + ORT int8 per-channel), same run:", "",
                  "| variant | size | peak RSS | perplexity | decode tok/s 1t |", "|---|---|---|---|---|"]
        for r in rows:
            if r["kind"] == "edgecomp":
                f = lambda k: (r[k] / peer[k]) if r.get(k) and peer.get(k) else float("nan")  # noqa: E731
                lines.append(f"| {r['variant']} | {f('size_bytes'):.2f} | {f('peak_rss_mib'):.2f} | "
                             f"{f('perplexity'):.3f} | {f('decode_tok_s_1t'):.2f} |")
    lines += ["", "Size breakdown (MB of initializers):", "", "| variant | embeddings | attention | feed-forward | other |",
              "|---|---|---|---|---|"]
    for r in rows:
        b = r.get("size_breakdown")
        if b:
            lines.append(f"| {r['variant']} | " + " | ".join(f"{b[k] / 1e6:.1f}" for k in
                                                               ("embeddings", "attention", "feed_forward", "other")) + " |")
    tmp = args.out / ".bench_llm.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out / "bench_llm.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
