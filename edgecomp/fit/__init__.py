"""`edgecomp fit MODEL --target T --max-size 12MB [--max-rss 30MB] --quality "sts:-1.0" -o OUT`: the
smallest export of MODEL that meets a device budget and a task-quality floor.

Phases: (1) every candidate of the search space (edgecomp.fit.space, data) is checked against what the
target's formats can store and estimated cheaply (edgecomp.fit.estimate: bytes by formula, weight error);
(2) the most promising candidates within the size budget are exported through the build engine
(edgecomp.pipeline.export, without the target's emulated checks) and measured: artifact sizes, native RSS
(with --max-rss), aarch64 instructions per inference under qemu (with --max-arm-instructions: the
target's arm64 check, also run on the target's plain export when the limit is a ratio), task quality through
edgecomp.evaluate against the fp32 reference; (3) the Pareto frontier (size, rss, instructions, quality drop)
of the measured candidates, the smallest one meeting the budget chosen, its recipe
written as a .toml, and OUT exported from that file by the same engine with every check (so
`edgecomp export --recipe OUT/recipe.toml` reproduces OUT).

Measurements are cached by content hash of (model weights, recipe, target file, data, task) under the
cache folder; a second run reuses them. With ray installed, candidates are measured by Ray tasks (an
embedded local Ray with --workers N, or a cluster at --ray-address); a task writes only its own cache entry,
and a task that dies loses that candidate, not the search.
"""

from __future__ import annotations

import hashlib
import math
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import EdgecompError
from ..manifest import write_json_atomic, write_text_atomic
from .space import Candidate, candidates, read_space, recipe_toml

