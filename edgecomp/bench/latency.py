"""Latency of one artifact on its runtime: median and p90 after warm-up, per thread count.

Feeds are real text tokenized to exactly ``seq_len`` tokens (texts joined, then truncated), so the
attention cost is the one a ``seq_len`` input really has.
"""

from __future__ import annotations

import time

import numpy as np

from ..runtime import open_artifact


def benchmark_feeds(tokenizer, texts: list[str], batch: int, seq_len: int, input_names) -> dict[str, np.ndarray]:
    enc = tokenizer([" ".join(texts)] * batch, truncation=True, max_length=seq_len, padding="max_length",
                    return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items() if k in input_names}


def measure_latency(path, feeds: dict[str, np.ndarray], threads: int, warmup: int = 5, runs: int = 30) -> dict:
    runner = open_artifact(path, threads=threads)
    f = {k: v for k, v in feeds.items() if k in runner.input_names}
    for _ in range(warmup):
        runner.run(f)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(f)
        times.append((time.perf_counter() - t0) * 1000)
    t = np.asarray(times)
    return {"p50": round(float(np.median(t)), 3), "p90": round(float(np.percentile(t, 90)), 3), "runs": runs}


def latency_block(path, feeds, threads_list, warmup, runs) -> dict:
    b, s = next(iter(feeds.values())).shape
    block = {"batch": int(b), "seq_len": int(s), "threads": {}}
    for th in threads_list:
        block["threads"][str(th)] = measure_latency(path, feeds, th, warmup, runs)
    first = block["threads"][str(threads_list[0])]
    # Top-level p50/p90 are the first thread count's (1 thread: the phone-core case).
    block.update(p50=first["p50"], p90=first["p90"], threads_default=threads_list[0])
    return block
