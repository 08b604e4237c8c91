"""Writing a report: report.md (GitHub) + report.html (self-contained) + charts/*.png, from manifests only.

An export's report is part of the export: its files are in the manifest's ``files`` (what ``--force``
may replace). The export writes the report before it lists its files; ``edgecomp report`` / ``bench`` on
an existing export add what they newly write to that list.
"""

from __future__ import annotations

import io
from pathlib import Path

from ..manifest import MANIFEST, write_bytes_atomic, write_json_atomic, write_text_atomic
from . import charts as C
from .html import render_html
from .markdown import render

CHART_DIR = "charts"


def draw_charts(exports, prefix: str = "") -> tuple[dict[str, tuple[str, str]], dict[str, bytes]]:
    """Every chart the manifests hold data for: key -> (relative PNG path, caption), and the PNG bytes."""
    figures = []
    for s in C.quality_series(exports):
        fig, peers = C.quality_tradeoff(exports, s)
        if fig is None:
            continue
        caption = ""
        if peers:
            caption = (f"Peers (red diamonds): {', '.join(peers['rows'])}; figures {peers['source']}, at batch "
                       f"{peers['conditions'].get('batch')}, sequence {peers['conditions'].get('seq_len')}, "
                       f"{peers['conditions'].get('threads')} thread; cosine {peers['conditions'].get('cosine')}. "
                       f"They are not from this run.{peers['note']}")
        elif C.peer_figures(exports):
            caption = f"Peers are marked on the cosine chart only: this project measured no {s['label']} figures for them."
        figures.append((f"quality-{s['key']}", fig, caption))
    for key, fn, caption in (
        ("size", C.size_breakdown, "Bytes per component of every artifact, as stored in the file."),
        ("native", C.native_memory, "The runtime's C API in a C process (edgecomp/bench/native), split as "
                                    "/proc/self/smaps_rollup splits it at the peak stage."),
        ("arm64", C.arm64, "qemu-aarch64: instruction counts and guest memory carry over to a device; emulated "
                           "wall time does not and is not shown."),
        ("early-exit", C.early_exit, "Each point of the curve is one exit threshold τ on the calibration set."),
        ("fit", C.fit_frontier, ""),
    ):
        fig = fn(exports)
        if fig is not None:
            figures.append((key, fig, caption))
    import matplotlib.pyplot as plt

    index, images = {}, {}
    for key, fig, caption in figures:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        rel = f"{CHART_DIR}/{prefix}{key}.png"
        index[key] = (rel, caption)
        images[rel] = buf.getvalue()
    return index, images


def _write(out_dir: Path, name: str, markdown_text: str, images: dict[str, bytes], title: str) -> list[str]:
    for rel, data in images.items():
        write_bytes_atomic(out_dir / rel, data)
    write_text_atomic(out_dir / f"{name}.md", markdown_text)
    write_text_atomic(out_dir / f"{name}.html", render_html(markdown_text, images, title))
    return [f"{name}.md", f"{name}.html", *images]


def write_report(manifest: dict, out_dir: Path) -> Path:
    """OUT/report.md, OUT/report.html and OUT/charts/*.png of one export; returns report.md's path."""
    out_dir = Path(out_dir)
    exports = [(out_dir.name, manifest)]
    index, images = draw_charts(exports)
    text = render(manifest, index)
    written = _write(out_dir, "report", text, images, f"edgecomp: {manifest['model']['name']} for {manifest['target']['name']}")
    record_files(out_dir, manifest, written)
    return out_dir / "report.md"


def record_files(export_dir: Path, manifest: dict, written: list[str]) -> None:
    """An export that already lists its files lists the report files too (else --force would refuse the
    folder as holding files edgecomp did not write). During an export the list does not exist yet."""
    files = manifest.get("files")
    if not isinstance(files, list):
        return
    new = [f for f in written if f not in files]
    if new:
        manifest["files"] = sorted([*files, *new])
        write_json_atomic(Path(export_dir) / MANIFEST, manifest)


def write_comparison_report(exports: list[tuple[Path, dict]], out_dir: Path, owner: dict | None) -> list[str]:
    """comparison.md/.html (+ charts/comparison-*.png) of several exports in ``out_dir``. ``owner``: the
    manifest of the export ``out_dir`` is (its file list grows), or None for a folder of its own."""
    from .compare import render_comparison

    labelled = [(str(d), m) for d, m in exports]
    index, images = draw_charts(labelled, prefix="comparison-")
    text = render_comparison(exports, index)
    written = _write(Path(out_dir), "comparison", text, images, f"edgecomp: {len(exports)} exports side by side")
    if owner is not None:
        record_files(out_dir, owner, written)
    return written