RESULT = "result.json"
# Candidates are judged on task quality, not on the target's embedding-cosine floor: while searching, the
# recipe lifts it; the chosen recipe states the floor it was measured at (so a regression still fails).
SEARCH_TOLERANCE = {"cos_mean": 0.0, "cos_min": -1.0}
# candidates are judged on the task metric, not on cosine against fp32
SEARCH_REASON = "edgecomp fit candidate: judged on the task metric, not on cosine against fp32"
# one torch thread per candidate (Ray runs one candidate per core); the recipes state it, so the chosen
# recipe file reproduces the measured bytes on any machine's default thread count
FIT_THREADS = 1
PLAIN = "target-default"  # the target's export without a recipe: the base of a ratio instruction budget
UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def parse_bytes(text: str, flag: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?\s*", text.lower())
    if not m:
        raise EdgecompError(f"{flag} {text!r} is not a size", f"write it like {flag} 12MB (B, KB, MB, GB; MiB ...)")
    return int(float(m.group(1)) * UNITS[m.group(2) or "b"])


def parse_quality(text: str) -> tuple[str, float]:
    """"sts:-1.0" -> ("sts", 1.0): the task and the largest drop allowed (in the metric's points)."""
    m = re.fullmatch(r"\s*([a-z-]+)\s*:\s*(-?[0-9]*\.?[0-9]+)\s*", text)
    if not m:
        raise EdgecompError(f"--quality {text!r} is not TASK:DROP", 'write e.g. --quality "sts:-1.0" (at most 1 point below fp32)')
    return m.group(1), abs(float(m.group(2)))


def parse_instructions(text: str) -> tuple[float, bool]:
    """"0.9x" -> (0.9, True): a ratio of the target's plain export; "150M" / "1.5e8" -> (1.5e8, False)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([xkmg]?)\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise EdgecompError(f"--max-arm-instructions {text!r} is not a count or a ratio",
                            "write it like 0.9x (of the target's plain int8 export) or 150M (instructions per inference)")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "x":
        return value, True
    return value * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[unit], False


@dataclass
class Budget:
    max_size: int
    max_rss_mb: float | None = None
    max_drop: float = 1.0
    task: str = "sts"
    # aarch64 instructions per inference (qemu, the target's emulated core); a ratio is of the target's plain
    # export (the search space's all-default candidate), measured in the same search
    max_arm: float | None = None
    max_arm_is_ratio: bool = False
    arm_baseline: int | None = None  # the plain export's count, once measured

    @property
    def measures_arm(self) -> bool:
        return self.max_arm is not None

    @property
    def max_arm_instructions(self) -> float | None:
        if self.max_arm is None:
            return None
        return self.max_arm * self.arm_baseline if self.max_arm_is_ratio else self.max_arm

    def to_json(self) -> dict:
        out = {"max_size_bytes": self.max_size, "max_rss_mb": self.max_rss_mb, "max_drop": self.max_drop,
               "task": self.task}
        if self.measures_arm:
            out["max_arm_instructions"] = (round(self.max_arm_instructions) if self.max_arm_instructions is not None
                                           else None)
            if self.max_arm_is_ratio:
                out["max_arm_ratio"], out["arm_baseline_instructions"] = self.max_arm, self.arm_baseline
        return out

    def misses(self, r: dict) -> list[str]:
        out = []
        if r["size_bytes"] > self.max_size:
            out.append(f"size {r['size_bytes'] / 1e6:.2f} MB > {self.max_size / 1e6:.2f} MB")
        if self.max_rss_mb is not None and (r.get("rss_mb") is None or r["rss_mb"] > self.max_rss_mb):
            out.append(f"native RSS {r.get('rss_mb')} MB > {self.max_rss_mb} MB")
        if r["quality_drop"] > self.max_drop:
            out.append(f"{self.task} drop {r['quality_drop']:.2f} > {self.max_drop:.2f}")
        limit = self.max_arm_instructions
        if limit is not None and (r.get("arm_instructions") is None or r["arm_instructions"] > limit):
            got = r.get("arm_instructions")
            out.append(f"ARM instructions {got / 1e6:.1f} M > {limit / 1e6:.1f} M" if got is not None
                       else "ARM instructions not measured")
        return out


@dataclass
class FitOptions:
    max_measure: int = 6  # candidates exported and measured (the rest are estimated only)
    workers: int = 1
    ray_address: str | None = None
    cache_dir: Path | None = None
    data: str | None = None
    report_data: str | None = None  # a held-out set for the chosen export's final figure
    space: Path | None = None
    size_slack: float = 1.03  # estimates within 3% over the size budget are still measured (MiniLM int4: 1% off)
    force: bool = False
    bench: bool = True  # the chosen export's latency and memory (as `edgecomp export`; --no-bench skips)


def content_hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path) and p.is_file():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        elif isinstance(p, Path) and p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt", ".tsv"):
                    h.update(f.name.encode())
                    h.update(content_hash(f).encode())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


# --- one candidate: export + measure (runs in the driver or in a Ray task) ------------------------------
def measure_candidate(job: dict) -> dict:
    """Export one candidate into its cache entry and measure it; the entry's result.json is written last,
    so an interrupted measurement leaves no result (and is measured again next time)."""
    from ..evaluate import evaluate_export
    from ..pipeline import ExportOptions, export

    entry = Path(job["entry"])
    done = entry / RESULT
    if done.is_file():
        return json.loads(done.read_text())
    entry.mkdir(parents=True, exist_ok=True)
    recipe_file = entry / f"{job['name']}.toml"
    write_text_atomic(recipe_file, job["toml"])
    out = entry / "export"
    t0 = time.time()
    manifest = export(job["model"], job["target"], out, ExportOptions(recipe=str(recipe_file), bench=job["bench"],
                                                                      checks=job.get("checks") or False), force=True)
    manifest = evaluate_export(out, job["task"], job["data"], threads=job.get("threads", 1),
                               reference=job["reference"])
    # the quantized artifacts are what the recipe ships; a target's fp32 artifact is its reference copy
    arts = [a for a in manifest["artifacts"] if a["precision"] != "fp32"] or manifest["artifacts"]
    drops = [a["metrics"]["task"][job["task"]]["drop"] for a in arts]
    rss = [((a["metrics"].get("native") or {}).get("peak_rss_mb") or a["metrics"].get("peak_rss_mb")) for a in arts]
    lat = [(a["metrics"].get("latency_ms") or {}).get("p50") for a in arts]
    arm = [(a.get("arm64") or {}).get("instructions_per_inference") for a in arts]
    result = {
        "name": job["name"], "key": job["key"],
        # every artifact the recipe ships must meet the budget: an app picks any of them
        "size_bytes": max(a["size_bytes"] for a in arts),
        "rss_mb": max(rss) if all(v is not None for v in rss) else None,
        "latency_ms": max(lat) if all(v is not None for v in lat) else None,
        "arm_instructions": max(arm) if all(v is not None for v in arm) else None,
        "quality_drop": max(drops),
        "quality_value": min(a["metrics"]["task"][job["task"]]["value"] for a in arts),
        "fidelity": {k: min(a["metrics"]["fidelity"][k] for a in manifest["artifacts"]) for k in ("cos_mean", "cos_min")
                     if all(k in a["metrics"].get("fidelity", {}) for a in manifest["artifacts"])},
        "artifacts": [{"path": a["path"], "precision": a["precision"], "size_bytes": a["size_bytes"],
                       "sha256": a["sha256"], "task": a["metrics"]["task"][job["task"]]} for a in arts],
        "measure_seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(done, result)
    return result


# --- the search ------------------------------------------------------------------------------------------
@dataclass
class Scored:
    cand: Candidate
    size_est: int
    error_est: float
    invalid: str | None = None
    result: dict | None = None
    lost: str | None = None
    on_frontier: bool = False
    chosen: bool = False


def _valid(cand: Candidate, target, task: str) -> str | None:
    """Why the target's formats cannot build this candidate (refused by the same checks export runs), or None."""
    from ..pipeline import artifacts_train_view, recipe_artifacts, recipe_scheme
    from ..quant import FORMAT_QUANT
    from ..recipes import check_steps, parse_recipe

    try:
        recipe = parse_recipe({**cand.recipe_table(), "tolerance": SEARCH_TOLERANCE, "tolerance_reason": SEARCH_REASON}, cand.name, None,
                              where=f"candidate {cand.name}")
        if not recipe.applies_to(task):
            return "not for this task"
        check_steps(recipe)
        arts, _ = recipe_artifacts(target, recipe)
        arts = [recipe_scheme(a, recipe) for a in arts]
        artifacts_train_view(arts, recipe, FORMAT_QUANT)
    except EdgecompError as e:
        return e.problem
    return None


def pareto(rows: list[Scored], keys: list[str]) -> None:
    """Mark the measured rows no other measured row beats on every key (lower is better) and strictly on one."""
    measured = [r for r in rows if r.result]
    for r in measured:
        a = [r.result[k] if r.result[k] is not None else float("inf") for k in keys]
        r.on_frontier = not any(
            all(x <= y for x, y in zip(b, a)) and any(x < y for x, y in zip(b, a))
            for b in ([o.result[k] if o.result[k] is not None else float("inf") for k in keys] for o in measured if o is not r))


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)


