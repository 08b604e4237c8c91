"""ONNX Runtime runner for .onnx and .ort (ORT format) files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from . import RUNNERS
from .options import apply_ort_options, session_options

_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
              "tensor(string)": object}
# onnxruntime-extensions' op domain (string-input artifacts: `export --with-tokenizer`, edgecomp/lower/tokenizer.py)
CUSTOM_OP_DOMAIN = b"ai.onnx.contrib"


def uses_extensions_ops(path: Path) -> bool:
    """Whether the graph (.onnx protobuf or .ort flatbuffer: both store the domain as a plain string) uses
    onnxruntime-extensions' ops, whose library must be registered before the session is made."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(CUSTOM_OP_DOMAIN) >= 0


def ort_session(path: Path, threads: int | None = None):
    """A CPU InferenceSession with ``threads`` intra-op threads; a file ORT rejects is a one-line error."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    apply_ort_options(so, session_options(path))  # what the artifact is meant to run with (runtime/options.py)
    if uses_extensions_ops(path):
        from ..lower.tokenizer import library_path

        so.register_custom_ops_library(library_path())
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).splitlines()[0][:200]
        raise EdgecompError(
            f"ONNX Runtime cannot load {Path(path).name} ({first})",
            "the file is corrupt or truncated: re-run `edgecomp export` to rebuild it",
        ) from None


class OrtRunner:
    def __init__(self, path: Path, threads: int | None = None):
        self.path = path
        self.session = ort_session(path, threads)
        self.inputs = self.session.get_inputs()
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._dtypes = {i.name: _ORT_TYPES.get(i.type, np.int64) for i in self.inputs}
        self.takes_text = any(i.type == "tensor(string)" for i in self.inputs)  # tokenizes inside the graph
        self.run_options = None  # RunOptions with an active LoRA adapter (activate_adapter)

    def activate_adapter(self, adapter_path: Path) -> None:
        """Run with an .onnx_adapter active (ONNX Runtime multi-LoRA: the graph's overridable initializers)."""
        from ..adapt.attach import run_options_for

        self.run_options, self._adapter = run_options_for(self.session, adapter_path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        f = {k: np.asarray(feeds[k], dtype=self._dtypes[k]) for k in self.input_names if k in feeds}
        missing = [k for k in self.input_names if k not in f]
        if missing:
            raise EdgecompError(f"{self.path.name} needs inputs {missing}", "feed every input the artifact declares")
        outs = self.session.run(None, f, self.run_options)
        return dict(zip(self.output_names, outs))


RUNNERS.register("onnx")(OrtRunner)
RUNNERS.register("ort")(OrtRunner)
