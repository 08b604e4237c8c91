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
    try:
        return CheckedRunner(RUNNERS.get(fmt)(p, threads))
    except EdgecompError:
        raise
    except Exception as e:  # a runtime rejecting a damaged file raises its own types, deep in its loader
        raise EdgecompError(f"the runtime cannot load {p.name} ({_first_line(e)})", CORRUPT_FIX) from None


CORRUPT_FIX = "the file is corrupt or truncated: re-run `edgecomp export` to rebuild it"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


class CheckedRunner:
    """A runner whose runtime failures (a damaged file found only when tensors are allocated or run) are
    one-line errors; everything else is the wrapped runner's."""

    def __init__(self, runner):
        self._runner = runner

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._runner.run(feeds)
        except EdgecompError:
            raise
        except Exception as e:
            raise EdgecompError(f"{self._runner.path.name} failed to run ({_first_line(e)})", CORRUPT_FIX) from None


from . import ort as _ort  # noqa: E402,F401  (registers .onnx/.ort)

try:  # the LiteRT runner needs the android extra; without it .tflite gets a clear error at open time
    from . import litert as _litert  # noqa: F401
except ImportError:  # pragma: no cover
    @RUNNERS.register("tflite")
    def _no_litert(path, threads):
        raise EdgecompError("the LiteRT runtime is not installed", 'run `pip install -e ".[android]"`')
