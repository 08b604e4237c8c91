"""Peak RSS of a fresh process that loads one artifact and runs one inference.

The probe imports only the runtime (onnxruntime or ai_edge_litert) and numpy, never torch, so the
figure is what an app embedding that runtime pays: runtime + weights + activations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import EdgecompError


def peak_rss_mb(path: Path, feeds: dict[str, np.ndarray], threads: int = 1) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **feeds)
        proc = subprocess.run(
            [sys.executable, "-m", "edgecomp.bench.probe", str(path), str(npz), str(threads)],
            capture_output=True, text=True, timeout=600,
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgecompError(f"the memory probe failed on {Path(path).name}: {tail}", "check that the artifact runs with `edgecomp run`")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
