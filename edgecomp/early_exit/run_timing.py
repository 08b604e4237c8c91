"""The early-exit promise where a user meets it: ``edgecomp run --batch-size 1`` in fresh processes.

For an early-exit export and the full export of the same classifier on the same target, over N labelled
sentences, each repeat times (wall clock, from outside the process) a run over all N sentences and a run
over the first one, for both exports, in a rotating order so machine load hits both alike. Then:

- steady per-sentence time ``s = (T_N - T_1) / (N - 1)``: what one more sentence costs once the process
  has started, loaded its sessions and warmed up (loading cancels out);
- loading ``T_1 - s``: everything a run pays before its first sentence (interpreter, imports, tokenizer,
  sessions), i.e. what a user waits for beyond the sentences;
- accuracy of each export's labels against the file's labels, and the early-exit export's drop in points.

Medians over the repeats; the ratios are of medians measured side by side in one call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from .data import Labelled

CONFIGS = ("full", "early-exit")


def run_command(export_dir: Path, input_file: Path, output_file: Path, threads: int = 1) -> list[str]:
    """The exact command a user types (``python -m edgecomp`` so the interpreter under test is this one)."""
    return [sys.executable, "-m", "edgecomp", "run", str(export_dir), "--input", str(input_file),
            "--output", str(output_file), "--batch-size", "1", "--threads", str(threads)]


def timed_run(export_dir: Path, input_file: Path, output_file: Path, threads: int = 1,
              env: dict | None = None) -> tuple[float, list[dict]]:
    """(wall seconds of one `edgecomp run` process, its records); ``env`` adds to this process's environment."""
    cmd = run_command(Path(export_dir).resolve(), input_file, output_file, threads)
    t = time.perf_counter()
    # cwd: `python -m` puts the working folder first on sys.path, which would shadow PYTHONPATH's checkout
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env} if env else None,
                          cwd=Path(input_file).resolve().parent)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise EdgecompError(f"`{' '.join(cmd[2:])}` failed ({(proc.stderr or proc.stdout).strip()[:300]})",
                            "check that both folders are complete `edgecomp export` outputs")
    return wall, [json.loads(line) for line in Path(output_file).read_text().splitlines() if line.strip()]


def _predictions(records: list[dict]) -> np.ndarray:
    return np.array([int(np.argmax(r["probs"])) for r in records])


def measure_through_run(exports: dict[str, Path], data: Labelled, repeats: int = 3, threads: int = 1,
                        log=lambda m: None, envs: dict[str, dict] | None = None) -> dict:
    """``exports``: {"full": folder, "early-exit": folder, ...} (any further configurations are compared
    with "full" too; ``envs`` gives one its environment, e.g. another checkout on PYTHONPATH). Returns the
    figures described in the module doc."""
    envs = envs or {}
    if len(data) < 2:
        raise EdgecompError("the timing needs at least 2 sentences", "pass a larger labelled file or --limit")
    y = np.asarray(data.labels)
    with tempfile.TemporaryDirectory(prefix="edgecomp-run-timing-") as tmp:
        tmp = Path(tmp)
        all_in, one_in = tmp / "all.txt", tmp / "one.txt"
        all_in.write_text("\n".join(data.texts) + "\n")
        one_in.write_text(data.texts[0] + "\n")
        walls = {c: {"all": [], "one": []} for c in exports}
        preds: dict[str, np.ndarray] = {}
        exit_layers: dict[str, list[int]] = {}
        names = list(exports)
        for rep in range(repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for c in order:
                for which, f in (("one", one_in), ("all", all_in)):
                    wall, recs = timed_run(exports[c], f, tmp / f"{c}.{which}.jsonl", threads, envs.get(c))
                    walls[c][which].append(wall)
                    if which == "all":
                        p = _predictions(recs)
                        if c in preds and not np.array_equal(p, preds[c]):
                            raise EdgecompError(f"`edgecomp run` on the {c} export gave different labels in two runs",
                                                "the runtime is not deterministic here; report this")
                        preds[c] = p
                        if "exit_layer" in recs[0]:
                            exit_layers[c] = [int(r["exit_layer"]) for r in recs]
            log(f"  repeat {rep + 1}/{repeats}: " + ", ".join(
                f"{c} {walls[c]['all'][-1]:.2f} s / {walls[c]['one'][-1]:.2f} s" for c in names))
    n = len(data)
    rows = {}
    for c in names:
        t_all, t_one = float(np.median(walls[c]["all"])), float(np.median(walls[c]["one"]))
        per = (t_all - t_one) / (n - 1)
        row = {"export": str(exports[c]), "t_all_s": walls[c]["all"], "t_one_s": walls[c]["one"],
               "t_all_median_s": t_all, "t_one_median_s": t_one, "per_sentence_ms": 1000 * per,
               "load_s": t_one - per, "accuracy": float((preds[c] == y).mean())}
        if c in exit_layers:
            layers = np.asarray(exit_layers[c])
            row["mean_exit_layer"] = float(layers.mean())
            row["exit_distribution"] = [float((layers == k).mean()) for k in range(1, int(layers.max()) + 1)]
        rows[c] = row
    full = rows["full"]
    vs_full = {}
    for c in names:
        if c == "full":
            continue
        r = rows[c]
        v = {"speedup_per_sentence": full["per_sentence_ms"] / r["per_sentence_ms"],
             "drop_points": 100 * (full["accuracy"] - r["accuracy"]), "load_ratio": r["load_s"] / full["load_s"],
             "agreement": float((preds["full"] == preds[c]).mean())}
        v["met"] = bool(v["speedup_per_sentence"] >= 2.0 and v["drop_points"] <= 1.0 and v["load_ratio"] <= 1.5)
        vs_full[c] = v
    summary = vs_full["early-exit"]
    return {"n_sentences": n, "repeats": repeats, "threads": threads,
            "command": " ".join(run_command(Path("OUT"), Path("sentences.txt"), Path("out.jsonl"), threads)[1:]),
            "cpus": os.cpu_count(), "rows": rows, "summary": summary, "vs_full": vs_full}


def markdown(result: dict, title: str = "Early exit through `edgecomp run --batch-size 1`") -> str:
    s = result["summary"]
    lines = [
        f"# {title}",
        "",
        f"{result['n_sentences']} labelled sentences, {result['repeats']} repeats (medians), {result['threads']} "
        f"thread(s), fresh process per run: `{result['command']}`. Per sentence = (T_N - T_1) / (N - 1); "
        "loading = T_1 - per sentence (interpreter, imports, tokenizer, sessions).",
        "",
        "| export | accuracy % | per sentence ms | T_N s | T_1 s | loading s | mean exit layer |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, r in result["rows"].items():
        lines.append(f"| {c} | {100 * r['accuracy']:.2f} | {r['per_sentence_ms']:.3f} | {r['t_all_median_s']:.2f} | "
                     f"{r['t_one_median_s']:.2f} | {r['load_s']:.2f} | {r.get('mean_exit_layer', '-')!s:.5} |")
    lines += [""]
    for c, v in result.get("vs_full", {"early-exit": s}).items():
        lines.append(f"- {c} vs full: **{v['speedup_per_sentence']:.2f}x** per sentence at **{-v['drop_points']:+.2f} "
                     f"points**, loading **{v['load_ratio']:.2f}x** the full model's (goal: >= 2x at <= 1 point, "
                     f"loading <= 1.5x: {'met' if v['met'] else 'NOT met'}); labels agree with full on "
                     f"{100 * v['agreement']:.1f}% of sentences.")
    lines.append("")
    return "\n".join(lines)
