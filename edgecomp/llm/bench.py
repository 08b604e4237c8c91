"""Measure an exported causal LM the way it is used: verification against PyTorch (greedy tokens, NLL), the
latency of one decode step through the KV cache (tokens per second), and the peak RSS of a fresh process
that loads the artifact, prefills a prompt and decodes a few tokens. Every figure runs through the same
sessions as ``edgecomp run`` (``open_causal_lm``), for .onnx, .ort and .tflite alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgecompError
from .generate import open_causal_lm

def benchmark_prompt(tokenizer, texts: list[str], seq_len: int, room: int | None = None) -> list[int]:
    """``seq_len`` real tokens (the texts joined, repeated if short), fewer if the cache has less ``room``."""
    ids: list[int] = []
    joined = " ".join(texts)
    while joined and len(ids) < seq_len:
        ids += tokenizer(joined, add_special_tokens=False)["input_ids"] or [0]
    n = seq_len if room is None else max(1, min(seq_len, room))
    return (ids or [0])[:n]


def _room(sess, steps: int) -> int | None:
    cache_len = getattr(sess, "cache_len", None)  # LiteRT: a fixed KV cache; ONNX Runtime grows its own
    return None if cache_len is None else cache_len - steps - 1


def decode_latency(path: Path, prompt_ids: list[int], threads: int, warmup: int, runs: int) -> dict:
    """Per decode step after ``prompt_ids``: median / p90 ms over ``runs`` steps, after ``warmup`` steps."""
    sess = open_causal_lm(path, threads)
    t0 = time.perf_counter()
    logits, cache = sess.step(np.asarray(prompt_ids), 0, sess.empty_cache())
    prefill_ms = (time.perf_counter() - t0) * 1e3
    tok, pos, times = int(logits[-1].argmax()), len(prompt_ids), []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        logits, cache = sess.step(np.asarray([tok]), pos, cache)
        dt = (time.perf_counter() - t0) * 1e3
        tok, pos = int(logits[-1].argmax()), pos + 1
        if i >= warmup:
            times.append(dt)
    t = np.asarray(times)
    p50 = float(np.median(t))
    return {"p50": round(p50, 3), "p90": round(float(np.percentile(t, 90)), 3), "runs": runs,
            "tokens_per_s": round(1e3 / p50, 1), "prefill_ms": round(prefill_ms, 2)}


def decode_latency_block(path: Path, prompt_ids: list[int], threads_list, warmup: int, runs: int) -> dict:
    """The manifest's ``latency_ms`` block (the encoders' shape, so reports and comparisons read it), per decode step."""
    block = {"measures": "decode step (1 token, KV cache)", "batch": 1, "seq_len": len(prompt_ids), "threads": {}}
    for th in threads_list:
        block["threads"][str(th)] = decode_latency(path, prompt_ids, th, warmup, runs)
    first = block["threads"][str(threads_list[0])]
    block.update(p50=first["p50"], p90=first["p90"], tokens_per_s=first["tokens_per_s"], threads_default=threads_list[0])
    return block


def peak_rss_mb(path: Path, prompt_ids: list[int], decode_steps: int = 8, threads: int = 1) -> float:
    """Peak RSS (MB) of a fresh process (runtime + numpy only) that loads ``path``, prefills ``prompt_ids`` and
    decodes ``decode_steps`` tokens (``python -m edgecomp.llm.bench``)."""
    from ..bench.memory import _drop_from_page_cache

    _drop_from_page_cache(Path(path))
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Path(tmp) / "prompt.json"
        prompt.write_text(json.dumps(prompt_ids))
        proc = subprocess.run([sys.executable, "-m", "edgecomp.llm.bench", str(path), str(prompt), str(decode_steps),
                               str(threads)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgecompError(f"the memory probe failed on {Path(path).name}: {tail}",
                            "check that the artifact runs with `edgecomp run --generate 8`")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def measure_causal_lm(path: Path, loaded, texts: list[str], target, bench: bool,
                      log: Callable[[str], None] = lambda s: None) -> dict:
    """The manifest ``metrics`` of one causal-LM artifact: fidelity, and with ``bench`` decode latency + RSS."""
    from .export import _default_texts, verify_causal_lm

    texts = texts or _default_texts()
    log(f"verify: {Path(path).name} greedy decoding + NLL vs PyTorch")
    metrics = {"fidelity": verify_causal_lm(Path(path), loaded, texts), "latency_ms": None, "peak_rss_mb": None}
    if bench:
        b = target.bench
        room = _room(open_causal_lm(path, 1), b.warmup + b.runs)
        prompt = benchmark_prompt(loaded.tokenizer, texts, b.seq_len, room)
        log(f"bench: {Path(path).name} decode steps after a {len(prompt)}-token prompt (threads {list(b.threads)}) "
            "and fresh-process peak RSS")
        metrics["latency_ms"] = decode_latency_block(path, prompt, b.threads, b.warmup, b.runs)
        metrics["peak_rss_mb"] = peak_rss_mb(path, prompt, min(8, b.runs))
    return metrics


def _probe_main() -> None:
    from ..bench.probe import peak_rss_kib

    path, prompt, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    open_causal_lm(path, threads).greedy(json.loads(Path(prompt).read_text()), steps + 1)
    print(json.dumps({"peak_rss_mb": round(peak_rss_kib() / 1024, 1)}))


if __name__ == "__main__":
    _probe_main()
