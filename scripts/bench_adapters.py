"""Task adapters on real MiniLM: head-only, LoRA r=8, LoRA-XS r=4/8/16/25 and full fine-tuning on SST-2 and STS
(quality, trainable params, bytes per task), then one base + 3 adapters vs 3 separate models (peak RSS, latency,
time to switch task) in fresh subprocesses. Resumable: each quality row is cached under OUT/cache.

    nice -n 10 python scripts/bench_adapters.py [--steps 40] [--dev-rows 500] [--tasks sst2 sts]
                                                [--rows lora:8 lora-xs:16] [--no-memory] [--out results/adapters]

Logic in edgecomp/adapt/bench.py; writes OUT/bench_adapters.json and OUT/bench_adapters.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from edgecomp.adapt import bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder with sst2/ and sts/")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--dev-rows", type=int, default=500, help="dev rows per task (0: all)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per memory setup")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--tasks", nargs="+", default=list(bench.TASKS), choices=list(bench.TASKS))
    ap.add_argument("--rows", nargs="+", default=None, metavar="METHOD[:RANK]",
                    help="a subset of the rows, e.g. lora:8 lora-xs:16 (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="train every row once per seed (the spread is the noise)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "adapters")
    a = ap.parse_args()
    t0 = time.time()
    log = lambda s: print(f"{time.time() - t0:7.1f}s {s}", flush=True)  # noqa: E731
    rows = bench.ROWS
    if a.rows:
        wanted = {(m, int(r) if r else None) for m, _, r in (x.partition(":") for x in a.rows)}
        rows = tuple(r for r in bench.ROWS if r in wanted)
    report = bench.run(a.model, a.data, a.out, steps=a.steps, dev_rows=a.dev_rows or None, repeats=a.repeats,
                       memory=not a.no_memory, tasks=tuple(a.tasks), rows=rows, seeds=tuple(a.seeds), log=log)
    report["command"] = ("nice -n 10 python scripts/bench_adapters.py " + " ".join(sys.argv[1:])).strip()
    complete = rows == bench.ROWS and set(a.tasks) == set(bench.TASKS) and not a.no_memory and a.seeds == [0]
    # every run is kept under its step count; the complete one is also the headline file
    seeds = "" if a.seeds == [0] else "_seeds" + "-".join(map(str, a.seeds))
    stems = [a.out / (f"bench_adapters_steps{a.steps}{seeds}" + ("" if complete else "_partial"))]
    stems += [a.out / "bench_adapters"] if complete else []
    for stem in stems:
        Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
        Path(f"{stem}.md").write_text(bench.markdown(report))
    print(bench.markdown(report))


if __name__ == "__main__":
    main()
