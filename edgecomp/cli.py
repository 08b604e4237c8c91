"""The `edgecomp` command: export, run, bench, report, compress, targets, models, recipes."""

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

        console.print(f"[dim]{time.time() - t0:6.1f}s[/] {escape(msg)}", highlight=False)

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
):
    """Export MODEL for a target: every artifact the device needs, verified, measured, with manifest and report."""
    from .pipeline import ExportOptions, export as run_export
    from .texts import read_texts

    try:
        opts = ExportOptions(recipe=recipe, texts=read_texts(texts) if texts else None, bench=not no_bench,
                             custom_ops=custom_ops, early_exit=early_exit, max_accuracy_drop=max_accuracy_drop,
                             exit_data=str(exit_data) if exit_data else None, exit_heads=heads,
                             max_length=max_length, with_tokenizer=with_tokenizer)
        dest = output or Path("out") / f"{Path(model).name}-{target}"
        manifest = run_export(model, target, dest, opts, force=force, log=_progress())
    except EdgecompError as e:
        _fail(e)
    _print_artifacts(manifest)
    out.print(f"wrote {dest}/manifest.json and {dest}/report.md")


def _print_artifacts(manifest: dict) -> None:
    t = Table(title=f"{manifest['model']['name']} -> {manifest['target']['name']} (recipe {manifest['recipe']['name']})")
    for col in ("artifact", "precision", "MB", "cos mean", "cos worst", "p50 ms 1thr", "peak RSS MB"):
        t.add_column(col)
    for a in manifest["artifacts"]:
        m = a.get("metrics", {})
        f = m.get("fidelity", {})
        lat = m.get("latency_ms") or {}
        cos = [f"{f[k]:.4f}" if isinstance(f.get(k), (int, float)) else "—" for k in ("cos_mean", "cos_min")]
        t.add_row(a["path"], a["precision"], f"{a['size_bytes'] / 1e6:.1f}", *cos,
                  str(lat.get("p50", "—")), str(m.get("peak_rss_mb") or "—"))
    out.print(t)


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
):
    """Run an exported artifact on its runtime over a text file; one JSON object per input line, with its index."""
    from .infer import run_file

    try:
        s = run_file(artifact, input, output, threads=threads, batch_size=batch_size, generate=generate,
                     perplexity=perplexity, max_length=max_length)
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
        t = Table(title="side by side (ratios vs the first export)")
        for col in COLUMNS:
            t.add_column(col)
        for r in rows:
            t.add_row(*table_cells(r))
        out.print(t)
        if summary:
            js, md = write_comparison(rows, summary)
            out.print(f"wrote {js} and {md}")


@app.command()
def report(export_dir: Path = typer.Argument(..., help="a folder written by `edgecomp export`")):
    """Rewrite OUT/report.md (and the size plot) from OUT/manifest.json and print it."""
    from .manifest import read_manifest
    from .report import write_report

    try:
        p = write_report(read_manifest(export_dir), export_dir)
    except EdgecompError as e:
        _fail(e)
    out.print(p.read_text(), markup=False, highlight=False)


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
                                 quant=quant)
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
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    try:
        for row in rows():
            t.add_row(*row)
    except EdgecompError as e:
        _fail(e)
    out.print(t)


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
