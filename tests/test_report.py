"""`edgecomp report`: report.md that GitHub renders (well-formed tables, the task's fidelity figures),
report.html that opens in headless Chromium with every chart drawn and nothing fetched, comparison
reports that keep `--force` working, terminal tables that never cut names.

The eval/fit/early-exit blocks are added to a real tiny export's manifest in the layout `edgecomp eval`,
`edgecomp fit` and the early-exit plan write (the early-exit rows come from edgecomp.early_exit.calibrate
itself), then rendered through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chromium import CHROMIUM, blank_fraction, render_page
from edgecomp.cli import app
from tiny import ROOT

runner = CliRunner()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install -y chromium; CI installs it via scripts/setup_ci.sh)")


def md_blocks(text: str) -> tuple[list[dict], list[str]]:
    """GitHub-flavoured reading of a Markdown text: its tables (header, rows) and its paragraphs."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables, paragraphs, cur, row = [], [], None, None
    for i, t in enumerate(tokens):
        if t.type == "table_open":
            cur = {"header": [], "rows": []}
        elif t.type == "tr_open":
            row = []
        elif t.type in ("th_open", "td_open"):
            row.append(tokens[i + 1].content if tokens[i + 1].type == "inline" else "")
        elif t.type == "tr_close":
            if cur["header"]:
                cur["rows"].append(row)
            else:
                cur["header"] = row
        elif t.type == "table_close":
            tables.append(cur)
            cur = None
        elif t.type == "paragraph_open" and cur is None:
            paragraphs.append(tokens[i + 1].content)
    return tables, paragraphs


def assert_well_formed(text: str) -> tuple[list[dict], list[str]]:
    """Every pipe line of the source is a row of a parsed table, every row has the header's width."""
    tables, paragraphs = md_blocks(text)
    pipe_lines = [ln for ln in text.splitlines() if ln.startswith("|") and not set(ln) <= set("|-")]
    assert sum(1 + len(t["rows"]) for t in tables) == len(pipe_lines), "a pipe line was not read as a table row"
    for t in tables:
        for r in t["rows"]:
            assert len(r) == len(t["header"]), (t["header"], r)
    for p in paragraphs:
        assert not p.lstrip().startswith("|"), p
    return tables, paragraphs


def table_with(tables, first_header: str, column: str) -> dict:
    t = next(t for t in tables if t["header"][0] == first_header and column in t["header"])
    return {"header": t["header"], "rows": t["rows"], "col": t["header"].index(column)}


@pytest.fixture(scope="module")
def tiny_export(tiny_bert_dir, fast_target, few_texts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "tiny"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(fast_target), "-o", str(out),
                              "--texts", str(few_texts)])
    assert res.exit_code == 0, res.output
    return out


