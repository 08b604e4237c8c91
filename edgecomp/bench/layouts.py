"""The two .onnx layouts of one graph side by side (edgecomp/optimize/external_data.py): self-contained, and
the weights in a memory-mapped data file. Same graph bytes, so outputs must match exactly; what differs is
where the weights live in the process: anonymous heap (one file) or file-backed pages (external data).

Measured with the native probe (no Python): on this host, ``repeats`` fresh processes per layout in
alternation (medians), and in the aarch64 guest under qemu (guest RSS and instructions per inference).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np

from ..errors import EdgecompError

FIELDS = ("peak_rss_mb", "anon_mb", "file_mb", "load_ms")


def compare_onnx_layouts(onnx_path: Path, feeds: dict[str, np.ndarray], repeats: int = 3, arm64: bool = True,
                         log=lambda s: None) -> dict:
    from ..optimize.external_data import copy_self_contained, save_with_external_data, stored_bytes
    from . import arm64 as arm
    from .native import arm64_native_block, native_block

    onnx_path = Path(onnx_path)
    if onnx_path.suffix != ".onnx" or not onnx_path.is_file():
        raise EdgecompError(f"{onnx_path} is not an .onnx file", "pass the .onnx artifact of an export")
    with tempfile.TemporaryDirectory(prefix="edgecomp-layouts-") as tmp:
        one = Path(tmp) / "one" / "model.onnx"
        ext = Path(tmp) / "external" / "model.onnx"
        for p in (one, ext):
            p.parent.mkdir()
            copy_self_contained(onnx_path, p)
        save_with_external_data(ext)
        layouts = {"one file": one, "external data": ext}
        runs: dict[str, list[dict]] = {k: [] for k in layouts}
        outputs = {}
        for i in range(repeats):  # alternating, so load on the host hits both alike
            for name, p in layouts.items():
                log(f"x86 probe: {name} ({i + 1}/{repeats})")
                block, outputs[name] = native_block(p, feeds, threads=1)
                runs[name].append(block)
        rows = []
        for name, p in layouts.items():
            row = {"layout": name, "bytes": stored_bytes(p), "graph_file_bytes": p.stat().st_size}
            row["x86"] = {k: statistics.median(b[k] for b in runs[name]) for k in FIELDS}
            row["x86"]["latency_p50_ms"] = statistics.median(b["latency_ms"]["p50"] for b in runs[name])
            row["x86"]["runs"] = repeats
            if arm64 and arm.env_present():
                log(f"arm64 guest probe: {name}")
                a, _ = arm64_native_block(p, feeds)
                row["arm64"] = {k: a.get(k) for k in ("peak_rss_mb", "anon_mb", "file_mb", "instructions_per_inference")}
            rows.append(row)
    diff = max(float(np.max(np.abs(outputs["one file"][k] - outputs["external data"][k]))) for k in outputs["one file"])
    return {"artifact": str(onnx_path), "rows": rows, "max_abs_diff_between_layouts": diff}
