"""Runners: load an artifact on its runtime and run it on numpy feeds.

Every runner takes and returns dicts of numpy arrays keyed by the Optimum names
(``input_ids``, ``attention_mask``, ``token_type_ids`` -> ``last_hidden_state`` ...), with a dynamic
batch and sequence length; runners of fixed-shape formats (TFLite) pad and crop internally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import EdgecompError
from ..registry import Registry


class Runner(Protocol):
    path: Path
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# suffix -> factory(path, threads) -> Runner
RUNNERS: Registry = Registry("artifact format")


def open_artifact(path: str | Path, threads: int | None = None) -> Runner:
    p = Path(path)
    if not p.is_file():
        raise EdgecompError(f"artifact {p} does not exist", "pass an .onnx, .ort or .tflite file, or an export folder")
    fmt = p.suffix.lstrip(".")
    if fmt not in RUNNERS:
        raise EdgecompError(f"{p.name}: unsupported artifact type {p.suffix!r}", "pass an .onnx, .ort or .tflite file")
    return RUNNERS.get(fmt)(p, threads)


from . import ort as _ort  # noqa: E402,F401  (registers .onnx/.ort)

try:  # the LiteRT runner needs the android extra; without it .tflite gets a clear error at open time
    from . import litert as _litert  # noqa: F401
except ImportError:  # pragma: no cover
    @RUNNERS.register("tflite")
    def _no_litert(path, threads):
        raise EdgecompError("the LiteRT runtime is not installed", 'run `pip install -e ".[android]"`')