def early_exit_block(n_layers: int = 2) -> dict:
    """The manifest's early_exit block, its curve computed by the calibration code the plan uses."""
    from edgecomp.early_exit.calibrate import choose_tau, depth_table, evaluate_tau

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = rng.normal(size=(200, n_layers, 2)) + 2.5 * np.eye(2)[labels][:, None] * np.linspace(0.5, 1.5, n_layers)[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    tau, rows = choose_tau(probs, labels, 1.0)
    chosen, depths = evaluate_tau(probs, labels, tau), depth_table(probs, labels)
    return {"n_layers": n_layers, "tau": tau, "exit_rule": "first exit whose max softmax probability >= tau",
            "max_accuracy_drop_points": 1.0, "static_depth": n_layers,
            "accuracy": {"full": depths[-1]["accuracy"], "early_exit": chosen["accuracy"],
                         "drop_points": 100 * (depths[-1]["accuracy"] - chosen["accuracy"])},
            "mean_exit_layer": chosen["mean_exit_layer"], "layer_speedup": chosen["layer_speedup"],
            "tau_grid": rows, "depths": depths}


@pytest.fixture(scope="module")
def full_export(tiny_export, tmp_path_factory) -> Path:
    """The tiny export's manifest with the blocks of `edgecomp eval`, `edgecomp fit` and an early-exit export."""
    out = tmp_path_factory.mktemp("report-full") / "tiny"
    subprocess.run(["cp", "-r", str(tiny_export), str(out)], check=True)
    m = json.loads((out / "manifest.json").read_text())
    for i, a in enumerate(m["artifacts"]):
        a["metrics"]["task"] = {"sts": {"metric": "spearman", "value": 81.77 - i, "drop": 0.26 + i}}
    m["task_eval"] = {"sts": {"metric": "spearman", "data": "sts/dev.tsv", "n": 1500,
                              "reference": {"name": "pytorch-fp32", "value": 82.03}}}
    m["fit"] = {"budget": {"max_size_bytes": 12_000_000, "max_rss_mb": 30}, "quality": "sts:-1.0", "candidates": [
        {"name": f"c{k}", "recipe": f"fit/c{k}.toml", "size_bytes": s, "rss_mb": 20 + k, "quality_drop": q,
         "latency_ms": 5.0 + k, "on_frontier": f, "chosen": k == 1, "measured": k < 3}
        for k, (s, q, f) in enumerate([(9e6, 2.0, True), (11e6, 0.8, True), (14e6, 0.3, True), (16e6, 1.2, False)])]}
    m["early_exit"] = early_exit_block()
    (out / "manifest.json").write_text(json.dumps(m))
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_report_md_tables_and_sections(full_export):
    text = (full_export / "report.md").read_text()
    tables, paragraphs = assert_well_formed(text)
    assert any(p.startswith("Fidelity: each artifact") for p in paragraphs)
    m = json.loads((full_export / "manifest.json").read_text())
    arts = table_with(tables, "file", "cos mean")
    assert [r[0] for r in arts["rows"]] == [f"`{a['path']}`" for a in m["artifacts"]]
    assert [r[arts["col"]] for r in arts["rows"]] == [f"{a['metrics']['fidelity']['cos_mean']:.4f}" for a in m["artifacts"]]
    sts = table_with(tables, "model", "spearman")
    assert sts["rows"][0][:2] == ["pytorch-fp32", "82.03"]
    assert [r[1:] for r in sts["rows"][1:]] == [[f"{81.77 - i:.2f}", f"{0.26 + i:.2f}"] for i in range(len(m["artifacts"]))]
    fit = table_with(tables, "candidate", "frontier")
    assert [r[0] for r in fit["rows"]] == ["c0", "**c1**", "c2", "c3"]
    assert [r[fit["col"]] for r in fit["rows"]] == ["yes", "yes", "yes", ""]
    tau = table_with(tables, "τ", "accuracy")
    assert len(tau["rows"]) == len(m["early_exit"]["tau_grid"])
    for chart in ("quality-task-sts", "quality-cosine", "size", "early-exit", "fit"):
        assert f"![{chart}](charts/{chart}.png)" in text
        assert (full_export / "charts" / f"{chart}.png").stat().st_size > 5000
    # what the report wrote is the export's: --force can still replace the folder
    assert {"report.md", "report.html", "charts/fit.png"} <= set(m["files"])


def test_size_breakdown_covers_every_artifact(tiny_export):
    """Every artifact (here .onnx fp32 and int8) has a bar; the components add up to its file size."""
    m = json.loads((tiny_export / "manifest.json").read_text())
    sb = m["size_breakdown"]
    for a in m["artifacts"]:
        split = sb[a["path"]]
        assert split["total"] == a["size_bytes"]
        assert sum(v for k, v in split.items() if k != "total") == a["size_bytes"]
        assert split["token_embeddings"] > 0 and split["attention"] > 0 and split["feed_forward"] > 0


@pytest.fixture(scope="module")
def tiny_android(tiny_bert_dir, few_texts, tmp_path_factory) -> Path:
    """The tiny model for android (.onnx, .ort, .tflite), without the emulated checks, two buckets, no bench."""
    pytest.importorskip("litert_torch")
    d = tmp_path_factory.mktemp("report-android")
    src = (ROOT / "edgecomp" / "data" / "targets" / "android.toml").read_text()
    target = d / "android-tiny.toml"
    target.write_text(src.replace('name = "android"', 'name = "android-tiny"')
                      .replace('checks = ["arm64", "ort-mobile", "xnnpack"]', "checks = []")
                      .replace("seq_buckets = [16, 32, 64, 128]", "seq_buckets = [16]"))
    out = d / "out"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(target), "-o", str(out), "--no-bench",
                              "--texts", str(few_texts)])
    assert res.exit_code == 0, res.output
    return out


