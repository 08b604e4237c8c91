"""`edgecomp fit` on a tiny model with a tiny search space (2 x 2 candidates): the chosen recipe meets the
budget and `edgecomp export --recipe OUT/recipe.toml` reproduces OUT byte for byte; an impossible budget is
one line naming the closest candidate; a second run measures nothing again (cache); --workers 2 on Ray
gives the serial frontier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecomp.cli import app

REPO = Path(__file__).resolve().parents[1]
SPACE = """
[[axes]]
name = "weights"
choices = [
  {label = "w8"},
  {label = "w4b32", quantization = {weights = {bits = 4, block = 32}}},
]
[[axes]]
name = "prune"
choices = [
  {label = "keep1.0"},
  {label = "keep0.5", steps = [{method = "prune-ffn", keep = 0.5}]},
]
"""
BUDGET = ["--max-size", "150KB", "--quality", "sts:-5"]  # the tiny model's int8 .onnx is ~0.2 MB: int4 is needed


def edgecomp(*args, timeout=900, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "edgecomp", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def search(tiny_bert_dir, fast_target, tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    space = root / "space.toml"
    space.write_text(SPACE)
    args = [tiny_bert_dir, "--target", fast_target, *BUDGET, "--space", space, "--cache", root / "cache"]
    res = edgecomp("fit", *args, "-o", root / "out", "--no-bench")
    assert res.returncode == 0, res.stderr
    return {"root": root, "args": args, "out": root / "out", "stdout": res.stdout, "stderr": res.stderr}


def results(cache: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("*/result.json")}


def test_budget_met_and_recipe_reproduces(search, tiny_bert_dir, fast_target):
    out = search["out"]
    m = json.loads((out / "manifest.json").read_text())
    f = m["fit"]
    assert f["budget"]["max_size_bytes"] == 150_000 and f["quality"] == "sts:-5.0"
    assert json.loads((out / "fit.json").read_text())["candidates"] == f["candidates"]
    chosen = [c for c in f["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["measured"] and chosen[0]["on_frontier"]
    c = chosen[0]
    assert c["size_bytes"] <= 150_000 and c["quality_drop"] <= 5.0
    for k in ("name", "recipe", "size_bytes", "rss_mb", "quality_drop", "latency_ms", "on_frontier", "measured"):
        assert all(k in x for x in f["candidates"])
    assert c["recipe"]["quantization"]["weights"]["bits"] == 4  # int8 does not fit 150 KB
    # OUT's quantized artifact is the one measured, and meets the budget itself
    q = next(a for a in m["artifacts"] if a["precision"] != "fp32")
    assert q["size_bytes"] == c["size_bytes"] <= 150_000
    assert m["task_eval"]["sts"]["reference"]["name"] == "pytorch-fp32"
    assert {"recipe.toml", "fit.json"} <= set(m["files"])
    # judged on task quality: the recipe states the cosine floor it was measured at, below the artifacts' own
    import tomllib

    stated = tomllib.loads((out / "recipe.toml").read_text())
    tol = stated["tolerance"]
    # the thread count the candidate's compression ran with (the floats depend on it), so any host's default reproduces it
    assert stated["compress_threads"] == 1 and m["recipe"]["compress_threads"] == 1
    assert 0 < tol["cos_mean"] <= min(a["metrics"]["fidelity"]["cos_mean"] for a in m["artifacts"])
    # the recipe file reproduces the export exactly
    again = search["root"] / "again"
    res = edgecomp("export", tiny_bert_dir, "--target", fast_target, "--recipe", out / "recipe.toml", "-o", again,
                   "--no-bench", env={"OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.stderr
    m2 = json.loads((again / "manifest.json").read_text())
    assert {a["path"]: a["sha256"] for a in m2["artifacts"]} == {a["path"]: a["sha256"] for a in m["artifacts"]}
    assert "fit:" in search["stdout"] and "chosen" in search["stdout"]


def test_second_run_reuses_the_cache(search):
    cache = search["root"] / "cache"
    before = results(cache)
    assert len(before) == 2  # the two int4 candidates were measured (int8 is over the size by estimate)
    res = CliRunner().invoke(app, ["fit", *map(str, search["args"]), "-o", str(search["root"] / "out2"), "--no-bench"])
    assert res.exit_code == 0, res.output
    assert "measure (2 cached)" in res.output
    assert results(cache) == before  # nothing measured again
    a = json.loads((search["out"] / "fit.json").read_text())["candidates"]
    b = json.loads((search["root"] / "out2" / "fit.json").read_text())["candidates"]
    assert a == b


def test_impossible_budget_names_the_closest_candidate(search):
    args = [str(a) for a in search["args"]]
    args[args.index("150KB")] = "20KB"
    res = CliRunner().invoke(app, ["fit", *args, "-o", str(search["root"] / "never")])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]  # the rest is progress
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    err = errors[0]
    assert "closest: w4b32" in err and "size" in err and "> 0.02 MB" in err, err
    assert not (search["root"] / "never").exists()


def test_bad_budget_is_one_line(search):
    for bad, needle in ((["--max-size", "twelve"], "not a size"), (["--quality", "sts"], "TASK:DROP"),
                        (["--quality", "classification:-1"], "does not fit")):
        args = [str(a) for a in search["args"]]
        flag = bad[0]
        args[args.index(flag) + 1] = bad[1]
        res = CliRunner().invoke(app, ["fit", *args, "-o", str(search["root"] / "bad")])
        errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and needle in errors[0], res.output


@pytest.mark.slow
def test_ray_workers_give_the_serial_frontier(search):
    pytest.importorskip("ray")
    root = search["root"]
    args = [str(a) for a in search["args"]]
    args[args.index("--cache") + 1] = str(root / "ray-cache")  # measured again, by Ray tasks
    res = edgecomp("fit", *args, "--workers", "2", "-o", root / "ray-out", "--no-bench")
    assert res.returncode == 0, res.stderr
    assert len(results(root / "ray-cache")) == 2

    def frontier(out):
        f = json.loads((out / "fit.json").read_text())
        return sorted((c["name"], c["size_bytes"], c["quality_drop"], c["chosen"]) for c in f["candidates"] if c["on_frontier"])

    assert frontier(root / "ray-out") == frontier(search["out"])


ARM_SPACE = """
[[axes]]
name = "weights"
choices = [
  {label = "w8"},
  {label = "w4b32", quantization = {weights = {bits = 4, block = 32}}},
]
"""


@pytest.fixture(scope="module")
def arm_search(tiny_bert_dir, tmp_path_factory):
    """The tiny model on the arm64 target (the .onnx only) with an instruction budget relative to the plain
    int8 export, which is also the space's all-default candidate (so it is measured once)."""
    from edgecomp.bench import arm64

    if not arm64.env_present():
        pytest.skip(arm64.SETUP_HINT)
    root = tmp_path_factory.mktemp("fit-arm")
    (root / "space.toml").write_text(ARM_SPACE)
    src = (REPO / "edgecomp" / "data" / "targets" / "arm64.toml").read_text()
    target = root / "arm64-fast.toml"
    target.write_text(src.replace('name = "arm64"', 'name = "arm64-fast"').replace("runs = 30", "runs = 3")
                      .replace("warmup = 5", "warmup = 1").replace("seq_len = 128", "seq_len = 32"))
    args = [tiny_bert_dir, "--target", target, "--max-size", "1MB", "--quality", "sts:-5",
            "--space", root / "space.toml", "--cache", root / "cache"]
    res = edgecomp("fit", *args, "--max-arm-instructions", "1.0x", "-o", root / "out", "--no-bench")
    assert res.returncode == 0, res.stderr
    return {"root": root, "args": args, "out": root / "out"}


