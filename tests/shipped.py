"""The shipped paths for the compression tests: `edgecomp export` on a saved folder, and for compressed
models held in memory, the passes that export runs on them.

A compressed encoder is lowered by the passes `edgecomp export` runs on it (edgecomp.lower.onnx, through
edgecomp.studies.encoder_artifacts: optimum's exporter or torch.onnx, then onnxslim), quantized by the
scheme names a target file uses, and run by the runners `edgecomp run` uses (edgecomp.runtime). A bare
module (one compressed layer, a head no task ships) goes through the pipeline's module exporter
(edgecomp.lower.onnx.export_module_onnx, which lowers early-exit stages) and onnxslim. Nothing here
exports, quantizes or runs on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from edgecomp.cli import app

from edgecomp.lower.onnx import export_module_onnx
from edgecomp.lower.wrap import PositionalModel
from edgecomp.optimize.simplify import simplify_onnx
from edgecomp.runtime import open_artifact
from edgecomp.studies.encoder_artifacts import lower_encoder, quantized

__all__ = ["lower_encoder", "quantized", "hidden_states", "lower_module", "lower_module_outputs", "run_module",
           "open_target", "export_cli"]

# A target whose tolerance every artifact holds: a random-init model compressed hard is far from the
# original, and what these tests assert is the artifact against the compressed model (or another artifact).
_OPEN_TARGET = """name = "{name}"
opset = 18
[tolerance]
cos_mean = -1.0
cos_min = -1.0
[bench]
batch = 1
seq_len = 32
threads = [1]
warmup = 1
runs = 1
"""


def open_target(path: Path, artifacts: list[dict]) -> Path:
    """A target file at ``path`` with these [[artifacts]] (dicts of TOML keys) and an open tolerance."""
    body = _OPEN_TARGET.format(name=Path(path).stem)
    for a in artifacts:
        body += "[[artifacts]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in a.items())
    Path(path).write_text(body)
    return Path(path)


def _toml(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v) if isinstance(v, (int, float)) else f'"{v}"'


def export_cli(model_dir: Path, target: Path, out: Path, recipe: Path, texts: Path, *flags: str) -> dict:
    """`edgecomp export MODEL_DIR --target T --recipe R --texts X -o OUT --no-bench FLAGS`; its manifest."""
    res = CliRunner().invoke(app, ["export", str(model_dir), "--target", str(target), "--recipe", str(recipe),
                                   "--texts", str(texts), "-o", str(out), "--no-bench", *flags])
    assert res.exit_code == 0, res.output
    return json.loads((Path(out) / "manifest.json").read_text())


def hidden_states(artifact, feeds: dict) -> np.ndarray:
    """last_hidden_state of an artifact (a path, or a runner from open_artifact) on torch/numpy token feeds."""
    runner = open_artifact(artifact, threads=1) if isinstance(artifact, (str, Path)) else artifact
    arrays = {k: np.asarray(v) for k, v in feeds.items() if k in runner.input_names}
    return runner.run(arrays)["last_hidden_state"]


def lower_module_outputs(model, inputs: dict, output_names: list[str], path: Path) -> Path:
    """``model(**inputs)[output_names]`` as ONNX: every axis of an integer input dynamic, every axis but the
    last of a float one; then onnxslim as the pipeline runs it (constant folding included)."""
    path = Path(path)
    names = list(inputs)
    axes = {n: {i: f"{n}_{i}" for i in range(t.dim() - (1 if t.is_floating_point() else 0))} for n, t in inputs.items()}
    raw = path.with_name(f"{path.stem}.raw.onnx")
    export_module_onnx(PositionalModel(model, names, output_names).eval(), tuple(inputs.values()), names,
                       output_names, axes, raw)
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
