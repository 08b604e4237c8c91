"""LiteRT (TFLite) runner for .tflite files with one fixed-shape signature per sequence bucket.

`run` takes any [B, L]: it picks the smallest `seq{N}` signature with N >= L, right-pads the inputs with 0
(pad id, masked out, token type 0) to N, runs the rows in chunks of the signature's batch size, and crops
sequence outputs back to L, so callers see the same dynamic-shape contract as the ONNX runners.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from . import RUNNERS

_BUCKET = re.compile(r"^seq(\d+)$")


class LiteRTRunner:
    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        try:
            # XNNPACK is the interpreter's default CPU delegate
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            signatures = self.interpreter.get_signature_list()
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise EdgecompError(f"LiteRT cannot load {self.path.name} ({first})",
                                "the file is corrupt or truncated: re-run `edgecomp export` to rebuild it") from None
        by_len = {int(m.group(1)): name for name in signatures if (m := _BUCKET.match(name))}
        if not by_len:
            raise EdgecompError(f"{self.path.name} has no seq<N> signatures (found {sorted(signatures) or 'none'})",
                                "re-run `edgecomp export` to rebuild it with sequence buckets")
        self.buckets = sorted(by_len)
        self._signature = by_len
        first = signatures[by_len[self.buckets[0]]]
        self.input_names = list(first["inputs"])
        self.output_names = list(first["outputs"])
        self._runners: dict[int, object] = {}
        # an output has a sequence axis (axis 1) when its length follows the bucket in every signature
        details = {n: self._runner(n).get_output_details() for n in self.buckets}
        self._seq_outputs = {
            o for o in self.output_names
            if all(len(details[n][o]["shape"]) >= 2 and details[n][o]["shape"][1] == n for n in self.buckets)
        }
        inputs = self._runner(self.buckets[0]).get_input_details()
        self._dtypes = {k: v["dtype"] for k, v in inputs.items()}
        self._batch = int(inputs[self.input_names[0]]["shape"][0])

    def _runner(self, n: int):
        if n not in self._runners:
            self._runners[n] = self.interpreter.get_signature_runner(self._signature[n])
        return self._runners[n]

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
        runner = self._runner(n)
        parts = [runner(**{k: v[i:i + self._batch] for k, v in padded.items()}) for i in range(0, chunks, self._batch)]
        out = {}
        for name in self.output_names:
            stacked = np.concatenate([p[name] for p in parts])[:rows]
            out[name] = stacked[:, :length] if name in self._seq_outputs else stacked
        return out


RUNNERS.register("tflite")(LiteRTRunner)
