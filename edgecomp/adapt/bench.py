"""The adapter benchmark (scripts/bench_adapters.py is its front-end): task quality, trainable parameters
and bytes per task of head-only, LoRA, LoRA-XS at several ranks and full fine-tuning on two tasks, then one
exported base serving 3 adapters against 3 separate models: peak RSS, latency and the time to switch task,
each measured in a fresh subprocess, side by side in one run.

Every quality row is cached as JSON (``cache/<key>.json``) so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .config import AdaptConfig

ROWS = (("head-only", None), ("lora", 8), ("lora-xs", 4), ("lora-xs", 8), ("lora-xs", 16), ("lora-xs", 25), ("full", None))
TASKS = {  # name -> (adapt task, train file, dev file) under the data folder
    "sst2": ("classification", "sst2/train.tsv", "sst2/dev.tsv"),
    "sts": ("sts", "sts/sts-train.tsv", "sts/sts-dev.tsv"),
}
MEMORY_RANK = 16


def row_key(task: str, method: str, rank, steps: int, dev_rows, seed: int = 0) -> str:
    return f"{task}-{method}-r{rank or 0}-s{steps}-d{dev_rows or 'all'}" + (f"-seed{seed}" if seed else "")


def quality_row(base, tokenizer, task: str, method: str, rank, steps: int, train_data, dev_data, cache: Path,
                adapters: Path, dev_rows, log, seed: int = 0) -> dict:
    """Train one method on one task (a copy of the base), evaluate on dev; the row, cached."""
    from .modules import module_state
    from .onnx import adapter_tensors, write_onnx_adapter
    from .train import evaluate, label_names, train

    key = row_key(task, method, rank, steps, dev_rows, seed)
    hit = cache / f"{key}.json"
    if hit.is_file():
        return {"seed": 0, **json.loads(hit.read_text())}
    kind = TASKS[task][0]
    cfg = AdaptConfig(method=method, rank=rank or 1, task=kind, steps=steps, seed=seed)
    model = copy.deepcopy(base)
    labels = label_names(train_data) if kind == "classification" else None
    log(f"{key}: train")
    t0 = time.time()
    head, res = train(model, tokenizer, cfg, train_data, labels)
    quality = evaluate(model, tokenizer, kind, dev_data, head, labels)
    row = {"task": task, "method": method, "rank": rank, "steps": steps, "seed": seed, "lr": cfg.learning_rate,
           "trainable_params": res.trainable_params, **{f"train_{k}": v for k, v in res.to_json().items()
                                                         if k not in ("trainable_params", "steps")},
           "quality": quality, "dev_rows": len(dev_data), "seconds": round(time.time() - t0, 1)}
    state = module_state(model)
    if method in ("lora-xs", "head-only") and (state or head is not None):
        tensors = adapter_tensors(state, *((head.weight, head.bias) if head is not None else ()))
        adapters.mkdir(parents=True, exist_ok=True)
        row["bytes_per_task"] = write_onnx_adapter(adapters / f"{key}.onnx_adapter", tensors)
        row["bytes_what"] = ".onnx_adapter (R per module + head)"
        if method == "lora-xs":
            from .modules import adapted

            fat = dict(tensors)
            for n, m in adapted(model).items():
                fat[f"{n}.lora_a_t"] = m.lora_a_t.numpy()
                fat[f"{n}.lora_b_t"] = m.lora_b_t.numpy()
            row["bytes_if_factors_per_adapter"] = write_onnx_adapter(adapters / f"{key}-with-factors.onnx_adapter", fat)
            (adapters / f"{key}-with-factors.onnx_adapter").unlink()
            _save_stored(adapters / key, model, cfg, head, labels, state, quality)
    elif method == "lora":
        row["bytes_per_task"] = 4 * res.trainable_params
        row["bytes_what"] = "fp32 D, U per module + head (no ONNX slots for plain LoRA)"
    elif method == "full":
        row["bytes_per_task"] = 4 * sum(p.numel() for p in model.parameters()) + (4 * sum(p.numel() for p in head.parameters()) if head is not None else 0)
        row["bytes_what"] = "a whole fp32 model per task"
    else:
        row["bytes_per_task"] = 0
        row["bytes_what"] = "nothing: the base embedding is the task"
    log(f"{key}: {quality['metric']} {quality['value']:.2f} ({row['trainable_params']} params, {row['seconds']} s)")
    cache.mkdir(parents=True, exist_ok=True)
    hit.write_text(json.dumps(row, indent=1))
    return row


def _save_stored(folder: Path, model, cfg, head, labels, state, quality) -> None:
    """The adapter folder (`edgecomp adapt`'s) the memory part exports with the base."""
    import shutil

    from .modules import detach, fingerprint
    from .store import HEAD_PREFIX, write_adapter

    base = copy.deepcopy(model)
    detach(base)
    tensors = dict(state)
    if head is not None:
        tensors[HEAD_PREFIX + "weight"] = head.weight.detach().clone()
        tensors[HEAD_PREFIX + "bias"] = head.bias.detach().clone()
    if folder.exists():
        shutil.rmtree(folder)
    write_adapter(folder, {"name": folder.name, "config": cfg.to_json(), "labels": labels,
                           "base": {"fingerprint": fingerprint(base, cfg.roles)},
                           "train": {"trainable_params": sum(v.numel() for v in tensors.values())}, "quality": quality},
                  tensors)


# --- one base + 3 adapters vs 3 separate models ---------------------------------------------------------------
PROBE = r'''
import json, resource, statistics, sys, time
import numpy as np, onnxruntime as ort
mode, feeds_path, *paths = sys.argv[1:]
feeds = dict(np.load(feeds_path))
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1; so.log_severity_level = 3
def session(p):
    return ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
def rss():
    # VmHWM belongs to the address space exec made; ru_maxrss would carry the forking parent's peak
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
out = {"mode": mode}
if mode == "adapters":
    t = time.perf_counter(); s = session(paths[0]); out["session_load_ms"] = (time.perf_counter() - t) * 1e3
    loads, adapters = [], []
    for p in paths[1:]:
        t = time.perf_counter(); a = ort.LoraAdapter(); a.Load(p); loads.append((time.perf_counter() - t) * 1e3); adapters.append(a)
    out["adapter_load_ms"] = statistics.median(loads)
    opts = []
    for a in adapters:
        ro = ort.RunOptions(); ro.add_active_adapter(a); opts.append(ro)
    for ro in opts:
        s.run(None, feeds, ro)
    switch, run_switched, run_same = [], [], []
    for i in range(30):
        a = adapters[i % len(adapters)]
        t = time.perf_counter(); ro = ort.RunOptions(); ro.add_active_adapter(a); switch.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter(); s.run(None, feeds, ro); run_switched.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter(); s.run(None, feeds, ro); run_same.append((time.perf_counter() - t) * 1e3)
    plain = []
    for i in range(10):
        t = time.perf_counter(); s.run(None, feeds); plain.append((time.perf_counter() - t) * 1e3)
    out.update(switch_ms=statistics.median(switch), run_after_switch_ms=statistics.median(run_switched),
               run_same_task_ms=statistics.median(run_same), run_no_adapter_ms=statistics.median(plain))
else:
    sessions, loads = [], []
    for p in paths:
        t = time.perf_counter(); sessions.append(session(p)); loads.append((time.perf_counter() - t) * 1e3)
    out["session_load_ms"] = statistics.median(loads)
    for s in sessions:
        s.run(None, feeds)
    runs = []
    for i in range(30):
        s = sessions[i % len(sessions)]
        t = time.perf_counter(); s.run(None, feeds); runs.append((time.perf_counter() - t) * 1e3)
    out["run_ms"] = statistics.median(runs)
out["peak_rss_mb"] = rss()
print(json.dumps(out))
'''


def _probe(mode: str, feeds: Path, paths: list[Path]) -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE, mode, str(feeds), *map(str, paths)], capture_output=True, text=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def memory_block(model_name: str, adapters: list[Path], work: Path, repeats: int, log) -> dict:
    """Export the base with the adapters (the shipped path: pipeline.export), then probe in fresh processes:
    one plain model (the base without slots), one base with slots + 3 adapters, 3 separate plain models (three
    files: a fine-tuned copy per task has the plain model's size and graph; the values do not matter here)."""
    from ..pipeline import ExportOptions, export
    from ..texts import default_texts
    from .export import AdapterSlots
    from .onnx import strip_slots

    out = work / "export"
    if not (out / "manifest.json").is_file():
        log("memory: export the base with its adapter slots and the adapters (cpu-x86)")
        slots = AdapterSlots.from_options(None, None, adapters)
        export(model_name, "cpu-x86", out, ExportOptions(texts=default_texts()[:32], bench=False, checks=False,
                                                         adapters=slots), force=True, log=log)
    manifest = json.loads((out / "manifest.json").read_text())
    base = out / manifest["artifacts"][0]["path"]  # the primary (int8) artifact
    files = [out / a["path"] for a in manifest["adapters"]["adapters"]]
    import shutil

    merged = [work / "separate-0.onnx"]
    strip_slots(base, merged[0])
    for i in (1, 2):
        merged.append(Path(shutil.copy(merged[0], work / f"separate-{i}.onnx")))
    from ..texts import tokenize
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    feeds = tokenize(tok, [" ".join(default_texts()[:12])], 128)
    feeds_path = work / "feeds.npz"
    np.savez(feeds_path, **feeds)
    runs = {"one_model": [], "base_3_adapters": [], "three_models": []}
    for _ in range(repeats):  # interleaved, so drift on the shared machine hits each the same
        runs["one_model"].append(_probe("models", feeds_path, [merged[0]]))
        runs["base_3_adapters"].append(_probe("adapters", feeds_path, [base, *files]))
        runs["three_models"].append(_probe("models", feeds_path, merged))
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0] if m != "mode"} for k, v in runs.items()}
    one = med["one_model"]["peak_rss_mb"]
    return {"base_artifact": base.name, "base_bytes": base.stat().st_size, "adapters": [f.name for f in files],
            "adapter_bytes": [f.stat().st_size for f in files], "plain_model_bytes": merged[0].stat().st_size,
            "slot_bytes": manifest["adapters"]["slots"]["slot_bytes"],
            "feeds": {"batch": 1, "seq_len": int(feeds["input_ids"].shape[1])}, "repeats": repeats,
            "median": med, "rss_base_3_adapters_vs_one_model": round(med["base_3_adapters"]["peak_rss_mb"] / one, 3),
            "rss_three_models_vs_one_model": round(med["three_models"]["peak_rss_mb"] / one, 3),
            "manifest_adapters": manifest["adapters"]["adapters"]}