def test_ort_and_tflite_breakdowns_match_the_onnx_one(tiny_android):
    """The .ort/.tflite breakdowns (read from their flatbuffers) attribute the same weights as the .onnx one,
    the primary .tflite included, and the plot draws a bar for each."""
    m = json.loads((tiny_android / "manifest.json").read_text())
    sb = m["size_breakdown"]
    assert set(sb) == {"pytorch-fp32", "model.onnx", "model.ort", "model.tflite"}
    for a in m["artifacts"]:
        assert sb[a["path"]]["total"] == a["size_bytes"]
        for c in ("token_embeddings", "attention", "feed_forward"):
            # the weight matrices attribute exactly; a .tflite's width-sized vectors (biases, scales) go by a
            # majority vote of the parameters of that width, which at hidden size 64 moves up to ~8%
            assert sb[a["path"]][c] == pytest.approx(sb["model.onnx"][c], rel=0.1), (a["path"], c, sb)
    text = (tiny_android / "report.md").read_text()
    tables, paragraphs = assert_well_formed(text)  # --no-bench: the Fidelity line follows the table directly
    assert any(p.startswith("Fidelity: each artifact") for p in paragraphs)
    assert table_with(tables, "component", "model.tflite")["header"][1:] == list(sb)


@needs_chromium
def test_report_html_renders_in_chromium(full_export, tmp_path):
    html = full_export / "report.html"
    assert "http://" not in html.read_text() and "https://" not in html.read_text()
    page = render_page(html)
    assert page["errors"] == []
    charts = [i for i in page["images"] if i["chart"]]
    assert sorted(i["chart"] for i in charts) == sorted(f"charts/{p.name}" for p in (full_export / "charts").glob("*.png"))
    for img in charts:
        assert img["complete"] and img["naturalWidth"] > 300 and img["naturalHeight"] > 200, img
        assert img["width"] > 300 and img["height"] > 200, img  # laid out on the page, not collapsed
        assert blank_fraction(page["screenshot"], img) < 0.97, img  # drawn: not an empty white box
    (tmp_path / "tiny-report.png").write_bytes(page["screenshot"])


@needs_chromium
def test_chromium_check_sees_a_broken_page(tmp_path):
    """The checks above can fail: a page that fetches an image is blocked by the report's own CSP."""
    from edgecomp.report.html import CSP

    page = tmp_path / "broken.html"
    page.write_text(f'<html><head><meta http-equiv="Content-Security-Policy" content="{CSP}"></head>'
                    '<body><img src="https://example.com/x.png" width="400" height="300"></body></html>')
    got = render_page(page)
    assert got["errors"], "the blocked fetch was not reported"
    img = got["images"][0]
    assert img["naturalWidth"] == 0
    assert blank_fraction(got["screenshot"], img) > 0.97


def test_comparison_report_and_force(tiny_export, full_export, tmp_path):
    dest = tmp_path / "cmp"
    res = runner.invoke(app, ["report", str(tiny_export), str(full_export), "-o", str(dest)])
    assert res.exit_code == 0, res.output
    text = (dest / "comparison.md").read_text()
    tables, _ = assert_well_formed(text)
    rows = table_with(tables, "export", "artifact")["rows"]
    n = len(json.loads((tiny_export / "manifest.json").read_text())["artifacts"])
    assert len([r for r in rows if r[2].startswith("`model")]) == 2 * n
    assert "![size](charts/comparison-size.png)" in text and (dest / "comparison.html").is_file()
    # an existing folder: refused without --force, before anything is written; replaced with it
    before = (dest / "comparison.md").stat().st_mtime_ns
    res = runner.invoke(app, ["report", str(tiny_export), str(full_export), "-o", str(dest)])
    assert res.exit_code == 2 and "already exists" in res.output
    assert (dest / "comparison.md").stat().st_mtime_ns == before
    res = runner.invoke(app, ["report", str(tiny_export), str(full_export), "-o", str(dest), "--force"])
    assert res.exit_code == 0, res.output
    # a folder edgecomp did not make is never written into
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["report", str(tiny_export), str(full_export), "-o", str(foreign), "--force"])
    assert res.exit_code == 2 and "not an edgecomp export" in res.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # default: into the first export, whose manifest then lists the files, so --force still replaces it
    res = runner.invoke(app, ["report", str(tiny_export), str(full_export)])
    assert res.exit_code == 0, res.output
    files = set(json.loads((tiny_export / "manifest.json").read_text())["files"])
    assert {"comparison.md", "comparison.html", "charts/comparison-size.png"} <= files
    from edgecomp.outdir import refuse_to_replace

    refuse_to_replace(tiny_export)  # raises if any file is not listed


