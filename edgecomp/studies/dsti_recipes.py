"""DSTI through the shipped path (scripts/bench_dsti_recipes.py): each row is one ``edgecomp export --target
android`` (a recipe name or file, optional ``--texts``) followed by ``edgecomp eval`` on the task's shared dev
set, read back from the export's manifest.

Protocol
- Models: all-MiniLM-L6-v2 (STS-B dev, 1,500 pairs, Spearman x100) and minilm-sst2 (SST-2 dev, 6,735 rows,
  accuracy); the drop is against the dense fp32 PyTorch model, as ``edgecomp eval`` reports it.
- Cost: the export's arm64 check (qemu-aarch64 -cpu cortex-a76, the native probe in the guest with the
  artifact's session options, so the aarch64 kernel library runs the MoE nodes): guest instructions per
  inference on the export's bench input (its reference texts joined and cut at 128 tokens: the ``--texts``,
  else the built-in sentences); "vs int8" divides by the same model's plain int8 export of the same run.
- Text: ``sst2`` is the first 512 of the seeded SST-2 train calibration sentences (studies.sst2_embeddings,
  the task-floor study's calibration.txt); ``sts`` 512 STS-B train sentences (a seeded draw); without either a
  row calibrates on the export's built-in sentences. Only train splits: the rows are measured on dev.
- Rows run as separate processes, ``jobs`` at a time (instruction counts do not depend on the host's load,
  so no latency is quoted); rows already in the JSON are kept by label (resumable).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from ..manifest import write_json_atomic, write_text_atomic
from ..paths import shared_data_dir

TASKS = {"all-minilm-l6-v2": ("sts", "sts/sts-dev.tsv"), "minilm-sst2": ("classification", "sst2/dev.tsv")}
RESULTS = Path(__file__).resolve().parents[2] / "results" / "dsti"


@dataclass(frozen=True)
class Row:
    label: str
    model: str
    recipe: str | None = None  # a shipped recipe's name or a recipe file (relative to the repository)
    texts: str | None = None  # "sst2" | "sts": the study's train sentences of that task; None: the built-in ones


def default_rows() -> list[Row]:
    rows = []
    for model in TASKS:
        rows += [Row(f"{model}: int8", model),
                 Row(f"{model}: dsti", model, "dsti"),
                 Row(f"{model}: dsti, tau 0.5", model, "results/dsti/dsti_distill050.toml"),
                 Row(f"{model}: dsti, SST-2 text", model, "dsti", "sst2"),
                 Row(f"{model}: dsti, STS text", model, "dsti", "sts"),
                 Row(f"{model}: budget search + sparsify, no distill", model, "results/dsti/dsti_budget099.toml")]
    rows.append(Row("minilm-sst2: tau 0.45, no distill, SST-2 text", "minilm-sst2",
                    "results/dsti/dsti_classifier_threshold045.toml", "sst2"))
    return rows


def sst2_text_file(work: Path) -> Path:
    from .task_floor import calibration_file

    path = work / "sst2-calibration.txt"
    return path if path.exists() else calibration_file(path, quick=True)


def sts_text_file(work: Path) -> Path:
    import numpy as np

    from .sts import read_sts
    from .task_floor import CALIBRATION_TEXTS

    path = work / "sts-calibration.txt"
    if not path.exists():
        sentences = read_sts("train").sentences
        pick = np.random.default_rng(0).permutation(len(sentences))[:CALIBRATION_TEXTS]
        write_text_atomic(path, "\n".join(sentences[i] for i in pick) + "\n")
    return path


TEXT_FILES = {"sst2": sst2_text_file, "sts": sts_text_file}


def _edgecomp(args: list[str], log_path: Path) -> int:
    with open(log_path, "a") as log:
        return subprocess.run([sys.executable, "-m", "edgecomp", *args], stdout=log, stderr=subprocess.STDOUT,
                              cwd=RESULTS.parents[1]).returncode


def measure_row(row: Row, work: Path, log=print) -> dict:
    task, data = TASKS[row.model]
    out = work / "exports" / "".join(c if c.isalnum() else "_" for c in row.label)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    logfile = out.with_suffix(".log")
    logfile.unlink(missing_ok=True)
    args = ["export", row.model, "--target", "android", "-o", str(out)]
    if row.recipe:
        args += ["--recipe", row.recipe]
    if row.texts:
        args += ["--texts", str(TEXT_FILES[row.texts](work))]
    log(f"{row.label}: export")
    if _edgecomp(args, logfile) != 0:
        return {**asdict(row), "failed": _last_line(logfile)}
    log(f"{row.label}: eval ({task})")
    if _edgecomp(["eval", str(out), "--task", task, "--data", str(shared_data_dir() / data)], logfile) != 0:
        return {**asdict(row), "failed": _last_line(logfile)}
    manifest = json.loads((out / "manifest.json").read_text())
    ev = manifest["task_eval"][task]
    result = {**asdict(row), "task": task, "metric": ev["metric"], "n": ev["n"], "fp32": ev["reference"]["value"],
              "artifacts": []}
    steps = {s["method"]: s for s in (manifest.get("compression") or {}).get("steps", [])}
    if "dynamic-k" in steps:
        result["thresholds"] = steps["dynamic-k"]["details"]["thresholds"]
    for a in manifest["artifacts"]:
        arm = a.get("arm64") or {}
        result["artifacts"].append({"path": a["path"], "bytes": a["size_bytes"], "value": a["metrics"]["task"][task]["value"],
                                    "drop": a["metrics"]["task"][task]["drop"],
                                    "arm_instructions": arm.get("instructions_per_inference"),
                                    "arm_parity_ok": arm.get("parity_ok")})
    return result


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "no output")


def with_ratios(result: dict) -> dict:
    """Each artifact's instructions against the same model's plain int8 artifact of the same format."""
    base = {(r["model"], a["path"]): a["arm_instructions"] for r in result["rows"] if r["recipe"] is None
            and r.get("texts") is None for a in r.get("artifacts", [])}
    for r in result["rows"]:
        for a in r.get("artifacts", []):
            b = base.get((r["model"], a["path"]))
            a["arm_vs_int8"] = round(a["arm_instructions"] / b, 4) if b and a["arm_instructions"] else None
    return result


def run_study(out_json: Path, rows: list[Row], work: Path, jobs: int = 2, fresh: bool = False, log=print) -> dict:
    result = json.loads(out_json.read_text()) if out_json.exists() and not fresh else {"rows": []}
    done = {r["label"] for r in result["rows"] if "failed" not in r}
    todo = [r for r in rows if r.label not in done]
    work.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for fut in as_completed([pool.submit(measure_row, r, work, log) for r in todo]):
            got = fut.result()
            result["rows"] = [r for r in result["rows"] if r["label"] != got["label"]] + [got]
            write_json_atomic(out_json, with_ratios(result))
            log(f"{got['label']}: " + (got["failed"] if "failed" in got else "done"))
    order = {r.label: i for i, r in enumerate(default_rows() + rows)}
    result["rows"].sort(key=lambda r: order.get(r["label"], len(order)))
    return with_ratios(result)