def run(model_name: str, data_dir: Path, out_dir: Path, steps: int = 40, dev_rows: int | None = 500,
        tasks=("sst2", "sts"), rows=ROWS, repeats: int = 3, memory: bool = True, seeds=(0,), log=print) -> dict:
    import torch

    from ..models import load_model, resolve_model
    from .train import read_task_data, subset

    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache, adapters = out_dir / "cache", out_dir / "work" / "adapters"
    loaded = load_model(resolve_model(model_name))
    results = []
    for task in tasks:
        kind, train_file, dev_file = TASKS[task]
        train_data = read_task_data(data_dir / train_file, kind)
        dev_data = subset(read_task_data(data_dir / dev_file, kind, "dev"), dev_rows)
        for method, rank in rows:
            for seed in seeds:  # training order and initialisation: the spread between seeds is the noise of a row
                results.append(quality_row(loaded.model, loaded.tokenizer, task, method, rank, steps, train_data, dev_data,
                                           cache, adapters, dev_rows, log, seed))
    report = {"model": model_name, "steps": steps, "dev_rows": dev_rows, "batch": AdaptConfig().batch, "seeds": list(seeds),
              "roles": list(AdaptConfig().roles), "rows": results, "torch_threads": 1,
              "onnxruntime": __import__("onnxruntime").__version__}
    if memory:
        picks = [adapters / row_key(t, "lora-xs", MEMORY_RANK, steps, dev_rows) for t in tasks]
        picks = [p for p in picks if p.is_dir()]
        if picks:
            third = _third_adapter(picks[0], out_dir / "work")
            report["memory"] = memory_block(model_name, [*picks, third], out_dir / "work", repeats, log)
            report["memory"]["third_adapter"] = ("The third adapter is a copy of the SST-2 one with R negated: memory "
                                                 "and switch figures do not depend on the values")
    return report


