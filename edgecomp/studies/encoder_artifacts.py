"""A (compressed) encoder's ONNX artifacts for the studies, built by the passes `edgecomp export` runs.

lower (edgecomp.lower.onnx: optimum's exporter, or torch.onnx for what optimum does not know) ->
simplify (onnxslim) -> quantize (edgecomp.optimize.quantize, by the typed scheme), so a study measures the
graphs a feature-extraction export ships, not a parallel exporter's.
"""

from __future__ import annotations

from pathlib import Path

from ..lower.moe import finish_moe_export, has_moe_layers, quantize_moe_experts
from ..lower.onnx import export_model_onnx
from ..optimize.quantize import quantize_onnx
from ..optimize.simplify import simplify_onnx
from ..tasks import TASKS
from ..targets import load_target


def lower_encoder(model, dst: Path, keep_factorized: bool = False, target: str = "cpu-x86") -> Path:
    """The simplified fp32 ONNX of ``model``'s last_hidden_state at ``target``'s opset.

    ``keep_factorized``: as the recipe option of that name (no constant folding, so factors stay factors).
    """
    dst = Path(dst)
    raw = dst.with_name(f"{dst.stem}.raw.onnx")
    export_model_onnx(model, TASKS.get("feature-extraction"), raw, load_target(target).opset)
    finish_moe_export(raw, model)  # MoE layers (compress/moe.py): the custom op's fallback function, as export does
    simplify_onnx(raw, dst, keep_factorized=keep_factorized)
    raw.unlink()
    return dst


def onnx_scheme(quantization):
    """A target artifact's ``quantization`` (a table, e.g. ``{"weights": {"bits": 4, "block": 32}}``, or a short
    name such as ``dynamic-per-channel``; edgecomp.quant.parse_scheme) as the ONNX adapter stores it."""
    from ..quant import FORMAT_QUANT, parse_scheme

    return FORMAT_QUANT["onnx"].check(parse_scheme(quantization, "study quantization"))


def train_view(quantization):
    """What a quant-aware distill step trains against for the ONNX artifact of ``quantization``."""
    from ..quant import FORMAT_QUANT

    return FORMAT_QUANT["onnx"].train_view(onnx_scheme(quantization))


def quantized(src: Path, dst: Path, quantization, calibration=None, model=None) -> Path:
    """``src`` quantized into ``dst`` as ``quantization`` says (see onnx_scheme); ``calibration``: a callable
    returning the graph's calibration feeds (GPTQ), ``model``: the PyTorch model (its adapter names the ffn)."""
    quantize_onnx(Path(src), Path(dst), onnx_scheme(quantization), calibration=calibration, model=model)
    if model is None or has_moe_layers(model):
        quantize_moe_experts(Path(dst))  # int8 experts of the custom op, as export's finish_onnx does
    return Path(dst)
