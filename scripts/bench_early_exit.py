#!/usr/bin/env python3
"""Early exits on SST-2 sentences: accuracy vs mean wall time per sentence, exported ONNX int8 on ONNX Runtime.

    python scripts/bench_early_exit.py [--model minilm-sst2] [--max-accuracy-drop 1.0] [--limit N]

Measures, on the dev.tsv rows of >= 10 words (sentences, what real inputs look like), at batch 1 and one
thread, with tokenization included in every timing:
- the full model exported the same way (torch.onnx -> onnxslim -> int8 dynamic per-channel),
- every static depth k (layers 1..k + exit head k, one graph each),
- the early-exit stage runtime for every τ on a grid, and the τ the export calibrated on held-aside
  training sentences (the number that counts: nothing here is tuned on dev),
all interleaved sentence by sentence so machine load hits every configuration alike. Also compares the
``plain`` and ``ztw`` exit heads (PyTorch, same rows, same budget). Writes JSON + Markdown + a PNG plot
to results/early_exit/.

    python scripts/bench_early_exit.py --through-run [--early-exit-dir OUT1 --full-dir OUT2] [--repeats 3]

times instead what a user meets: `edgecomp run --batch-size 1` in fresh processes on the dev sentences, the
early-exit export against the full export of the same classifier on the same target (exported first with
`edgecomp export` when no folders are given): steady per-sentence time, accuracy and loading
(edgecomp.early_exit.run_timing). Writes bench_early_exit_run[-TAG].json/.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgecomp.early_exit.calibrate import choose_tau, depth_table, evaluate_tau
from edgecomp.early_exit.data import read_labelled_tsv, sentences
from edgecomp.paths import cache_dir, shared_data_dir

ROOT = Path(__file__).resolve().parent.parent  # results/ of the checkout

BENCH_TAUS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def compare_head_kinds(loaded, cfg, eval_set, log) -> list[dict]:
    """plain vs ztw on the same frozen features: τ from the calibration sentences, judged on dev sentences."""
    import torch

    from edgecomp.early_exit.export import cached_features, trained_heads
    from edgecomp.early_exit.heads import exit_probabilities

    rows = []
    for kind in ("plain", "ztw"):
        kcfg = replace(cfg, heads=replace(cfg.heads, kind=kind))
        heads, _, calibration, _ = trained_heads(loaded, kcfg, log)
        with torch.inference_mode():
            p_cal = exit_probabilities(heads, cached_features(loaded, calibration, cfg.heads.pooling, cfg.max_length))
            p_dev = exit_probabilities(heads, cached_features(loaded, eval_set, cfg.heads.pooling, cfg.max_length))
        y_cal, y_dev = np.asarray(calibration.labels), np.asarray(eval_set.labels)
        tau, _ = choose_tau(p_cal, y_cal, cfg.max_accuracy_drop)
        dev = evaluate_tau(p_dev, y_dev, tau)
        full = evaluate_tau(p_dev, y_dev, 1.0)["accuracy"]
        rows.append({
            "kind": kind, "tau": tau, "dev_accuracy": dev["accuracy"], "dev_full_accuracy": full,
            "dev_drop_points": 100 * (full - dev["accuracy"]), "dev_mean_exit_layer": dev["mean_exit_layer"],
            "dev_layer_speedup": dev["layer_speedup"],
            "dev_depth_accuracy": [d["accuracy"] for d in depth_table(p_dev, y_dev)],
            "calibration_depth_accuracy": [d["accuracy"] for d in depth_table(p_cal, y_cal)],
        })
    return rows


def export_single(module, io, work: Path, name: str, scheme, opset: int, H: int, C: int) -> Path:
    from edgecomp.early_exit.export import export_onnx_chain
    from edgecomp.optimize.quantize import quantize_onnx

    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    slim = export_onnx_chain(module, io, H, C, d, opset)
    out = work / f"{name}.int8.onnx"
    quantize_onnx(slim, out, scheme)
    import shutil

    shutil.rmtree(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-sst2")
    ap.add_argument("--target", default="cpu-x86", help="its int8 ONNX artifact is what is timed")
    ap.add_argument("--max-accuracy-drop", type=float, default=None)
    ap.add_argument("--heads", default=None, help="plain | ztw (default: the model file's)")
    ap.add_argument("--eval-data", default=str(shared_data_dir() / "sst2" / "dev.tsv"))
    ap.add_argument("--limit", type=int, default=0, help="first N dev sentences (0: all)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the timed runs")
    ap.add_argument("--torch-threads", type=int, default=1, help="for head training and export (1 on a shared machine)")
    ap.add_argument("--build-dir", default=str(cache_dir() / "bench-early-exit"))
    ap.add_argument("--out", default=str(ROOT / "results" / "early_exit"))
    ap.add_argument("--tag", default="", help="suffix for the result files")
    ap.add_argument("--through-run", action="store_true", help="time `edgecomp run --batch-size 1` processes instead")
    ap.add_argument("--early-exit-dir", default=None, help="--through-run: an `edgecomp export --early-exit` folder")
    ap.add_argument("--full-dir", default=None, help="--through-run: the full export of the same model and target")
    ap.add_argument("--repeats", type=int, default=3, help="--through-run: timed repeats (medians)")
    ap.add_argument("--compare-checkout", default=None,
                    help="--through-run: also time the early-exit export's `run` with this checkout on PYTHONPATH "
                         "(before/after side by side)")
    args = ap.parse_args()
    if args.through_run:
        return through_run(args)

    import torch

    import edgecomp.tasks.text_classification  # noqa: F401  (registers the task if tasks/__init__ does not yet)
    from edgecomp.early_exit.export import EarlyExitConfig, export_early_exit, trained_heads
    from edgecomp.early_exit.runtime import EarlyExitRunner
    from edgecomp.early_exit.stages import DepthModel, StageIO, build_stages
    from edgecomp.lower.wrap import PositionalModel
    from edgecomp.models import load_model, resolve_model
    from edgecomp.runtime import open_artifact
    from edgecomp.targets import load_target
    from edgecomp.texts import tokenize

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    torch.set_num_threads(args.torch_threads)
    spec = resolve_model(args.model)
    loaded = load_model(spec)
    target = load_target(args.target)
    cfg = EarlyExitConfig.for_model(spec, max_accuracy_drop=args.max_accuracy_drop, heads=args.heads)
    model = loaded.model
    L, H, C = model.config.num_hidden_layers, model.config.hidden_size, model.config.num_labels
    eval_set = sentences(read_labelled_tsv(Path(args.eval_data)))
    if args.limit:
        eval_set = eval_set.subset(range(min(args.limit, len(eval_set))))
    log(f"{len(eval_set)} dev sentences (>= 10 words)")

    heads_cmp = compare_head_kinds(loaded, cfg, eval_set, log)
    for r in heads_cmp:
        log(f"  heads {r['kind']}: τ={r['tau']} dev acc {100 * r['dev_accuracy']:.2f} "
            f"(full {100 * r['dev_full_accuracy']:.2f}), mean exit layer {r['dev_mean_exit_layer']:.2f}")

    # the export under test, then the full model and every static depth through the same path
    build = Path(args.build_dir)
    import shutil

    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    t0 = time.perf_counter()
    result = export_early_exit(loaded, target, build, config=cfg, threads=args.torch_threads, log=log)
    export_s = time.perf_counter() - t0
    loaded.tokenizer.save_pretrained(build)
    block = result["early_exit"]
    int8_set = next(k for k, v in block["stage_sets"].items() if v["format"] == "onnx" and v["precision"] == "int8")
    scheme = next(a.scheme for a in target.artifacts if a.format == "onnx" and a.precision == "int8")
    heads, *_ = trained_heads(loaded, cfg, log)
    stages = build_stages(model, heads)
    in_names = stages[0].io.inputs
    full_io = StageIO(0, in_names, ("logits",))
    # the plain classifier with the stage-0 input order, for the same exporter path
    full = PositionalModel(model, in_names, ["logits"]).eval()
    graphs = {"full": export_single(full, full_io, build / "bench", "full", scheme, target.opset, H, C)}
    for k in range(1, L):
        graphs[f"depth{k}"] = export_single(DepthModel(stages, k).eval(), full_io, build / "bench", f"depth{k}", scheme,
                                            target.opset, H, C)
    sizes = {name: p.stat().st_size for name, p in graphs.items()}
    stage_sizes = [s["size_bytes"] for s in block["stage_sets"][int8_set]["stages"]]

    # --- timing, interleaved per sentence ---------------------------------------------------------------
    tok = loaded.tokenizer
    sessions = {name: open_artifact(p, args.threads) for name, p in graphs.items()}
    ee = EarlyExitRunner(build, int8_set, threads=args.threads, tokenizer=tok)
    taus = sorted(set(BENCH_TAUS) | {float(block["tau"])})
    configs = list(sessions) + [f"tau={t}" for t in taus]

    def run_config(name: str, text: str):
        if name.startswith("tau="):
            ee.tau = float(name[4:])
            r = ee.classify([text], batch_size=1)[0]
            return ee.labels.index(r["label"]), r["exit_layer"]
        feeds = tokenize(tok, [text], max_length=cfg.max_length, input_names=in_names)
        logits = sessions[name].run(feeds)["logits"]
        return int(logits[0].argmax()), (L if name == "full" else int(name[5:]))

    for text in eval_set.texts[:30]:  # warm-up
        for c in configs:
            run_config(c, text)
    times = {c: np.zeros(len(eval_set)) for c in configs}
    preds = {c: np.zeros(len(eval_set), int) for c in configs}
    layers = {c: np.zeros(len(eval_set), int) for c in configs}
    t_start = time.perf_counter()
    for i, text in enumerate(eval_set.texts):
        rot = i % len(configs)
        for c in configs[rot:] + configs[:rot]:  # rotate the order so no configuration always goes first
            t = time.perf_counter()
            p, layer = run_config(c, text)
            times[c][i] = time.perf_counter() - t
            preds[c][i], layers[c][i] = p, layer
        if i % 500 == 0:
            log(f"  timed {i}/{len(eval_set)} sentences")
    timing_s = time.perf_counter() - t_start
    y = np.asarray(eval_set.labels)
    n_tokens = [len(tok(t, truncation=True, max_length=cfg.max_length)["input_ids"]) for t in eval_set.texts]

    rows = []
    full_mean = times["full"].mean()
    full_acc = (preds["full"] == y).mean()
    for c in configs:
        acc = float((preds[c] == y).mean())
        row = {
            "config": c, "accuracy": acc, "drop_points": 100 * (full_acc - acc),
            "mean_ms": 1000 * times[c].mean(), "median_ms": 1000 * float(np.median(times[c])),
            "speedup_mean": float(full_mean / times[c].mean()),
            "speedup_median": float(np.median(times["full"]) / np.median(times[c])),
            "mean_exit_layer": float(layers[c].mean()),
            "agreement_with_full": float((preds[c] == preds["full"]).mean()),
        }
        if c.startswith("tau="):
            row["tau"] = float(c[4:])
            row["exit_distribution"] = [float((layers[c] == k + 1).mean()) for k in range(L)]
            row["size_bytes"] = int(sum(stage_sizes))
            row["calibrated"] = abs(row["tau"] - float(block["tau"])) < 1e-12
        else:
            row["size_bytes"] = sizes[c]
        rows.append(row)
    chosen = next(r for r in rows if r.get("calibrated"))
    goal = {"speedup_mean": chosen["speedup_mean"], "drop_points": chosen["drop_points"],
            "met": bool(chosen["speedup_mean"] >= 2.0 and chosen["drop_points"] <= 1.0)}
    out = {
        "model": spec.name, "target": target.name, "stage_set": int8_set, "threads": args.threads, "batch": 1,
        "eval": {"data": args.eval_data, "n_sentences": len(eval_set), "min_words": 10,
                 "mean_tokens": float(np.mean(n_tokens))},
        "timing": "wall time per sentence incl. tokenization; configurations interleaved sentence by sentence",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start_end": None},
        "heads_comparison": heads_cmp,
        "export": {k: block[k] for k in ("tau", "heads", "accuracy", "mean_exit_layer", "layer_speedup",
                                         "exit_distribution", "depths", "static_depth", "calibration",
                                         "max_accuracy_drop_points")},
        "export_seconds": round(export_s, 1), "timing_seconds": round(timing_s, 1),
        "rows": rows, "goal": goal,
    }
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"bench_early_exit{('-' + args.tag) if args.tag else ''}"
    (outdir / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    (outdir / f"{stem}.md").write_text(markdown(out, L))
    plot(out, outdir / f"{stem}.png")
    print(markdown(out, L))


def through_run(args) -> None:
    import subprocess

    from edgecomp.early_exit import run_timing

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    exports = {}
    for name, given, flags in (("full", args.full_dir, []), ("early-exit", args.early_exit_dir, ["--early-exit"])):
        out = Path(given) if given else Path(args.build_dir) / f"run-{name}"
        if not (out / "manifest.json").is_file():
            cmd = [sys.executable, "-m", "edgecomp", "export", args.model, "--target", args.target, *flags,
                   "--no-bench", "--force", "-o", str(out)]
            log(f"exporting: {' '.join(cmd[2:])}")
            subprocess.run(cmd, check=True)
        exports[name] = out
    eval_set = sentences(read_labelled_tsv(Path(args.eval_data)))
    if args.limit:
        eval_set = eval_set.subset(range(min(args.limit, len(eval_set))))
    envs = {}
    if args.compare_checkout:
        exports["early-exit@compared"] = exports["early-exit"]
        envs["early-exit@compared"] = {"PYTHONPATH": str(Path(args.compare_checkout).resolve())}
    log(f"timing `edgecomp run --batch-size 1` on {len(eval_set)} dev sentences, {args.repeats} repeats")
    res = run_timing.measure_through_run(exports, eval_set, repeats=args.repeats, threads=args.threads, log=log,
                                         envs=envs)
    res["compared_checkout"] = args.compare_checkout
    res["eval"] = {"data": args.eval_data, "min_words": 10}
    res["model"], res["target"] = args.model, args.target
    res["machine"] = {"platform": platform.platform(), "loadavg": os.getloadavg()}
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"bench_early_exit_run{('-' + args.tag) if args.tag else ''}"
    (outdir / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = run_timing.markdown(res, title=f"Early exit through `edgecomp run --batch-size 1`: {Path(args.model).stem}, "
                                        f"{args.target}")
    (outdir / f"{stem}.md").write_text(md)
    print(md)


def markdown(out: dict, L: int) -> str:
    e = out["export"]
    lines = [
        f"# Early exits: {out['model']}, ONNX Runtime int8 ({out['stage_set']}), batch 1, {out['threads']} thread",
        "",
        f"{out['eval']['n_sentences']} SST-2 dev sentences (>= 10 words, {out['eval']['mean_tokens']:.1f} tokens mean). "
        f"Wall time per sentence includes tokenization; all configurations were timed interleaved in one run. "
        f"τ = {e['tau']} was calibrated on {e['calibration']['n_texts']} held-aside *training* sentences for a "
        f"{e['max_accuracy_drop_points']}-point drop budget (heads: {e['heads']['kind']}); dev was not used to "
        "choose anything, and no piece of a dev sentence was trained on by the heads.",
        "",
        "| configuration | accuracy % | Δ vs full (points) | mean ms | median ms | speed-up (mean) | mean layers | exit distribution (layer 1..L) | size MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        name = r["config"] + (" **(calibrated)**" if r.get("calibrated") else "")
        dist = " / ".join(f"{100 * x:.0f}" for x in r.get("exit_distribution", [])) or "-"
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} | {-r['drop_points']:+.2f} | {r['mean_ms']:.3f} | "
                     f"{r['median_ms']:.3f} | {r['speedup_mean']:.2f}x | {r['mean_exit_layer']:.2f} | {dist} | "
                     f"{r['size_bytes'] / 1e6:.1f} |")
    g = out["goal"]
    lines += ["", f"Goal (>= 2x faster on average at <= 1 point lower accuracy, calibrated τ): "
              f"{g['speedup_mean']:.2f}x at {-g['drop_points']:+.2f} points -> {'met' if g['met'] else 'NOT met'}.", ""]
    lines += ["## Exit heads: plain vs ZTW (cascade + geometric ensemble), PyTorch fp32, same rows and budget", "",
              "| heads | τ (calibration) | dev accuracy % | full % | Δ points | mean exit layer | per-depth dev accuracy % |",
              "|---|---|---|---|---|---|---|"]
    for h in out["heads_comparison"]:
        depth = " / ".join(f"{100 * a:.1f}" for a in h["dev_depth_accuracy"])
        lines.append(f"| {h['kind']} | {h['tau']} | {100 * h['dev_accuracy']:.2f} | {100 * h['dev_full_accuracy']:.2f} | "
                     f"{-h['dev_drop_points']:+.2f} | {h['dev_mean_exit_layer']:.2f} | {depth} |")
    lines += ["", "## Static depths (calibration sentences, exported int8 stages)", "",
              "| depth | accuracy % | bytes of stages 1..k |", "|---|---|---|"]
    for d in e["depths"]:
        lines.append(f"| {d['depth']} | {100 * d['accuracy']:.2f} | {d['stage_bytes'] / 1e6:.1f} MB |")
    lines += ["", f"Static depth chosen by the export: {e['static_depth']} of {L}.", ""]
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    taus = [r for r in out["rows"] if "tau" in r]
    ax.plot([r["mean_ms"] for r in taus], [100 * r["accuracy"] for r in taus], "o-", label="early exit (τ grid)")
    for r in taus:
        ax.annotate(f"{r['tau']:g}", (r["mean_ms"], 100 * r["accuracy"]), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    depth = [r for r in out["rows"] if r["config"].startswith("depth")]
    ax.plot([r["mean_ms"] for r in depth], [100 * r["accuracy"] for r in depth], "s--", label="static depth 1..L-1")
    full = next(r for r in out["rows"] if r["config"] == "full")
    ax.plot([full["mean_ms"]], [100 * full["accuracy"]], "k*", ms=12, label="full model")
    ch = next(r for r in taus if r.get("calibrated"))
    ax.plot([ch["mean_ms"]], [100 * ch["accuracy"]], "r^", ms=10, label=f"calibrated τ={ch['tau']}")
    ax.axhline(100 * full["accuracy"] - 1.0, color="grey", lw=0.8, ls=":", label="full - 1 point")
    ax.axvline(full["mean_ms"] / 2, color="grey", lw=0.8, ls="-.", label="full / 2 time")
    ax.set_xlabel("mean wall time per sentence (ms, batch 1, 1 thread, incl. tokenization)")
    ax.set_ylabel("accuracy on SST-2 dev sentences (%)")
    ax.set_title(f"{out['model']}: early exits vs static depth (ONNX Runtime int8)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    os.replace(tmp, path)


def rerender(json_path: Path) -> None:
    """Rewrite the Markdown and the plot of an earlier run from its JSON."""
    out = json.loads(json_path.read_text())
    L = len(out["export"]["depths"])
    json_path.with_suffix(".md").write_text(markdown(out, L))
    plot(out, json_path.with_suffix(".png"))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rerender":
        rerender(Path(sys.argv[2]))
    else:
        main()
