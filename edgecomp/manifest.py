"""The export folder's contract: OUT/manifest.json. Other tools and the tests read it.

Layout (see README "Manifest"): edgecomp_version, created, model{name, source, task, params}, target{...},
recipe{...}, artifacts[{path, format, runtime, precision, size_bytes, sha256, inputs, outputs,
metrics{peak_rss_mb, latency_ms{...}, fidelity{...}}}], size_breakdown{...}, plus optional blocks added
by stages (compression, early_exit, arm64 per artifact).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import EdgecompError

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write next to ``path`` under a hidden temporary name, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_figure_atomic(fig, png: Path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG, written like write_text_atomic; the figure is closed."""
    import matplotlib.pyplot as plt

    png = Path(png)
    tmp = png.with_name(f".{png.name}.tmp.png")  # savefig picks the format from the suffix
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, png)


def read_manifest(out_dir: Path) -> dict:
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        raise EdgecompError(f"{out_dir} has no {MANIFEST}", "pass a folder written by `edgecomp export`")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EdgecompError(f"{p} is not valid JSON ({e})", "re-run `edgecomp export` to rebuild the folder") from None


def check_artifact_hash(out_dir: Path, record: dict) -> Path:
    """The file a manifest record names must be the file that was measured."""
    p = Path(out_dir) / record["path"]
    if not p.is_file():
        raise EdgecompError(f"{p} listed in the manifest is missing", "re-run `edgecomp export` to rebuild the folder")
    if sha256(p) != record["sha256"]:
        raise EdgecompError(f"{p} does not match the sha256 in the manifest (modified or corrupt)",
                            "re-run `edgecomp export` to rebuild the folder")
    return p


@contextlib.contextmanager
def staged_output_dir(out_dir: Path, force: bool):
    """Build in a temporary sibling folder and rename it into place only if everything succeeded.

    A failure (or Ctrl-C) leaves no half-written OUT behind.
    """
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not force:
        raise EdgecompError(f"output folder {out_dir} already exists", "pass --force to replace it, or choose another -o")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    except OSError as e:
        raise EdgecompError(f"cannot write to {parent} ({e.strerror})", "choose a writable output folder with -o") from None
    try:
        yield tmp
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == 28:  # ENOSPC
            raise EdgecompError(f"the disk under {parent} is full", "free some space or choose another -o") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
