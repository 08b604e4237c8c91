"""Offline compression methods, applied in place to an fp32 transformers model before export.

Each method is a module with a config dataclass and `apply(model, config, calibration) -> StepReport`,
registered in METHODS by name. A recipe (models/*.toml) is a list of steps, e.g.

    steps = [{method = "ae-embedding", latent_dim = 96},
             {method = "lowrank", modules = "encoder.layer.*.intermediate.dense", energy = 0.9,
              activation_aware = true},
             {method = "distill", minutes = 3}]

whose keys other than `method` are that method's config fields. `compress_model` runs them in order and
returns a JSON-able report. Replacement modules keep the original module path as the prefix of their
parameter names and only use ops that lower to standard ONNX (see layers.py).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable, Sequence

from torch import nn

from ..errors import EdgecompError
from ..registry import Registry
from .base import Calibration, StepReport, cosine_summary, forward_inputs, model_params, parse_config, pooled_embeddings

METHODS: Registry[tuple[type, Callable]] = Registry("compression method")

__all__ = ["METHODS", "Calibration", "compress_model", "parse_steps"]


def parse_steps(steps: Sequence[dict]) -> list[tuple[str, object]]:
    """Validate a whole recipe up front (unknown methods/keys, impossible values) before any work."""
    parsed = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or "method" not in step:
            raise EdgecompError(f"recipe step {i + 1} has no `method`", 'write each step as {method = "lowrank", ...}')
        cfg_cls, _ = METHODS.get(step["method"])
        parsed.append((step["method"], parse_config(cfg_cls, step["method"], step, i)))
    return parsed


def compress_model(model: nn.Module, steps: Sequence[dict], calibration: Calibration | None, quant=None,
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """Run the recipe's steps in place on `model`; returns {steps: [...], params_before, params_after, ...}.
    ``quant``: the edgecomp.quant.TrainView of the export's quantized artifacts, for quant-aware steps.
    ``log``: the caller's progress lines (the export's log): one per step, and distillation's per part.

    With calibration text, every step also reports the cosine of the mean-pooled output against the
    uncompressed model on that text (a quick in-PyTorch check; the pipeline verifies the artifacts).
    """
    parsed = parse_steps(steps)
    model.eval()
    if calibration is not None:
        calibration = dataclasses.replace(calibration, input_names=forward_inputs(model))
    before = model_params(model)
    if not parsed:
        return {"steps": [], "params_before": before, "params_after": before,
                "bytes_before_fp32": 4 * before, "bytes_after_fp32": 4 * before}
    reference = None
    if calibration is not None:
        # distillation needs the uncompressed model; the others only its outputs
        if any(m == "distill" for m, _ in parsed):
            reference = copy.deepcopy(model).eval()
            for p in reference.parameters():
                p.requires_grad_(False)
        ref_emb = pooled_embeddings(model, calibration)
    reports = []
    for k, (method, cfg) in enumerate(parsed, 1):
        _, apply = METHODS.get(method)
        log(f"compress: step {k}/{len(parsed)} {method}")
        t0 = time.perf_counter()
        if method == "distill":
            rep: StepReport = apply(model, cfg, calibration, reference, quant, log=log)
        else:
            rep = apply(model, cfg, calibration)
        model.eval()
        out = rep.to_json()
        out["seconds"] = round(time.perf_counter() - t0, 2)
        if calibration is not None:
            out["fidelity"]["calibration"] = cosine_summary(ref_emb, pooled_embeddings(model, calibration))
        reports.append(out)
        cos = (out["fidelity"].get("calibration") or {}).get("cos_mean")
        log(f"compress: step {k}/{len(parsed)} {method} done in {out['seconds']:.1f} s"
            + (f", mean cosine vs the uncompressed model {cos:.4f}" if isinstance(cos, (int, float)) else ""))
    after = model_params(model)
    return {"steps": reports, "params_before": before, "params_after": after,
            "bytes_before_fp32": 4 * before, "bytes_after_fp32": 4 * after}


# Method modules register themselves on import.
from . import distill, drop_layers, dsti, embed_ae, embed_kron, embed_svd, freq_table, kronecker, lowrank, prune_ffn, smooth, weight_ae  # noqa: E402,F401