def _third_adapter(src: Path, work: Path) -> Path:
    from .store import read_adapter, write_adapter

    s = read_adapter(src)
    dst = work / f"{src.name}-third"
    import shutil

    if dst.exists():
        shutil.rmtree(dst)
    tensors = {k: (-v if k.endswith("lora_r") else v) for k, v in s.tensors.items()}
    rec = {k: v for k, v in s.record.items() if k not in ("edgecomp_version", "kind", "files")}
    write_adapter(dst, {**rec, "name": dst.name}, tensors)
    return dst


def markdown(report: dict) -> str:
    lines = [f"# Task adapters on {report['model']} (CPU training, {report['steps']} steps of {report['batch']}, "
             f"torch 1 thread)", "",
             f"Dev rows per task: {report['dev_rows'] or 'all'} (a fixed shuffle). Adapted roles: "
             f"{', '.join(report['roles'])}. Quality: SST-2 accuracy x100, STS Spearman x100 (cosine vs gold).", "",
             "| task | method | rank | seed | trainable params | bytes per task | quality | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        q = r["quality"]
        lines.append(f"| {r['task']} | {r['method']} | {r['rank'] or '—'} | {r.get('seed', 0)} | {r['trainable_params']:,} | "
                     f"{_bytes(r['bytes_per_task'])} | {q['value']:.2f} | {r['seconds']} |")
    seeds = report.get("seeds", [0])
    if len(seeds) > 1:
        lines += ["", f"Mean and spread over seeds {', '.join(map(str, seeds))}:", "",
                  "| task | method | rank | quality mean | min | max |", "|---|---|---:|---:|---:|---:|"]
        groups: dict = {}
        for r in report["rows"]:
            groups.setdefault((r["task"], r["method"], r["rank"]), []).append(r["quality"]["value"])
        lines += [f"| {t} | {m} | {k or '—'} | {statistics.mean(v):.2f} | {min(v):.2f} | {max(v):.2f} |"
                  for (t, m, k), v in groups.items()]
    xs = [r for r in report["rows"] if r.get("bytes_if_factors_per_adapter") and r.get("seed", 0) == 0]
    if xs:
        lines += ["", "Frozen factors shared in the base vs stored per adapter (LoRA-XS .onnx_adapter bytes):", "",
                  "| task | rank | R (+ head) only | with A, B per adapter |", "|---|---:|---:|---:|"]
        lines += [f"| {r['task']} | {r['rank']} | {_bytes(r['bytes_per_task'])} | {_bytes(r['bytes_if_factors_per_adapter'])} |"
                  for r in xs]
    m = report.get("memory")
    if m:
        med = m["median"]
        lines += ["", f"## One base + 3 adapters vs 3 separate models ({m['base_artifact']}, batch 1, seq "
                  f"{m['feeds']['seq_len']}, ORT 1 thread, median of {m['repeats']} fresh processes each)", "",
                  "| setup | peak RSS MB | vs one model | run ms | session load ms |", "|---|---:|---:|---:|---:|",
                  f"| one model | {med['one_model']['peak_rss_mb']:.1f} | 1.00 | {med['one_model']['run_ms']:.1f} | "
                  f"{med['one_model']['session_load_ms']:.0f} |",
                  f"| one base + 3 adapters | {med['base_3_adapters']['peak_rss_mb']:.1f} | "
                  f"{m['rss_base_3_adapters_vs_one_model']:.2f} | {med['base_3_adapters']['run_same_task_ms']:.1f} | "
                  f"{med['base_3_adapters']['session_load_ms']:.0f} |",
                  f"| 3 separate models | {med['three_models']['peak_rss_mb']:.1f} | {m['rss_three_models_vs_one_model']:.2f} | "
                  f"{med['three_models']['run_ms']:.1f} | {med['three_models']['session_load_ms']:.0f} |", "",
                  f"Switching task with adapters: {med['base_3_adapters']['switch_ms'] * 1e3:.0f} µs to make the run options "
                  f"(median), a run right after a switch {med['base_3_adapters']['run_after_switch_ms']:.1f} ms vs "
                  f"{med['base_3_adapters']['run_same_task_ms']:.1f} ms on the same task and "
                  f"{med['base_3_adapters']['run_no_adapter_ms']:.1f} ms with no adapter active; loading an adapter file "
                  f"{med['base_3_adapters']['adapter_load_ms']:.2f} ms. Without adapters a switch is a session load "
                  f"({med['three_models']['session_load_ms']:.0f} ms) unless every model stays resident.", "",
                  f"Base artifact with slots {_bytes(m['base_bytes'])} (the shared frozen factors add "
                  f"{_bytes(m['slot_bytes'])}, paid once), each plain model {_bytes(m['plain_model_bytes'])}, "
                  f"adapters {', '.join(_bytes(b) for b in m['adapter_bytes'])}. {m['third_adapter']}."]
    return "\n".join(lines) + "\n"


def _bytes(n) -> str:
    if n is None:
        return "—"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} KB"
    return f"{n} B"