def test_arm_instruction_budget_is_measured_and_met(arm_search):
    fit = json.loads((arm_search["out"] / "fit.json").read_text())
    base = fit["budget"]["arm_baseline_instructions"]
    measured = {c["name"]: c for c in fit["candidates"] if c["measured"]}
    assert len(measured) == 2 and all(c["arm_instructions"] > 0 for c in measured.values())
    assert base == measured["target-default"]["arm_instructions"]  # the plain export is the all-default candidate
    chosen = next(c for c in fit["candidates"] if c["chosen"])
    assert chosen["arm_instructions"] <= fit["budget"]["max_arm_instructions"] == base
    # the chosen export carries the guest's own count of the same artifact
    manifest = json.loads((arm_search["out"] / "manifest.json").read_text())
    assert manifest["artifacts"][0]["arm64"]["instructions_per_inference"] > 0
    assert "ARM M instr" in (arm_search["out"] / "report.md").read_text()


def test_arm_instruction_budget_nobody_meets_is_one_line(arm_search):
    res = edgecomp("fit", *arm_search["args"], "--max-arm-instructions", "1k", "-o", arm_search["root"] / "none")
    assert res.returncode == 2, res.stderr
    assert "no candidate meets the budget" in res.stderr and "ARM instructions" in res.stderr
    assert not (arm_search["root"] / "none").exists()


def test_arm_instruction_budget_needs_an_arm_target(tiny_bert_dir, fast_target, tmp_path):
    res = edgecomp("fit", tiny_bert_dir, "--target", fast_target, "--max-size", "1MB", "--quality", "sts:-5",
                   "--max-arm-instructions", "0.9x", "-o", tmp_path / "out")
    assert res.returncode == 2 and "not checked on aarch64" in res.stderr, res.stderr
    res = edgecomp("fit", tiny_bert_dir, "--target", fast_target, "--max-size", "1MB", "--quality", "sts:-5",
                   "--max-arm-instructions", "lots", "-o", tmp_path / "out")
    assert res.returncode == 2 and "is not a count or a ratio" in res.stderr, res.stderr
