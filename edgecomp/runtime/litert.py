"""LiteRT (TFLite) runner for .tflite files with one fixed-shape signature per sequence bucket.

`run` takes any [B, L]: it picks the smallest `seq{N}` signature with N >= L, right-pads the inputs with 0
(pad id, masked out, token type 0) to N, runs the rows in chunks of the signature's batch size, and crops
sequence outputs back to L, so callers see the same dynamic-shape contract as the ONNX runners. An
artifact exported with adapter slots takes their tensors as signature inputs besides the tokens: the runner
feeds zeros (the base model) or, after `activate_adapter(path)`, an .onnx_adapter's tensors
(edgecomp/adapt/litert.py), and leaves them out of `input_names` (as ONNX Runtime does its overridable
initializers).

Memory: the signatures share their weight buffers in the file, but XNNPACK packs the weights of every
subgraph it delegates into its own layout. Through the `Interpreter` API that meant one packed copy per
bucket (MiniLM int8, 4 buckets: 105 MB peak RSS, against 77 MB for a one-signature file). LiteRT's
`CompiledModel` API takes an XNNPACK weight cache; the in-memory one (`":memory"`, an anonymous file built
at load) files each packed weight under the model buffer it came from, so all buckets use one packed copy
(MiniLM: 76 MB, same latency). Being rebuilt on every load, it can never be stale, half written or raced
by another process, and needs no writable folder: a cache file on disk built for other weights silently
gives wrong outputs (XNNPACK checks its header, not that it belongs to this model).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

from ..adapt.litert import LiteRtSlots, is_slot_input
from ..errors import EdgecompError
from ..quiet import native_stderr_silenced
from . import RUNNERS

_BUCKET = re.compile(r"^seq(\d+)$")
# XNNPACK's reserved weight-cache path for a memfd-backed cache (tflite/delegates/xnnpack/weight_cache.h)
_IN_MEMORY_WEIGHT_CACHE = ":memory"
# LiteRT looks for vendor NPU compiler/dispatch plugins in these folders, and when none is given it loads the
# ones bundled in the wheel (and warns when their SDK is missing). We run on XNNPACK only, so point it at a
# folder that holds no plugin library.
_NO_VENDOR_PLUGINS = str(Path(__file__).resolve().parent)


@functools.cache
def _environment():
    """One LiteRT environment per process: LiteRT never frees environments, and logs while making one."""
    from ai_edge_litert.environment import Environment

    # LiteRT logs the teardown of its environments (INFO lines) from C++ static destructors, which run after
    # Python's exit handlers: mute fd 2 at exit, once Python's own stderr is flushed.
    atexit.register(_mute_native_stderr)
    return Environment.create(compiler_plugin_path=_NO_VENDOR_PLUGINS, dispatch_library_path=_NO_VENDOR_PLUGINS)


def _mute_native_stderr() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def open_interpreter(path: Path, threads: int | None, fix: str = "re-run `edgecomp export` to rebuild it"):
    """A plain LiteRT Interpreter (default XNNPACK delegate) with one-line errors; for graphs whose
    signatures are driven step by step (early-exit stages, KV-cache decoders)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise EdgecompError("the LiteRT runtime is not installed", 'run `pip install -e ".[android]"`') from None
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or 1)
        interpreter.get_signature_list()
    except Exception as e:
        raise EdgecompError(f"LiteRT cannot load {Path(path).name} ({_first_line(e)})",
                            f"the file is corrupt or truncated: {fix}") from None
    return interpreter


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def open_compiled_model(path: Path, threads: int | None, fix: str = "re-run `edgecomp export` to rebuild it"):
    """A LiteRT CompiledModel on XNNPACK with the in-memory weight cache (one packed weight copy for all
    signatures; see the module docstring), with one-line errors."""
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        from ai_edge_litert.options import CpuOptions, Options
    except ImportError:
        raise EdgecompError("the LiteRT runtime is not installed", 'run `pip install -e ".[android]"`') from None
    cpu = CpuOptions(num_threads=int(threads or 1), xnnpack_weight_cache_path=_IN_MEMORY_WEIGHT_CACHE)
    with native_stderr_silenced():  # LiteRT logs every environment, model and delegate it creates
        environment = _environment()
        try:
            # CompiledModel.from_file does not verify the flatbuffer (a truncated file segfaults the
            # process); the Interpreter's loader does, without delegating or allocating anything.
            Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            return CompiledModel.from_file(str(path), environment=environment, options=Options(cpu_options=cpu))
        except Exception as e:
            raise EdgecompError(f"LiteRT cannot load {Path(path).name} ({_first_line(e)})",
                                f"the file is corrupt or truncated: {fix}") from None


