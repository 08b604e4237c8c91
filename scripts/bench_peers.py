"""edgecomp's artifacts against the peers' standard recipes, measured interleaved in one run.

Peers (what a user would do without edgecomp):
  - optimum:      `optimum-cli export onnx` (fp32)
  - optimum+ORT:  `optimum-cli onnxruntime quantize --avx512 --per_channel` (dynamic int8, per-channel)
  - litert-torch: plain litert-torch conversion at [1, 128] with its dynamic int8 recipe
against an edgecomp export folder (default: a fresh `edgecomp export all-minilm-l6-v2 --target android`).

Every artifact gets the same inputs: latency at batch 1, sequence 128, 1 and 2 threads, interleaved in
rounds so machine noise hits all of them alike (medians over all rounds); peak RSS of a fresh process
that loads the artifact and runs once (median of 3, interleaved); embedding cosine vs PyTorch fp32 on
the 240 built-in sentences. Native memory through edgecomp's C probe (the runtimes' C APIs, no Python;
edgecomp/bench/native.py) on this host (median of 3 fresh processes) and, where scripts/setup_arm64.sh
was run, in the aarch64 guest: each peer with the runtime's defaults (what its user gets) and with the
session options edgecomp ships for its format, each edgecomp artifact with its manifest's options.
Writes results/peers/<model>.json and .md and prints the tables.

    python scripts/bench_peers.py [--export out/minilm-android] [--rounds 10] [--no-arm64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgecomp.quiet import quiet_third_party

quiet_third_party()

from edgecomp.bench import arm64  # noqa: E402
from edgecomp.bench.memory import peak_rss_mb  # noqa: E402
from edgecomp.bench.native import arm64_native_block, native_block, tflite_signature_feeds  # noqa: E402
from edgecomp.models import load_model, model_dir, resolve_model  # noqa: E402
from edgecomp.runtime.options import session_options  # noqa: E402
from edgecomp.studies.peers import PEER_TFLITE_DIR, FixedTFLite, build_peers, open_any  # noqa: E402
from edgecomp.tasks.feature_extraction import pool  # noqa: E402
from edgecomp.texts import default_texts, tokenize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent  # out/ and results/ of the checkout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--export", type=Path, action="append", default=None,
                    help="an edgecomp android export folder; repeat for several (default: export now)")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "peers")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs-per-round", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "peers")
    ap.add_argument("--no-arm64", action="store_true", help="skip the aarch64 guest probe (minutes per artifact)")
    args = ap.parse_args()
    t0 = time.time()

    def log(msg):
        print(f"{time.time() - t0:6.1f}s {msg}", file=sys.stderr, flush=True)

    spec = resolve_model(args.model)
    src_dir = model_dir(spec)
    args.work.mkdir(parents=True, exist_ok=True)
    exports = args.export or [args.work / "edgecomp-android"]
    if args.export is None and not (exports[0] / "manifest.json").exists():
        log("edgecomp export --target android")
        subprocess.run([sys.executable, "-m", "edgecomp.cli", "export", args.model, "--target", "android",
                        "-o", str(exports[0]), "--force", "--no-bench"], check=True)
    candidates = build_peers(src_dir, args.work, log)
    peer_names = list(candidates)
    records = {}
    for export in exports:
        manifest = json.loads((export / "manifest.json").read_text())
        recipe = manifest["recipe"]["name"]
        for a in manifest["artifacts"]:
            name = f"edgecomp {recipe} {a['format']} {a['precision']}"
            candidates[name], records[name] = export / a["path"], a

    loaded = load_model(spec)
    texts = default_texts()
    log(f"reference: PyTorch fp32 on {len(texts)} sentences")
    import torch

    feeds_list = [tokenize(loaded.tokenizer, texts[i:i + 16]) for i in range(0, len(texts), 16)]
    with torch.inference_mode():
        refs = [pool(loaded.model(**{k: torch.from_numpy(v) for k, v in f.items()}).last_hidden_state.numpy(),
                     f["attention_mask"], "mean", True) for f in feeds_list]
    bench_feeds = loaded.tokenizer([" ".join(texts)], truncation=True, max_length=128, padding="max_length", return_tensors="np")
    bench_feeds = {k: v.astype(np.int64) for k, v in bench_feeds.items()}

    rows = {name: {"path": str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p), "size_bytes": p.stat().st_size}
            for name, p in candidates.items()}
    for name, p in candidates.items():
        log(f"fidelity: {name}")
        r = open_any(p, 2)
        cos = np.concatenate([(pool(r.run({k: v for k, v in f.items() if k in r.input_names})["last_hidden_state"],
                                     f["attention_mask"], "mean", True) * ref).sum(-1) for f, ref in zip(feeds_list, refs)])
        rows[name].update(cos_mean=round(float(cos.mean()), 4), cos_min=round(float(cos.min()), 4))

    for threads in (1, 2):
        runners = {n: open_any(p, threads) for n, p in candidates.items()}
        times = {n: [] for n in runners}
        for n, r in runners.items():  # warm-up
            for _ in range(3):
                r.run({k: v for k, v in bench_feeds.items() if k in r.input_names})
        log(f"latency: {args.rounds} interleaved rounds x {args.runs_per_round} runs, {threads} thread(s)")
        for _ in range(args.rounds):
            for n, r in runners.items():
                f = {k: v for k, v in bench_feeds.items() if k in r.input_names}
                for _ in range(args.runs_per_round):
                    s = time.perf_counter()
                    r.run(f)
                    times[n].append((time.perf_counter() - s) * 1000)
        for n, t in times.items():
            rows[n][f"p50_ms_{threads}t"] = round(float(np.median(t)), 2)
        del runners

    log("peak RSS: fresh process per artifact, 3 interleaved repeats")
    rss = {n: [] for n in candidates}
    for _ in range(3):
        for n, p in candidates.items():
            kind = "fixed-tflite" if isinstance(open_any(p, 1), FixedTFLite) else "artifact"
            rss[n].append(peak_rss_mb(p, bench_feeds, threads=1, kind=kind))
    for n, v in rss.items():
        rows[n]["peak_rss_mb"] = round(float(np.median(v)), 1)

    native = native_rows(candidates, peer_names, records, bench_feeds, log, guest=not args.no_arm64)

    base = rows["optimum onnx fp32"]
    md = [f"# edgecomp vs peers: {args.model}", "",
          f"One run on {os.cpu_count()} x86 cores, {time.strftime('%Y-%m-%d')}; batch 1, sequence 128; medians of "
          f"{args.rounds}x{args.runs_per_round} interleaved runs; RSS of a fresh process (median of 3); cosine vs PyTorch fp32 "
          f"on {len(texts)} sentences. Ratios are against the optimum fp32 ONNX export.", "",
          "| artifact | MB | size ratio | peak RSS MB | RSS ratio | p50 ms 1 thr | latency ratio | p50 ms 2 thr | cos mean | cos worst |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in rows.items():
        md.append(f"| {n} | {r['size_bytes'] / 1e6:.1f} | {r['size_bytes'] / base['size_bytes']:.2f} | {r['peak_rss_mb']} | "
                  f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {r['p50_ms_1t']} | {r['p50_ms_1t'] / base['p50_ms_1t']:.2f} | "
                  f"{r['p50_ms_2t']} | {r['cos_mean']} | {r['cos_min']} |")
    md += ["", *native_table(native, peer_names)]
    md += ["", f"Command: `python scripts/bench_peers.py` ({time.time() - t0:.0f} s)."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.model}.json").write_text(json.dumps({"model": args.model, "rows": rows, "native": native},
                                                            indent=2) + "\n")
    (args.out / f"{args.model}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def probe_feeds(path: Path, record: dict | None, feeds: dict) -> tuple[dict, str | None]:
    """The bench feeds under the names and signature the artifact takes: the plain litert-torch peer has one
    [1, 128] signature whose inputs are args_0..2 (input_ids, attention_mask, token_type_ids)."""
    if path.parent.name == PEER_TFLITE_DIR:
        return {f"args_{i}": feeds[k] for i, k in enumerate(("input_ids", "attention_mask", "token_type_ids"))}, None
    taken = {k: v for k, v in feeds.items() if record is None or k in record.get("inputs", feeds)}
    if path.suffix == ".tflite":
        return tflite_signature_feeds(taken, (record or {}).get("seq_buckets"))
    return taken, None


def native_rows(candidates: dict, peer_names: list, records: dict, feeds: dict, log, guest: bool) -> dict:
    """Native peak RSS per (artifact, options): host median of 3 fresh probe runs, one guest run."""
    guest = guest and arm64.env_present()
    settings = []
    for name, path in candidates.items():
        if name in peer_names:
            settings.append((name, "runtime defaults", path, {}))
            if session_options(path):
                settings.append((name, "edgecomp's options", path, session_options(path)))
        else:
            settings.append((name, "edgecomp's options", path, records[name].get("session_options", session_options(path))))
    out = {}
    for name, label, path, opts in settings:
        fed, sig = probe_feeds(path, records.get(name), feeds)
        log(f"native probe: {name} ({label})")
        blocks = sorted((native_block(path, fed, options=opts, signature=sig, runs=5)[0] for _ in range(3)),
                        key=lambda b: b["peak_rss_mb"])
        row = {"artifact": name, "options_label": label, "size_mb": round(path.stat().st_size / 1e6, 1),
               "host": blocks[1]}
        if guest:
            log(f"native probe in the aarch64 guest: {name} ({label})")
            row["guest"] = arm64_native_block(path, fed, options=opts, signature=sig)[0]
        out[f"{name} | {label}"] = row
    return out


def native_table(native: dict, peer_names: list) -> list[str]:
    best_peer = min((r for r in native.values() if r["artifact"] in peer_names), key=lambda r: r["host"]["peak_rss_mb"])
    best_ours = min((r for r in native.values() if r["artifact"] not in peer_names), key=lambda r: r["host"]["peak_rss_mb"])
    lines = ["## Native memory (the runtimes' C APIs, no Python)", "",
             "batch 1, sequence 128, 1 thread; host: median of 3 fresh probe processes; guest: one qemu-aarch64 "
             "(cortex-a76) run. `smaps` is where the resident memory sits after the timed runs.", "",
             "| artifact | session options | MB | native peak RSS MB (x86) | anon / file MB | load ms | p50 ms | "
             "guest peak RSS MB | guest instr/inference (M) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in native.values():
        h, g = r["host"], r.get("guest") or {}
        instr = g.get("instructions_per_inference")
        lines.append(f"| {r['artifact']} | {r['options_label']} | {r['size_mb']} | {h['peak_rss_mb']} | "
                     f"{h['anon_mb']} / {h['file_mb']} | {h['load_ms']} | {h['latency_ms']['p50']} | "
                     f"{g.get('peak_rss_mb', '—')} | {round(instr / 1e6, 1) if instr else '—'} |")
    ratio = best_ours["host"]["peak_rss_mb"] / best_peer["host"]["peak_rss_mb"]
    lines += ["", f"Best edgecomp artifact ({best_ours['artifact']}, {best_ours['host']['peak_rss_mb']} MB) against the "
                  f"best peer ({best_peer['artifact']}, {best_peer['options_label']}, {best_peer['host']['peak_rss_mb']} MB): "
                  f"{ratio:.2f}x native peak RSS on x86."]
    if "guest" in best_ours and "guest" in best_peer:
        g_ours = min(r["guest"]["peak_rss_mb"] for r in native.values() if r["artifact"] not in peer_names)
        g_peer = min(r["guest"]["peak_rss_mb"] for r in native.values() if r["artifact"] in peer_names)
        lines.append(f"In the aarch64 guest: best edgecomp {g_ours} MB, best peer {g_peer} MB ({g_ours / g_peer:.2f}x).")
    return lines


if __name__ == "__main__":
    main()
