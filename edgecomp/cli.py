"""The `edgecomp` command: export, run, bench, report, compress, adapt, targets, models, recipes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local folders only

from .quiet import quiet_third_party

quiet_third_party()  # before anything imports torch/transformers: users read our progress, not library logs

import typer
from rich.console import Console
from rich.table import Table

from .errors import EdgecompError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress transformer models for small devices, export them per target, and measure the result.")
console = Console(stderr=True)
out = Console()


def _fail(e: EdgecompError) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _progress():
    import time

    t0 = time.time()

    def log(msg: str) -> None:
        from rich.markup import escape

        console.print(f"[dim]{time.time() - t0:6.1f}s[/] {escape(msg)}", highlight=False, soft_wrap=True)

    return log


@app.command()
def export(
    model: str = typer.Argument(..., help="reference model name (see `edgecomp models`) or a local Hugging Face directory"),
    target: str = typer.Option("cpu-x86", "--target", "-t", help="target profile (see `edgecomp targets`)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="output folder (default out/<model>-<target>)"),
    recipe: str = typer.Option("none", "--recipe", "-r", help="recipe name (see `edgecomp recipes`; the model file's first) or a recipe .toml"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="text file (one per line) for verification and calibration"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
    no_bench: bool = typer.Option(False, "--no-bench", help="verify fidelity but skip latency and memory"),
    custom_ops: bool = typer.Option(False, "--custom-ops", help="emit compressed layers as edgecomp.* ONNX functions"),
    early_exit: bool = typer.Option(False, "--early-exit", help="export as stages with confident early exits"),
    max_accuracy_drop: float = typer.Option(1.0, "--max-accuracy-drop", help="early exit: accuracy budget in points"),
    exit_data: Optional[Path] = typer.Option(None, "--exit-data", help="early exit: labelled TSV (text<TAB>label) for heads and calibration"),
    heads: Optional[str] = typer.Option(None, "--heads", help="early exit: plain | ztw (default from the model file)"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="longest input in tokens, for every artifact "
                                             "(default: the model's limit, capped by the target's largest TFLite bucket)"),
    with_tokenizer: bool = typer.Option(False, "--with-tokenizer", help="also ONNX Runtime artifacts that take strings "
                                        "(the tokenizer as onnxruntime-extensions ops in the graph): model-text.onnx/.ort"),
    adapter_roles: Optional[str] = typer.Option(None, "--adapters", help="LoRA-XS adapter slots on these Linear roles, e.g. "
                                                "query,key,value,attention-output,ffn-up,ffn-down (default: the --adapter's)"),
    adapter_rank: Optional[int] = typer.Option(None, "--adapter-rank", help="rank r of the adapter slots (default: the --adapter's)"),
    adapter: Optional[list[Path]] = typer.Option(None, "--adapter", help="a folder written by `edgecomp adapt`: exported "
                                                 "next to the base as adapters/NAME.onnx_adapter (repeatable)"),
):
    """Export MODEL for a target: every artifact the device needs, verified, measured, with manifest and report."""
    from .pipeline import ExportOptions, export as run_export
    from .texts import read_texts

    try:
        slots = None
        if adapter_roles is not None or adapter_rank is not None or adapter:
            from .adapt.export import AdapterSlots

            if early_exit:
                raise EdgecompError("--early-exit stages carry no adapter slots", "drop --early-exit or the adapter options")
            slots = AdapterSlots.from_options(adapter_roles, adapter_rank, adapter)
        opts = ExportOptions(recipe=recipe, texts=read_texts(texts) if texts else None, bench=not no_bench,
                             custom_ops=custom_ops, early_exit=early_exit, max_accuracy_drop=max_accuracy_drop,
                             exit_data=str(exit_data) if exit_data else None, exit_heads=heads,
                             max_length=max_length, with_tokenizer=with_tokenizer, adapters=slots)
        dest = output or Path("out") / f"{Path(model).name}-{target}"
        manifest = run_export(model, target, dest, opts, force=force, log=_progress())
    except EdgecompError as e:
        _fail(e)
    _print_artifacts(manifest)
    out.print(f"wrote {dest}/manifest.json, {dest}/report.md and {dest}/report.html", markup=False, highlight=False,
              soft_wrap=True)


def _print_artifacts(manifest: dict) -> None:
    rows = []
    for a in manifest["artifacts"]:
        m = a.get("metrics", {})
        f = m.get("fidelity", {})
        lat = m.get("latency_ms") or {}
        cos = [f"{f[k]:.4f}" if isinstance(f.get(k), (int, float)) else "—" for k in ("cos_mean", "cos_min")]
        rows.append([a["path"], a["precision"], f"{a['size_bytes'] / 1e6:.1f}", *cos,
                     str(lat.get("p50", "—")), str(m.get("peak_rss_mb") or "—")])
    _print_table(f"{manifest['model']['name']} -> {manifest['target']['name']} (recipe {manifest['recipe']['name']})",
                 ("artifact", "precision", "MB", "cos mean", "cos worst", "p50 ms 1thr", "peak RSS MB"), rows)


def _print_table(title: str, columns: tuple[str, ...], rows: list[list[str]], keys: int = 1) -> None:
    """A table whose cells are never cut: a grid when it fits the console with every word of every cell
    whole on one line (rendered, then checked), else one record per row: its first ``keys`` cells as a
    heading line, the rest as "column: value" wrapped between values. Piped output is the same text,
    without colour codes."""
    import io
    import textwrap

    from rich.console import Console as _Console

    plain = dict(markup=False, highlight=False, soft_wrap=True)
    t = Table(title=title)
    for i, col in enumerate(columns):  # the heading cells (names) get their width; rich shares out the rest
        t.add_column(col, overflow="fold", no_wrap=i < keys)
    for r in rows:
        t.add_row(*r)
    probe = _Console(file=io.StringIO(), width=out.width, color_system=None, legacy_windows=False)
    probe.print(t, markup=False, highlight=False, crop=False)  # uncropped: a too-wide grid shows as long lines
    grid = probe.file.getvalue()
    lines = grid.splitlines()
    if all(len(ln) <= out.width for ln in lines) and all(
            any(w in ln for ln in lines) for r in rows for cell in r for w in cell.split()):
        out.print(grid, end="", **plain)
        return
    out.print(title, **plain)
    for r in rows:
        out.print("  ".join(r[:keys]), **plain)
        rest = "; ".join(f"{c}: {v}" for c, v in zip(columns[keys:], r[keys:]))
        out.print(textwrap.fill(rest, max(out.width, 40), initial_indent="    ", subsequent_indent="    ",
                                break_long_words=False, break_on_hyphens=False), **plain)


@app.command()
def run(
    artifact: Path = typer.Argument(..., help="an export folder (its primary artifact) or one .onnx/.ort/.tflite in it"),
    input: Path = typer.Option(..., "--input", "-i", help="text file, one text per line"),
    output: Path = typer.Option(Path("-"), "--output", "-o", help="JSON lines output (default stdout)"),
    threads: int = typer.Option(1, "--threads"),
    batch_size: int = typer.Option(8, "--batch-size", help="texts per runtime call (grouped by length)"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="cut texts at N tokens (default: the artifact's limit, in the manifest)"),
    generate: Optional[int] = typer.Option(None, "--generate", help="causal LM: greedy-decode N tokens per line"),
    perplexity: bool = typer.Option(False, "--perplexity", help="causal LM: perplexity and tokens scored per line"),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="run with this adapter active: a name from the "
                                          "manifest's adapters, or an .onnx_adapter file"),
):
    """Run an exported artifact on its runtime over a text file; one JSON object per input line, with its index."""
    from .infer import run_file

    try:
        s = run_file(artifact, input, output, threads=threads, batch_size=batch_size, generate=generate,
                     perplexity=perplexity, max_length=max_length, adapter=adapter)
    except EdgecompError as e:
        _fail(e)
    if s.blank:
        shown = ", ".join(str(i) for i in s.blank[:5]) + (" ..." if len(s.blank) > 5 else "")
        console.print(f"note: {len(s.blank)} blank line(s) got an error record (index {shown})", highlight=False,
                      soft_wrap=True)
    if s.truncated:
        console.print(f"note: {s.truncated} of {s.records - len(s.blank)} texts were longer than {s.max_length} tokens "
                      "and were cut there (records say truncated: true; --max-length lowers the limit)",
                      highlight=False, soft_wrap=True)


@app.command()
def adapt(
    model: str = typer.Argument(..., help="reference model name or a local Hugging Face directory (an encoder)"),
    data: Path = typer.Option(..., "--data", help="training TSV: text<TAB>label (classification) or "
                              "sentence1<TAB>sentence2<TAB>score / STS Benchmark rows (sts)"),
    task: str = typer.Option("classification", "--task", help="classification | sts"),
    output: Path = typer.Option(..., "--output", "-o", help="adapter folder (adapter.json + adapter.safetensors)"),
    method: str = typer.Option("lora-xs", "--method", help="lora-xs | lora | head-only | full"),
    rank: int = typer.Option(8, "--rank", help="adapter rank r (LoRA-XS trains r x r per module)"),
    roles: str = typer.Option(",".join(("query", "key", "value", "attention-output", "ffn-up", "ffn-down")), "--roles",
                              help="Linear roles that get adapters (found by the architecture adapters)"),
    steps: int = typer.Option(200, "--steps", help="training steps"),
    lr: Optional[float] = typer.Option(None, "--lr", help="learning rate of the adapters (default: per method)"),
    batch: int = typer.Option(16, "--batch", help="examples per step"),
    seed: int = typer.Option(0, "--seed"),
    dev: Optional[Path] = typer.Option(None, "--dev", help="held-out TSV of the same layout: the quality recorded"),
    force: bool = typer.Option(False, "--force", help="replace an earlier adapter folder"),
):
    """Train a task adapter on CPU with the backbone frozen (LoRA-XS by default); `edgecomp export --adapter`
    ships it next to the base."""
    from .adapt.cli import run_adapt

    try:
        rec = run_adapt(model, data, task, output, method=method, rank=rank, roles=roles, steps=steps, lr=lr,
                        batch=batch, seed=seed, dev=dev, force=force, log=_progress(), console=console)
    except EdgecompError as e:
        _fail(e)
    q = rec.get("quality")
    out.print(f"wrote {output} ({rec['config']['method']} r={rec['config']['rank']}, {rec['train']['trainable_params']} "
              f"trainable params" + (f", {q['metric']} {q['value']:.2f} on {q['n']} dev rows" if q else "") + ")",
              markup=False, highlight=False, soft_wrap=True)


@app.command("eval")
def eval_(
    export_dir: Path = typer.Argument(..., help="a folder written by `edgecomp export`"),
    task: Optional[str] = typer.Option(None, "--task", help="sts | classification | perplexity | retrieval "
                                       "(default: the export's task's: sts, classification, perplexity)"),
    data: Optional[Path] = typer.Option(None, "--data", help="STS pairs TSV, labelled TSV (text<TAB>label), text file, "
                                        "or a retrieval folder (queries.tsv, corpus.tsv, qrels.tsv); default: a small built-in set"),
    threads: int = typer.Option(1, "--threads"),
):
    """Task quality of every artifact and of the PyTorch fp32 model side by side (with the drop); written to
    the manifest (metrics.task, task_eval) and the report."""
    from .evaluate import evaluate_export

    try:
        if threads < 1:
            raise EdgecompError(f"--threads {threads} is not a positive number of threads", "use e.g. --threads 1")
        manifest = evaluate_export(export_dir, task, data, threads=threads, log=_progress())
        from .evaluate import choose_task

        name = choose_task(manifest["model"]["task"], task).name
    except EdgecompError as e:
        _fail(e)
    _print_task_eval(manifest, [name])


def _print_task_eval(manifest: dict, names=None) -> None:
    for name, ev in manifest.get("task_eval", {}).items():
        if names is not None and name not in names:
            continue
        t = Table(title=f"{name}: {ev['metric']} on {ev['data']} ({ev['n']} items)")
        for col in ("model", "precision", ev["metric"], "drop"):
            t.add_column(col, overflow="fold")
        t.add_row(ev["reference"]["name"], "fp32", f"{ev['reference']['value']:.2f}", "—")
        for a in manifest["artifacts"]:
            m = (a.get("metrics") or {}).get("task", {}).get(name)
            if m:
                t.add_row(a["path"], a["precision"], f"{m['value']:.2f}", f"{m['drop']:+.2f}")
        out.print(t)


@app.command()
def fit(
    model: str = typer.Argument(..., help="reference model name or a local Hugging Face directory"),
    target: str = typer.Option(..., "--target", "-t", help="target profile (see `edgecomp targets`)"),
    max_size: str = typer.Option(..., "--max-size", help="largest artifact allowed, e.g. 12MB (every shipped artifact)"),
    quality: str = typer.Option(..., "--quality", help='task and the largest drop vs fp32, e.g. "sts:-1.0"'),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the chosen export (+ recipe.toml, fit.json)"),
    max_rss: Optional[str] = typer.Option(None, "--max-rss", help="native peak RSS allowed, e.g. 30MB (measured by the native probe)"),
    max_arm_instructions: Optional[str] = typer.Option(None, "--max-arm-instructions", help="aarch64 instructions per inference allowed (qemu, the target's core): 0.9x of the target's plain export, or a count like 150M"),
    data: Optional[Path] = typer.Option(None, "--data", help="evaluation data for the quality floor (see `edgecomp eval --data`)"),
    report_data: Optional[Path] = typer.Option(None, "--report-data", help="held-out data for the chosen export's final figure"),
    workers: int = typer.Option(1, "--workers", help="candidates measured at once (embedded local Ray; needs the fit extra)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="run the measurements on this Ray cluster"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default ~/.cache/edgecomp/fit)"),
    max_measure: int = typer.Option(6, "--max-measure", help="at most this many candidates are exported and measured"),
    space: Optional[Path] = typer.Option(None, "--space", help="search space .toml (default edgecomp/data/fit/space.toml)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
    no_bench: bool = typer.Option(False, "--no-bench", help="the chosen export: verify fidelity but skip latency and memory"),
):
    """Search recipes for MODEL on a target: the smallest export meeting a size (and RSS) budget and a task-quality
    floor; writes its recipe (OUT/recipe.toml, reproducible with `edgecomp export --recipe`) and exports it."""
    from .fit import Budget, FitOptions, fit as run_fit, parse_bytes, parse_instructions, parse_quality

    try:
        if workers < 1 or max_measure < 1:
            raise EdgecompError("--workers and --max-measure take a positive number", "use e.g. --workers 2 --max-measure 6")
        task, drop = parse_quality(quality)
        max_arm, arm_ratio = parse_instructions(max_arm_instructions) if max_arm_instructions else (None, False)
        budget = Budget(parse_bytes(max_size, "--max-size"),
                        parse_bytes(max_rss, "--max-rss") / 1e6 if max_rss else None, drop, task,
                        max_arm=max_arm, max_arm_is_ratio=arm_ratio)
        opts = FitOptions(max_measure=max_measure, workers=workers, ray_address=ray_address, cache_dir=cache,
                          data=str(data) if data else None, report_data=str(report_data) if report_data else None,
                          space=space, force=force, bench=not no_bench)
        manifest = run_fit(model, target, output, budget, opts, log=_progress())
    except EdgecompError as e:
        _fail(e)
    _print_fit(manifest)
    out.print(f"wrote {output}/recipe.toml, {output}/fit.json and the export")


def _print_fit(manifest: dict) -> None:
    f = manifest["fit"]
    t = Table(title=f"fit: {f['measured']} measured of {f['buildable']} buildable candidates "
                    f"({f['quality']}, max {f['budget']['max_size_bytes'] / 1e6:g} MB)")
    arm = any("arm_instructions" in c for c in f["candidates"])
    for col in ("candidate", "MB", "drop", "RSS MB", *(["ARM M instr"] if arm else []), "frontier", "chosen"):
        t.add_column(col, overflow="fold")
    for c in f["candidates"]:
        if c["measured"]:
            t.add_row(c["name"], f"{c['size_bytes'] / 1e6:.2f}", f"{c['quality_drop']:.2f}", str(c["rss_mb"] or "—"),
                      *([f"{c['arm_instructions'] / 1e6:.1f}" if c.get("arm_instructions") else "—"] if arm else []),
                      "yes" if c["on_frontier"] else "", "yes" if c["chosen"] else "")
    out.print(t)


@app.command()
def bench(
    export_dirs: list[Path] = typer.Argument(..., help="one or more folders written by `edgecomp export`; "
                                                      "the first is the baseline of the comparison"),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="arm64: also measure under qemu-aarch64"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="text file for fidelity (default: built-in sentences)"),
    summary: Optional[Path] = typer.Option(None, "--summary", help="with several exports: write comparison.json/.md here"),
):
    """Re-measure every artifact of one or more exports (fidelity, latency, RSS; ARM64 under emulation),
    update their manifests, and with several exports print them side by side."""
    from .benchmark import bench_export
    from .bench.compare import comparison_rows, table_cells, write_comparison, COLUMNS

    measured = []
    try:
        for d in export_dirs:
            measured.append((d, bench_export(d, target=target, texts_file=texts, log=_progress())))
            _print_artifacts(measured[-1][1])
    except EdgecompError as e:
        _fail(e)
    if len(measured) > 1:
        rows = comparison_rows(measured)
        # export and artifact first: the heading of each record when the table is too wide for the console
        order = [0, 2, *(i for i in range(len(COLUMNS)) if i not in (0, 2))]
        _print_table("side by side (ratios vs the first export)", tuple(COLUMNS[i] for i in order),
                     [[table_cells(r)[i] for i in order] for r in rows], keys=2)
        if summary:
            js, md = write_comparison(rows, summary)
            out.print(f"wrote {js} and {md}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def report(
    export_dirs: list[Path] = typer.Argument(..., help="one or more folders written by `edgecomp export`"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="with several exports: a new folder for "
                                          "the comparison report (default: inside the first export, listed in its manifest)"),
    force: bool = typer.Option(False, "--force", help="replace an earlier comparison folder written by `edgecomp report`"),
):
    """Rewrite OUT/report.md, OUT/report.html and OUT/charts/ from OUT/manifest.json and print report.md;
    with several exports, write one comparison report of all of them instead."""
    from .manifest import read_manifest
    from .report import write_report

    try:
        manifests = [(d, read_manifest(d)) for d in export_dirs]
        if len(manifests) > 1:
            where = _write_comparison(manifests, output, force)
        else:
            written = write_report(manifests[0][1], manifests[0][0])
    except EdgecompError as e:
        _fail(e)
    if len(manifests) == 1:
        if output is not None:
            console.print("note: --output is for a comparison of several exports; wrote the report into the export",
                          highlight=False, soft_wrap=True)
        out.print(written.read_text(), markup=False, highlight=False)
        out.print(f"wrote {written} and {written.with_suffix('.html')}", markup=False, highlight=False,
                  soft_wrap=True)
        return
    out.print(f"wrote the comparison: {where}/comparison.md and {where}/comparison.html", markup=False,
              highlight=False, soft_wrap=True)


def _write_comparison(manifests: list[tuple[Path, dict]], output: Optional[Path], force: bool) -> Path:
    """Into the first export (its manifest lists the files), or into a folder of its own that edgecomp
    builds, records (comparison.json) and may later replace with --force, like an export."""
    from . import __version__
    from .manifest import write_json_atomic
    from .outdir import COMPARISON_RECORD, staged_output_dir, written_files
    from .report import write_comparison_report

    inside = next(((d, m) for d, m in manifests if output is not None and Path(output).resolve() == d.resolve()), None)
    if output is None or inside:
        d, m = inside or manifests[0]
        write_comparison_report(manifests, d, owner=m)
        return d
    with staged_output_dir(output, force, protected=tuple(d for d, _ in manifests)) as build:
        write_comparison_report(manifests, build, owner=None)
        write_json_atomic(build / COMPARISON_RECORD, {
            "edgecomp_version": __version__, "kind": "comparison report",
            "exports": [str(d.resolve()) for d, _ in manifests],
            "files": [f for f in written_files(build) if f != COMPARISON_RECORD]})
    return output


@app.command()
def compress(
    model: str = typer.Argument(..., help="reference model name or local Hugging Face directory"),
    recipe: str = typer.Option(..., "--recipe", "-r", help="recipe name (see `edgecomp recipes`) or a recipe .toml"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the compressed PyTorch model + report"),
    texts: Optional[Path] = typer.Option(None, "--texts", help="calibration text file"),
    target: str = typer.Option("cpu-x86", "--target", "-t",
                               help="target whose quantized artifacts a quant-aware step trains for"),
    force: bool = typer.Option(False, "--force"),
):
    """Compress a model with a recipe and save the PyTorch result (no export)."""
    from . import __version__
    from .compress import Calibration, compress_model
    from .manifest import write_json_atomic
    from .models import load_model, model_dir, resolve_model, weights_bytes
    from .outdir import check_output, staged_output_dir, written_files
    from .texts import default_texts, read_texts

    log = _progress()
    try:
        spec = resolve_model(model)
        rec = spec.recipe(recipe)
        from .pipeline import target_train_view

        quant = target_train_view(target, rec)  # refused here, before any work, if no scheme fits
        check_output(output, force, spec.local_paths())
        source = model_dir(spec)
        with staged_output_dir(output, force, protected=(source, *spec.local_paths()),
                               need_bytes=2 * weights_bytes(source)) as build:
            log(f"load: {spec.name}")
            loaded = load_model(spec)
            log(f"compress: recipe {recipe!r}")
            rep = compress_model(loaded.model, rec.steps,
                                 Calibration(loaded.tokenizer, read_texts(texts) if texts else default_texts()),
                                 quant=quant, log=log)
            # pickle format: compressed modules may share tensors (query/key/value smoothing scales, a weight
            # decoder shared across layers), which safetensors refuses to store
            loaded.model.save_pretrained(build, safe_serialization=False)
            loaded.tokenizer.save_pretrained(build)
            # the folder's record: what --force may later replace
            write_json_atomic(build / "compression.json", {"edgecomp_version": __version__, **rep,
                                                            "files": written_files(build)})
    except EdgecompError as e:
        _fail(e)
    out.print(json.dumps(rep, indent=2)[:4000])


@app.command()
def targets():
    """List target profiles (edgecomp/data/targets, or $EDGECOMP_TARGETS)."""
    from .targets import list_targets

    _print_listing("targets", ("name", "artifacts", "runtimes", "description"), lambda: [
        (tg.name, ", ".join(f"{a.filename} ({a.precision})" for a in tg.artifacts), ", ".join(sorted(tg.runtimes())),
         tg.description) for tg in list_targets()])


@app.command()
def models():
    """List reference models (edgecomp/data/models, or $EDGECOMP_MODELS) and the recipes each accepts."""
    from .models import list_models

    _print_listing("reference models", ("name", "task", "recipes", "description"), lambda: [
        (m.name, m.task, ", ".join(m.recipe_names()) or "none", m.description) for m in list_models()])


@app.command()
def recipes():
    """List the generic recipes (edgecomp/data/recipes, or $EDGECOMP_RECIPES); a model file may override them."""
    from .recipes import list_recipes

    _print_listing("recipes (`--recipe NAME`, or `--recipe path/to/recipe.toml`)",
                   ("name", "tasks", "steps", "formats", "description"), lambda: [
        (r.name, ", ".join(r.tasks) or "any", " → ".join(s.get("method", "?") for s in r.steps) or "—",
         ", ".join(r.formats or ()) or "target's", r.description) for r in list_recipes()])


def _print_listing(title: str, columns: tuple[str, ...], rows) -> None:
    """A table of what the package data holds; a data file that cannot be read is one line."""
    try:
        listed = [list(row) for row in rows()]
    except EdgecompError as e:
        _fail(e)
    _print_table(title, columns, listed)


def main() -> None:
    """The console script: every error a user can cause is one line and exit 2, usage errors included."""
    import signal

    import click
    from rich.markup import escape

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    # a kill (SIGTERM) unwinds like Ctrl-C, so staging folders are removed and OUT stays as it was
    signal.signal(signal.SIGTERM, interrupted)
    try:
        rc = app(standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C / SIGTERM into exit 130 after the staging folder was removed
            console.print("[bold red]error:[/] interrupted; nothing was written", highlight=False)
    except click.UsageError as e:
        sub = f" {e.ctx.info_name}" if e.ctx is not None and e.ctx.parent is not None else ""
        problem = e.format_message().rstrip(".")
        console.print(f"[bold red]error:[/] {escape(problem)}. Fix: see `edgecomp{sub} --help`.", highlight=False,
                      soft_wrap=True)
        rc = 2
    except click.exceptions.Abort:
        console.print("[bold red]error:[/] interrupted; nothing was written", highlight=False)
        rc = 130
    except KeyboardInterrupt:
        console.print("[bold red]error:[/] interrupted; nothing was written", highlight=False)
        rc = 130
    except OSError as e:
        if e.errno == 28:
            from .outdir import no_space

            console.print(f"[bold red]error:[/] {no_space(Path(e.filename or '.').parent, None)}", highlight=False, soft_wrap=True)
            rc = 2
        else:
            raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
