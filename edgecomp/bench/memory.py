"""Peak RSS of a fresh process that loads one artifact and runs one inference.

The probe imports only the runtime (onnxruntime or ai_edge_litert) and numpy, never torch, so the
figure is what an app embedding that runtime pays: runtime + weights + activations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import EdgecompError


def _drop_from_page_cache(path: Path) -> None:
    """A freshly written file maps into memory in large chunks, so the same bytes measured 76, 82 or 94 MB
    depending on how the file was last written. Flushing it and dropping it from the page cache makes the
    probe see it the way a device does after install (75.8-76.0 MB over 3 runs for MiniLM int8 .tflite)."""
    from ..optimize.external_data import artifact_files

    for f in artifact_files(path):  # an external-data .onnx: its weights file too
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped before they are on disk
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def peak_rss_mb(path: Path, feeds: dict[str, np.ndarray], threads: int = 1, kind: str = "artifact") -> float:
    """Peak RSS in MB of a fresh process that loads ``path`` and runs it on ``feeds`` the way probe ``kind``
    does (edgecomp.bench.probe: an edgecomp artifact by default; causal LMs, peers' files and PyTorch too)."""
    if Path(path).is_file():
        _drop_from_page_cache(Path(path))
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **feeds)
        proc = subprocess.run(
            [sys.executable, "-m", "edgecomp.bench.probe", "--kind", kind, str(path), str(npz), str(threads)],
            capture_output=True, text=True, timeout=600,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgecompError(f"the memory probe failed on {Path(path).name}: {tail}", "check that the artifact runs with `edgecomp run`")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
