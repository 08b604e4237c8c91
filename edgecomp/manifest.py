"""The export folder's contract: OUT/manifest.json. Other tools and the tests read it.

Layout (see README "Manifest"): edgecomp_version, created, model{name, source, task, params}, target{...},
recipe{...}, artifacts[{path, format, runtime, precision, size_bytes, sha256, inputs, outputs,
metrics{peak_rss_mb, latency_ms{...}, fidelity{...}}}], size_breakdown{...}, plus optional blocks added
by stages (compression, early_exit, arm64 per artifact).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
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
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgecompError(f"{p} is not valid JSON ({e})", "re-run `edgecomp export` to rebuild the folder") from None
    missing = missing_keys(data)
    if missing:
        raise EdgecompError(f"{p} is not a complete edgecomp manifest (no {missing})",
                            "re-run `edgecomp export` to rebuild the folder")
    return data


# What `run`, `bench` and `report` read from every manifest; other blocks are optional.
REQUIRED = {"edgecomp_version": str, "model": dict, "target": dict, "artifacts": list}
REQUIRED_MODEL = {"name": str, "task": str}
REQUIRED_TARGET = {"name": str}
REQUIRED_ARTIFACT = {"path": str, "format": str, "precision": str, "sha256": str, "size_bytes": int}


def _inside(path: str) -> bool:
    """A relative path that stays in the folder: no root, drive, '..' or empty part, and written plainly."""
    p = PurePosixPath(path)
    return (bool(path) and "\\" not in path and ":" not in path and not p.is_absolute()
            and ".." not in p.parts and str(p) == path)


def missing_keys(data) -> str | None:
    """The first required key a manifest lacks (or holds with the wrong type), as a dotted path; else None."""
    def first(obj, required, prefix):
        if not isinstance(obj, dict):
            return prefix.rstrip(".") or "top-level object"
        for k, typ in required.items():
            if not isinstance(obj.get(k), typ) or isinstance(obj.get(k), bool):
                return f"{prefix}{k}"
        return None

    gap = first(data, REQUIRED, "")
    if gap:
        return gap
    gap = first(data["model"], REQUIRED_MODEL, "model.") or first(data["target"], REQUIRED_TARGET, "target.")
    if gap:
        return gap
    if not data["artifacts"]:
        return "artifacts[0]"
    for i, rec in enumerate(data["artifacts"]):
        gap = first(rec, REQUIRED_ARTIFACT, f"artifacts[{i}].")
        if gap:
            return gap
        if not _inside(rec["path"]):  # a manifest names files in its own folder (early-exit stages: stages/), nothing else
            return f"artifacts[{i}].path inside the folder"
    return None


def check_artifact_hash(out_dir: Path, record: dict) -> Path:
    """The file a manifest record names must be the file that was measured."""
    p = Path(out_dir) / record["path"]
    if not p.is_file():
        raise EdgecompError(f"{p} listed in the manifest is missing", "re-run `edgecomp export` to rebuild the folder")
    if sha256(p) != record["sha256"]:
        raise EdgecompError(f"{p} does not match the sha256 in the manifest (modified or corrupt)",
                            "re-run `edgecomp export` to rebuild the folder")
    for data in record.get("external_data") or []:  # the weights of an external-data .onnx
        d = p.parent / data["path"]
        if not d.is_file() or sha256(d) != data["sha256"]:
            raise EdgecompError(f"{d} (the weights of {p.name}) is {'missing' if not d.is_file() else 'modified or corrupt'}",
                                "re-run `edgecomp export` to rebuild the folder")
    return p
