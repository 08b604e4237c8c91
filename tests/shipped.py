"""The shipped passes, for tests of compressed models held in memory (a saved folder goes through the CLI).

A compressed encoder is lowered by the passes `edgecomp export` runs on it (edgecomp.lower.onnx, through
edgecomp.studies.encoder_artifacts: optimum's exporter or torch.onnx, then onnxslim), quantized by the
scheme names a target file uses, and run by the runners `edgecomp run` uses (edgecomp.runtime). A bare
module (one compressed layer, a head no task ships) goes through the pipeline's module exporter
(edgecomp.lower.onnx.export_module_onnx, which lowers early-exit stages) and onnxslim. Nothing here
exports, quantizes or runs on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgecomp.lower.onnx import export_module_onnx
from edgecomp.lower.wrap import PositionalModel
from edgecomp.optimize.simplify import simplify_onnx
from edgecomp.runtime import open_artifact
from edgecomp.studies.encoder_artifacts import lower_encoder, quantized

__all__ = ["lower_encoder", "quantized", "hidden_states", "lower_module", "lower_module_outputs", "run_module"]


def hidden_states(artifact, feeds: dict) -> np.ndarray:
    """last_hidden_state of an artifact (a path, or a runner from open_artifact) on torch/numpy token feeds."""
    runner = open_artifact(artifact, threads=1) if isinstance(artifact, (str, Path)) else artifact
    arrays = {k: np.asarray(v) for k, v in feeds.items() if k in runner.input_names}
    return runner.run(arrays)["last_hidden_state"]


def lower_module_outputs(model, inputs: dict, output_names: list[str], path: Path, simplify: bool = True) -> Path:
    """``model(**inputs)[output_names]`` as ONNX: every axis of an integer input dynamic, every axis but the
    last of a float one; then onnxslim as the pipeline runs it (constant folding included)."""
    path = Path(path)
    names = list(inputs)
    axes = {n: {i: f"{n}_{i}" for i in range(t.dim() - (1 if t.is_floating_point() else 0))} for n, t in inputs.items()}
    raw = path.with_name(f"{path.stem}.raw.onnx") if simplify else path
    export_module_onnx(PositionalModel(model, names, output_names).eval(), tuple(inputs.values()), names,
                       output_names, axes, raw)
    if simplify:
        simplify_onnx(raw, path)
        raw.unlink()
    return path


class _Call(torch.nn.Module):
    """A module taking one positional tensor, called by keyword (PositionalModel calls ``model(**feeds)``)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return {"y": self.module(x)}


def lower_module(module, example, path: Path) -> Path:
    """One module ``y = module(x)``, lowered and simplified as the pipeline does."""
    return lower_module_outputs(_Call(module.eval()), {"x": example}, ["y"], path)


def run_module(path: Path, x: np.ndarray) -> np.ndarray:
    return open_artifact(path, threads=1).run({"x": np.asarray(x)})["y"]