def _run_jobs(jobs: list[dict], opts: FitOptions, log, progress) -> dict[str, dict | str]:
    """key -> result, or the reason it was lost. Ray when installed (and asked for, or a cluster named)."""
    results: dict[str, dict | str] = {}
    todo = []
    for j in jobs:
        done = Path(j["entry"]) / RESULT
        if done.is_file():
            results[j["key"]] = json.loads(done.read_text())
        else:
            todo.append(j)
    bar = progress.add_task(f"measure ({len(jobs) - len(todo)} cached)", total=len(jobs), completed=len(jobs) - len(todo))
    use_ray = opts.workers > 1 or opts.ray_address
    ray = None
    if use_ray and todo:
        try:
            import ray  # noqa: F811
        except ImportError:
            log("ray is not installed (pip install -e \".[fit]\"): measuring candidates serially")
    elif todo and not use_ray:
        try:
            import ray as _r  # noqa: F401
        except ImportError:
            log("ray is not installed (pip install -e \".[fit]\"): measuring candidates serially")
    if ray is not None and todo:
        from ..paths import PROJECT_DIR

        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])),
               "HF_HUB_OFFLINE": "1"}
        if not ray.is_initialized():
            kw = {"address": opts.ray_address} if opts.ray_address else {"num_cpus": opts.workers}
            ray.init(**kw, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env},
                     configure_logging=False)
        remote = ray.remote(num_cpus=1, max_retries=0)(measure_candidate)
        pending = {remote.remote(j): j for j in todo}
        log(f"measure: {len(todo)} candidates on Ray ({opts.ray_address or f'local, {opts.workers} workers'})")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                j = pending.pop(ref)
                try:
                    results[j["key"]] = ray.get(ref)
                except Exception as e:  # a worker that died or failed: that candidate is lost, the search goes on
                    results[j["key"]] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}"
                progress.advance(bar)
        return results
    for i, j in enumerate(todo):
        log(f"measure: {j['name']} ({i + 1}/{len(todo)})")
        try:
            results[j["key"]] = measure_candidate(j)
        except EdgecompError as e:
            results[j["key"]] = e.problem
        progress.advance(bar)
    return results


