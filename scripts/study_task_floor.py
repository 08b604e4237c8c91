#!/usr/bin/env python3
"""Size vs task quality of compressed all-MiniLM-L6-v2 artifacts: STS-B dev Spearman and the SST-2 probe
beside cosine, for every combination in edgecomp.studies.task_floor.COMBOS (weights: RTN / GPTQ / HQQ /
k-quant, 2-bit FFN; tables: frequency-aware, vocab-trim, uniform, SVD; distillation).

    nice python scripts/study_task_floor.py --only rtn-b32,gptq-b32      # a minute or two per combination
    nice python scripts/study_task_floor.py --quick                      # the QUICK list
    python scripts/study_task_floor.py --render results/compression/task_floor.json

Writes results/compression/task_floor.{json,md,png} (atomically; measured rows are kept across runs:
--only adds to the existing JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edgecomp.manifest import write_text_atomic
from edgecomp.studies import task_floor as tf

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated combinations: " + ", ".join(tf.COMBOS))
    ap.add_argument("--quick", action="store_true", help="the QUICK combinations, fewer probe texts")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sts-pairs", type=int, help="a fixed random subset of the STS dev pairs (default: all 1500)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "compression")
    ap.add_argument("--tag", default="task_floor")
    ap.add_argument("--fresh", action="store_true", help="drop the rows measured before")
    ap.add_argument("--artifact", type=Path, nargs="*", default=[],
                    help="also measure exported artifacts (e.g. out/model.onnx out/model.ort of `--recipe tiny`)")
    ap.add_argument("--artifact-note", default="", help="the note of the --artifact rows (how they were made)")
    ap.add_argument("--domain-files", type=Path, metavar="DIR",
                    help="only write the study's domain text to DIR: ranking-corpus.txt (what the domain-ranked rows are "
                         "ranked on) and calibration.txt (its calibration / distillation sentences), for an export")
    ap.add_argument("--render", type=Path, help="only re-render the Markdown and plot of a JSON result")
    args = ap.parse_args()
    out = args.out / f"{args.tag}.json"
    if args.render:
        res = json.loads(args.render.read_text())
        res["claims"], res["frontier"] = tf.claims(res["configs"]), tf.frontier(res["configs"])
        write_text_atomic(args.render, tf.dumps(res))
        write_text_atomic(args.render.with_suffix(".md"), tf.markdown(res))
        tf.plot(res, args.render.with_suffix(".png"))
        return
    if args.domain_files:
        args.domain_files.mkdir(parents=True, exist_ok=True)
        tf.ranking_corpus(args.domain_files / "ranking-corpus.txt")
        tf.calibration_file(args.domain_files / "calibration.txt", args.quick)
        print(f"wrote {args.domain_files / 'ranking-corpus.txt'} and {args.domain_files / 'calibration.txt'}")
        return
    names = args.only.split(",") if args.only is not None else (tf.QUICK if args.quick else list(tf.COMBOS))
    names = [n for n in names if n]
    unknown = [n for n in names if n not in tf.COMBOS]
    if unknown:
        ap.error(f"unknown combination(s) {unknown}; known: {', '.join(tf.COMBOS)}")
    import torch

    torch.set_num_threads(args.threads)
    old = json.loads(out.read_text()) if out.exists() and not args.fresh else {"configs": {}, "errors": {}}
    configs, errors = dict(old["configs"]), dict(old.get("errors", {}))
    work = Path(tempfile.mkdtemp(prefix="edgecomp-taskfloor-"))
    proto = tf.setup(work, args.quick, args.sts_pairs)
    print(json.dumps({"reference": {k: proto.reference[k] for k in ("sts_spearman", "sst2_probe")}}), flush=True)
    command = " ".join(["python", "scripts/study_task_floor.py", *sys.argv[1:]])
    for name in names:
        try:
            configs[name] = tf.measure_combo(name, tf.COMBOS[name], proto, work, args.threads)
            errors.pop(name, None)
        except Exception as e:  # one impossible combination must not end the study
            errors[name] = f"{type(e).__name__}: {e}"
        print(json.dumps({name: {k: configs.get(name, {}).get(k) for k in ("size_bytes", "sts_drop", "sst2_drop", "cos_mean", "seconds")}
                          if name in configs and name not in errors else errors[name]}), flush=True)
        res = tf.result(proto, configs, errors, command, args.quick)
        write_text_atomic(out, tf.dumps(res))
    for path in args.artifact:
        name = f"export:{path.parent.name}/{path.name}"
        configs[name] = tf.measure_artifact(path, proto, args.threads, args.artifact_note)
        print(json.dumps({name: {k: configs[name][k] for k in ("size_bytes", "sts_drop", "sst2_drop", "cos_mean")}}), flush=True)
        res = tf.result(proto, configs, errors, command, args.quick)
        write_text_atomic(out, tf.dumps(res))
    write_text_atomic(out.with_suffix(".md"), tf.markdown(res))
    tf.plot(res, out.with_suffix(".png"))
    print(tf.markdown(res))


if __name__ == "__main__":
    main()