def _cli(args, columns: int = 80, **kw):
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "edgecomp", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, **kw)


def test_terminal_tables_keep_names_whole(tiny_export, few_texts, tmp_path):
    """At 80 columns, piped: `bench A B` prints each export's artifact table (the one `export` prints) and
    the side-by-side one with every artifact and folder name whole on one line, no ellipsis, no control
    characters."""
    a = tmp_path / "exports" / "a-folder-name-long-enough-to-be-cut-in-a-table"
    b = tmp_path / "exports" / "the-second-export-folder"
    for d in (a, b):
        d.parent.mkdir(exist_ok=True)
        subprocess.run(["cp", "-r", str(tiny_export), str(d)], check=True)
    m = json.loads((a / "manifest.json").read_text())
    res = _cli(["bench", str(a), str(b), "--texts", str(few_texts)])
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout and "\x1b" not in res.stdout + res.stderr
    lines = res.stdout.splitlines()
    for ln in lines:  # within 80 columns, unless it is a name that is longer
        assert len(ln) <= 80 or str(a) in ln or str(b) in ln, ln
    for art in m["artifacts"]:
        assert sum(art["path"] in ln for ln in lines) >= 4, res.stdout  # 2 export tables + 2 comparison rows
    for d in (a, b):
        assert any(str(d) in ln for ln in lines), res.stdout
    # the progress lines (stderr) are plain text too: no colour codes, no cursor movement, when piped
    assert "load:" in res.stderr and "\r" not in res.stderr


def test_causal_lm_report_shows_its_fidelity(tmp_path):
    """A causal-LM export (no bench): perplexity and greedy tokens in the artifacts table, not dashes, and
    the "Fidelity:" line stays a paragraph right after the table."""
    from tiny_decoders import write_tiny_decoder

    src = write_tiny_decoder("gpt2", tmp_path / "src")
    texts = tmp_path / "texts.txt"
    texts.write_text("the model runs on the phone and the answer is short .\nsmall models fit in memory .\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(src), "--target", "cpu-x86", "-o", str(out), "--no-bench",
                              "--texts", str(texts)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    tables, paragraphs = assert_well_formed((out / "report.md").read_text())
    assert any(p.startswith("Fidelity: each artifact") for p in paragraphs)
    t = table_with(tables, "file", "NLL ratio")
    for a, row in zip(m["artifacts"], t["rows"]):
        f = a["metrics"]["fidelity"]
        cells = dict(zip(t["header"], row))
        assert cells["perplexity (PyTorch)"] == f"{f['ppl']:.3f} ({f['ppl_torch']:.3f})"
        assert cells["NLL ratio"] == f"{f['nll_ratio']:.5f}"
        assert cells["greedy tokens equal, worst prompt"] == f"{f['greedy_match_min']} of {f['max_new_tokens']}"
    assert "cos mean" not in t["header"]


def test_compression_reports_progress(tiny_bert_dir, fast_target, few_texts, tmp_path, one_torch_thread):
    """`export --recipe` with the `fast` recipe's steps (a few distillation steps, for time): a line per
    recipe step and per distilled part, through the export's log (plain lines: no carriage returns, no
    colour codes)."""
    recipe = tmp_path / "fast-short.toml"
    recipe.write_text('description = "fast, 3 distillation steps"\nsteps = [{method = "prune-ffn", keep = 0.9}, '
                      '{method = "smooth", alpha = 0.85}, {method = "distill", quant_aware = true, steps = 3}]\n')
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(fast_target), "--recipe", str(recipe),
                              "-o", str(tmp_path / "out"), "--texts", str(few_texts), "--no-bench"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for k, method in enumerate(("prune-ffn", "smooth", "distill"), 1):
        assert any(f"compress: step {k}/3 {method}" in ln for ln in lines), res.output
        assert any(f"compress: step {k}/3 {method} done in" in ln for ln in lines), res.output
    parts = [ln for ln in lines if "distill: encoder.layer." in ln]
    assert len(parts) == 2 and all("loss" in ln and "steps" in ln for ln in parts), res.output
    assert "\r" not in res.output and "\x1b" not in res.output
