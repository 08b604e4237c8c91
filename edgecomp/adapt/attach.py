"""Run time: which adapter `edgecomp run OUT --adapter NAME_OR_FILE` means, and activating it in an ONNX Runtime
session (LiteRT: edgecomp/adapt/litert.py LiteRtSlots, the same file fed as signature inputs).

Only onnxruntime's LoraAdapter and RunOptions, no training code (the on-device path).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgecompError
from .onnx import SUFFIX


def run_options_for(session, adapter_path: Path):
    """(RunOptions with ``adapter_path`` active, the LoraAdapter: keep it alive while the options are used); one
    line if it does not fit the session's slots."""
    import onnxruntime as ort

    adapter_path = Path(adapter_path)
    slots = {i.name: i for i in session.get_overridable_initializers()}
    if not slots:
        raise EdgecompError(f"{Path(adapter_path).name}: this artifact has no adapter slots",
                            "export the base with `edgecomp export --adapters ROLES --adapter-rank R`")
    try:
        params = ort.AdapterFormat.read_adapter(str(adapter_path)).get_parameters()
        unknown = [k for k in params if k not in slots]
        adapter = ort.LoraAdapter()
        adapter.Load(str(adapter_path))
    except Exception as e:
        raise EdgecompError(f"{adapter_path.name} is not an ONNX Runtime adapter file ({str(e).splitlines()[0][:120]})",
                            f"pass an {SUFFIX} file written by `edgecomp export --adapter`") from None
    if unknown:
        raise EdgecompError(f"{adapter_path.name} holds {unknown[0]}, which this artifact has no slot for",
                            "use an adapter exported with this base (same roles and rank)")
    for k, v in params.items():
        want = slots[k].shape
        got = v.shape()
        if len(want) != len(got) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise EdgecompError(f"{adapter_path.name}: {k} is {list(got)}, the artifact's slot {list(want)}",
                                "use an adapter exported with this base (same roles and rank)")
    ro = ort.RunOptions()
    ro.add_active_adapter(adapter)
    return ro, adapter


def resolve_adapter(export_dir: Path, manifest: dict, name_or_file: str) -> tuple[Path, dict | None]:
    """(adapter file, its manifest entry or None) for a name listed in the manifest or an .onnx_adapter path."""
    from ..manifest import sha256

    listed = (manifest.get("adapters") or {}).get("adapters") or []
    entry = next((a for a in listed if a["name"] == name_or_file or a["path"] == name_or_file), None)
    if entry is not None:
        path = export_dir / entry["path"]
        if not path.is_file() or sha256(path) != entry.get("sha256"):
            raise EdgecompError(f"{entry['path']} is missing or differs from the one the export measured",
                                "re-run `edgecomp export --adapter ...` to rebuild it")
        return path, entry
    p = Path(name_or_file)
    if p.is_file():
        entry = next((a for a in listed if (export_dir / a["path"]).resolve() == p.resolve()), None)
        return p, entry
    names = ", ".join(a["name"] for a in listed) or "none"
    raise EdgecompError(f"no adapter {name_or_file!r} in {export_dir}/manifest.json and no such file",
                        f"use one of: {names}, or a path to an {SUFFIX} file")


def adapter_record(manifest: dict, record: dict, chose_folder: bool) -> dict:
    """The artifact an adapter runs on: the one given (or, for a folder, the primary) when it carries slots,
    else the first one that does when a folder was given (an export made before LiteRT carried slots)."""
    slots = (manifest.get("adapters") or {}).get("slots") or {}
    carried = slots.get("artifacts")
    if carried is None:  # older manifests: only the ONNX Runtime artifacts carried slots
        carried = [r["path"] for r in manifest["artifacts"] if r.get("runtime") == "onnxruntime" and r.get("input") != "text"]
    if record["path"] in carried:
        return record
    if not chose_folder:
        raise EdgecompError(f"{record['path']} carries no adapter slots (in this export: {', '.join(carried) or 'none'})",
                            "pass an artifact of the export that carries them, or the export folder")
    for r in manifest["artifacts"]:
        if r["path"] in carried:
            return r
    raise EdgecompError("this export has no artifact with adapter slots",
                        "re-export with `edgecomp export --adapters ROLES --adapter-rank R`")


def adapter_records(outputs: dict, entry: dict | None) -> list[dict]:
    """Per text: the adapter's label and probabilities (a classification adapter's head)."""
    import numpy as np

    logits = outputs.get("adapter_logits")
    if logits is None or entry is None or not entry.get("labels"):
        return [{} for _ in range(len(next(iter(outputs.values()))))]
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    labels = entry["labels"]
    return [{"adapter": entry["name"], "label": labels[int(i)], "probabilities": [round(float(x), 6) for x in row]}
            for i, row in zip(p.argmax(-1), p)]