class SignatureSession:
    """Run a CompiledModel's signatures by name on numpy arrays (like the Interpreter's signature runners,
    but over the shared weight cache): ``session.run("decode", tokens=..., ...)`` -> {output: array}.
    Each signature's tensor buffers are made on first use and reused."""

    def __init__(self, model):
        self.model = model
        self.signatures = model.get_signature_list()
        self._buffers: dict[str, tuple[dict, dict]] = {}
        self._outputs = {s: model.get_output_tensor_details(s) for s in self.signatures}

    def input_details(self, signature: str) -> dict:
        return self.model.get_input_tensor_details(signature)

    def output_details(self, signature: str) -> dict:
        return self._outputs[signature]

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if signature not in self._buffers:
            # the first buffers, write and run of a process create an environment and register LiteRT's
            # accelerators, each with INFO lines on fd 2
            with native_stderr_silenced():
                ins = {k: self.model.create_input_buffer_by_name(signature, k) for k in self.signatures[signature]["inputs"]}
                outs = {k: self.model.create_output_buffer_by_name(signature, k) for k in self.signatures[signature]["outputs"]}
                self._buffers[signature] = ins, outs
                return self._run(signature, inputs)
        return self._run(signature, inputs)

    def _run(self, signature: str, inputs: dict) -> dict[str, np.ndarray]:
        ins, outs = self._buffers[signature]
        for k, buf in ins.items():
            buf.write(np.ascontiguousarray(inputs[k]))
        self.model.run_by_name(signature, ins, outs)
        details = self._outputs[signature]
        return {k: buf.read(math.prod(details[k]["shape"]), np.dtype(details[k]["dtype"])).reshape(details[k]["shape"])
                for k, buf in outs.items()}


class LiteRTRunner:
    def __init__(self, path: Path, threads: int | None = None):
        self.path = Path(path)
        self._session = SignatureSession(open_compiled_model(self.path, threads))
        signatures = self._session.signatures
        by_len = {int(m.group(1)): name for name in signatures if (m := _BUCKET.match(name))}
        if not by_len:
            raise EdgecompError(f"{self.path.name} has no seq<N> signatures (found {sorted(signatures) or 'none'})",
                                "re-run `edgecomp export` to rebuild it with sequence buckets")
        self.buckets = sorted(by_len)
        self._signature = by_len
        first = signatures[by_len[self.buckets[0]]]
        # the adapter slot inputs (edgecomp/adapt/litert.py) are fed by the runner: zeros, or an adapter's tensors
        self.input_names = [n for n in first["inputs"] if not is_slot_input(n)]
        self.output_names = list(first["outputs"])
        shapes = {n: {o: list(d["shape"]) for o, d in self._session.output_details(by_len[n]).items()} for n in self.buckets}
        # an output has a sequence axis (axis 1) when its length follows the bucket in every signature
        self._seq_outputs = {
            o for o in self.output_names
            if all(len(s[o]) >= 2 and s[o][1] == n for n, s in shapes.items())
        }
        inputs = self._session.input_details(by_len[self.buckets[0]])
        self._dtypes = {k: np.dtype(v["dtype"]) for k, v in inputs.items()}
        self._batch = int(inputs[self.input_names[0]]["shape"][0])
        self.slots = LiteRtSlots({k: v for k, v in inputs.items() if is_slot_input(k)})

    def activate_adapter(self, adapter_path: Path) -> None:
        """Run with an .onnx_adapter's tensors fed to the slot inputs (the same file ONNX Runtime loads)."""
        self.slots.activate(self.path, adapter_path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [k for k in self.input_names if k not in feeds]
        if missing:
            raise EdgecompError(f"{self.path.name} needs inputs {missing}", "feed every input the artifact declares")
        arrays = {k: np.asarray(feeds[k]) for k in self.input_names}
        rows, length = arrays[self.input_names[0]].shape
        fits = [n for n in self.buckets if n >= length]
        if not fits:
            raise EdgecompError(
                f"{self.path.name} takes at most {self.buckets[-1]} tokens, got {length}",
                f"tokenize with truncation and max_length={self.buckets[-1]}, or re-export with a larger seq bucket",
            )
        n = fits[0]
        chunks = -(-rows // self._batch) * self._batch  # rows rounded up to whole signature batches
        padded = {k: np.zeros((chunks, n), dtype=self._dtypes[k]) for k in self.input_names}
        for k, v in arrays.items():
            padded[k][:rows, :length] = v
        parts = [self._session.run(self._signature[n], **{k: v[i:i + self._batch] for k, v in padded.items()},
                                   **self.slots.feeds)
                 for i in range(0, chunks, self._batch)]
        out = {}
        for name in self.output_names:
            stacked = np.concatenate([p[name] for p in parts])[:rows]
            out[name] = stacked[:, :length] if name in self._seq_outputs else stacked
        return self.slots.crop(out)


RUNNERS.register("tflite")(LiteRTRunner)