def fit(model: str, target_name: str, out_dir: Path, budget: Budget, opts: FitOptions,
        log: Callable[[str], None] = lambda s: None) -> dict:
    from .. import __version__
    from ..models import load_model, model_dir, resolve_model
    from ..outdir import check_output
    from ..paths import cache_dir
    from ..pipeline import ExportOptions, export
    from ..targets import load_target
    from ..evaluate import reference_score
    from .estimate import estimate, model_shapes

    t_start = time.time()
    spec = resolve_model(model)
    target = load_target(target_name)
    if budget.measures_arm:
        from ..bench import arm64

        if "arm64" not in target.checks:
            raise EdgecompError(f"target {target.name} is not checked on aarch64, so --max-arm-instructions has nothing to measure",
                                "use a target with the arm64 check (android, arm64), or drop --max-arm-instructions")
        if not arm64.env_present():
            raise EdgecompError("--max-arm-instructions needs the aarch64 emulation environment", arm64.SETUP_HINT)
    check_output(out_dir, opts.force, spec.local_paths())
    axes = read_space(opts.space)
    cands = candidates(axes)
    cache = Path(opts.cache_dir or cache_dir() / "fit").expanduser()
    log(f"load: {spec.name}")
    loaded = load_model(spec)
    task, data, data_label, reference = reference_score(loaded, target, budget.task, opts.data)
    log(f"reference: pytorch-fp32 {task.metric} {reference['value']:.2f} on {data_label} ({len(data)} items)")
    target_file = Path(target.to_json().get("file") or "")
    data_path = Path(opts.data) if opts.data else None
    base_key = content_hash(__version__, model_dir(spec), target_file if target_file.is_file() else target.to_json(),
                            data_path if data_path else data_label, task.name, budget.max_rss_mb is not None,
                            budget.measures_arm)
    shapes = model_shapes(loaded.model)
    rows: list[Scored] = []
    memo: dict = {}
    with _progress() as progress:
        bar = progress.add_task("estimate", total=len(cands))
        for c in cands:
            why = _valid(c, target, spec.task)
            est = estimate(shapes, c.recipe, memo)
            rows.append(Scored(c, est.size_bytes, est.error, invalid=why))
            progress.advance(bar)
        valid = [r for r in rows if not r.invalid]
        log(f"estimate: {len(valid)} of {len(rows)} candidates buildable for {target.name}")
        fitting = [r for r in valid if r.size_est <= budget.max_size * opts.size_slack]
        # most promising first: lowest error proxy, then cheapest to build; the search measures at most max_measure
        # (equal estimates: the recipe with fewer steps first; smoothing has no weight-level proxy)
        ordered = sorted(fitting, key=lambda r: (round(r.error_est, 4), r.cand.cost, len(r.cand.recipe.get("steps", [])),
                                                 r.size_est))
        # one candidate per estimate point first: choices the proxy cannot tell apart (smoothing) wait their turn
        seen: set = set()
        first = [r for r in ordered if not ((r.size_est, round(r.error_est, 4)) in seen
                                            or seen.add((r.size_est, round(r.error_est, 4))))]
        pick = (first + [r for r in ordered if r not in first])[:opts.max_measure]
        if not pick:  # nothing fits by estimate: measure the smallest, so the error names a real closest candidate
            pick = sorted(valid, key=lambda r: (r.size_est, r.error_est))[:max(1, min(2, opts.max_measure))]
        def job(cand: Candidate) -> dict:
            key = content_hash(base_key, cand.recipe, SEARCH_TOLERANCE)[:24]
            return {"name": cand.name, "key": key, "entry": str(cache / key),
                    "toml": recipe_toml({**cand.recipe_table(), "compress_threads": FIT_THREADS,
                                         "tolerance": SEARCH_TOLERANCE, "tolerance_reason": SEARCH_REASON},
                                        "edgecomp fit candidate"),
                    "model": model, "target": target_name, "task": task.name, "data": opts.data,
                    "reference": reference, "bench": budget.max_rss_mb is not None, "threads": FIT_THREADS,
                    "checks": ("arm64",) if budget.measures_arm else False}

        jobs = [job(r.cand) for r in pick]
        # a ratio budget is of the target's plain export (no recipe), measured alongside unless it is a candidate
        baseline = None
        if budget.max_arm_is_ratio:
            plain = next((r for r in pick if not any(r.cand.recipe.values())), None)
            baseline = job(plain.cand if plain else Candidate(PLAIN, {}, {"steps": []}, 1.0))
            if not plain:
                jobs.append(baseline)
        del loaded, shapes
        results = _run_jobs(jobs, opts, log, progress)
    if baseline is not None:
        got = results.get(baseline["key"])
        if not isinstance(got, dict) or got.get("arm_instructions") is None:
            raise EdgecompError(f"the target's plain export could not be measured on aarch64 ({got if isinstance(got, str) else 'no count'})",
                                "give --max-arm-instructions as a count (e.g. 150M) instead of a ratio")
        budget.arm_baseline = got["arm_instructions"]
        log(f"baseline: {target.name} plain export, {budget.arm_baseline / 1e6:.1f} M ARM instructions per inference")
    for r, j in zip(pick, jobs):
        got = results.get(j["key"])
        if isinstance(got, dict):
            r.result = got
        else:
            r.lost = got or "not measured"
            log(f"measure: {r.cand.name} lost ({r.lost})")
    keys = (["size_bytes", "quality_drop"] + (["rss_mb"] if budget.max_rss_mb is not None else [])
            + (["arm_instructions"] if budget.measures_arm else []))
    pareto(rows, keys)
    measured = [r for r in rows if r.result]
    meeting = [r for r in measured if not budget.misses(r.result)]
    fit_block = {"budget": budget.to_json(), "quality": f"{task.name}:-{budget.max_drop}", "data": data_label,
                 "reference": {"name": "pytorch-fp32", "metric": task.metric, "value": round(reference["value"], 4)},
                 "searched": len(rows), "buildable": len(valid), "measured": len(measured),
                 "seconds": None, "candidates": []}
    if not meeting:
        if not measured:
            raise EdgecompError("no candidate could be measured (" + "; ".join(r.lost or "" for r in pick)[:300] + ")",
                                "check that `edgecomp export` works for this model and target")
        closest = min(measured, key=lambda r: (len(budget.misses(r.result)),
                                               max(r.result["size_bytes"] / budget.max_size,
                                                   r.result["quality_drop"] / max(budget.max_drop, 1e-9))))
        raise EdgecompError(f"no candidate meets the budget; closest: {closest.cand.name} "
                            f"(misses {', '.join(budget.misses(closest.result))})",
                            "relax --max-size / --max-rss / --quality, or widen the search (--max-measure, --space)")
    best = min(meeting, key=lambda r: (r.result["size_bytes"], r.result["quality_drop"]))
    best.chosen = True
    for r in sorted(rows, key=lambda r: (r.result is None, r.size_est)):
        if r.invalid:
            continue
        res = r.result or {}
        fit_block["candidates"].append({
            "name": r.cand.name, "recipe": r.cand.recipe,
            "size_bytes": res.get("size_bytes", r.size_est), "rss_mb": res.get("rss_mb"),
            "quality_drop": res.get("quality_drop"), "latency_ms": res.get("latency_ms"),
            **({"arm_instructions": res.get("arm_instructions")} if budget.measures_arm else {}),
            "on_frontier": r.on_frontier, "chosen": r.chosen, "measured": bool(r.result),
            "estimate": {"size_bytes": r.size_est, "weight_error": round(r.error_est, 5)},
            **({"lost": r.lost} if r.lost else {}),
        })
    # OUT: exported from the chosen recipe file by the same engine, with every check of the target
    table = {**best.cand.recipe_table(), "compress_threads": FIT_THREADS}  # the bytes it was measured with
    fid = best.result.get("fidelity") or {}
    if fid:  # just below what was measured on the export's verification text (the same bytes verify the same)
        table["tolerance"] = {k: math.floor(v * 1000) / 1000 - 0.001 for k, v in fid.items() if k in ("cos_mean", "cos_min")}
        table["tolerance_reason"] = (f"chosen by edgecomp fit on {task.name} quality (drop <= {budget.max_drop}); the "
                                     "floor is just below the cosine its artifacts measured")
    toml_text = recipe_toml(table, f"chosen by `edgecomp fit {model} --target {target_name}` "
                                   f"(max size {budget.max_size / 1e6:g} MB, {task.name} drop <= {budget.max_drop})")
    entry = cache / content_hash(base_key, best.cand.recipe, SEARCH_TOLERANCE)[:24]
    recipe_file = entry / "recipe.toml"
    write_text_atomic(recipe_file, toml_text)
    log(f"export: {best.cand.name} -> {out_dir}")
    manifest = export(model, target_name, out_dir, ExportOptions(recipe=str(recipe_file), bench=opts.bench),
                      force=opts.force, log=log)
    from ..evaluate import evaluate_export

    manifest = evaluate_export(out_dir, task.name, opts.data, reference=reference, write=False)
    if opts.report_data:
        manifest = _write_manifest(out_dir, manifest)
        manifest = evaluate_export(out_dir, task.name, opts.report_data, write=False)
    shutil.copy(recipe_file, out_dir / "recipe.toml")
    fit_block["seconds"] = round(time.time() - t_start, 1)
    manifest["fit"] = fit_block
    manifest["recipe"]["file"] = str((Path(out_dir) / "recipe.toml").resolve())
    write_json_atomic(Path(out_dir) / "fit.json", {"model": spec.name, "target": target.name, **fit_block})
    manifest["files"] = sorted(set(manifest.get("files", [])) | {"recipe.toml", "fit.json"})
    return _write_manifest(out_dir, manifest)


def _write_manifest(out_dir: Path, manifest: dict) -> dict:
    from ..manifest import MANIFEST
    from ..report import write_report

    write_json_atomic(Path(out_dir) / MANIFEST, manifest)
    write_report(manifest, Path(out_dir))
    return manifest
