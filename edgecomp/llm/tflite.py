"""A causal LM -> one .tflite with prefill_<len> signatures and a decode signature over a
fixed-size KV cache, through litert-torch's generative API (its own re-authored decoder, loaded from the
HF folder's safetensors; no TensorFlow). Quantization is litert-torch's recipes: ``dynamic_int8``,
``dynamic_int4_block32`` / ``dynamic_int4_block128`` (LiteRT's int4 blockwise), ``weight_only_int8``, ``none``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import EdgecompError
from ..lower.tflite import quiet_converter

QUANTIZATIONS = ("none", "dynamic_int8", "weight_only_int8", "dynamic_int4_block32", "dynamic_int4_block128", "fp16")


def tflite_unsupported(hf: dict, kv_cache_max_len: int) -> str | None:
    """Why litert-torch cannot re-author the decoder of this config.json (None: it can); see
    edgecomp/archs/litert_decoder.py."""
    from ..archs.litert_decoder import litert_decoder_of

    return litert_decoder_of(hf).tflite_unsupported(hf, kv_cache_max_len)


def _import_litert_converter():
    """litert-torch's generative converter imports its LoRA helper, which reads the TFLite flatbuffer schema
    from ``tensorflow`` (not installed: the android extra is TensorFlow-free). ai-edge-litert ships the same
    generated schema module; it stands in for the duration of the import only."""
    import sys
    import types

    try:
        from litert_torch.generative.utilities import converter

        return converter
    except ModuleNotFoundError as e:
        if "tensorflow" not in str(e):
            raise
    from ai_edge_litert import schema_py_generated

    names = ["tensorflow", "tensorflow.lite", "tensorflow.lite.python"]
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    sys.modules["tensorflow.lite.python"].schema_py_generated = schema_py_generated
    sys.modules["tensorflow.lite.python.schema_py_generated"] = schema_py_generated
    try:
        from litert_torch.generative.utilities import converter
    finally:  # no fake tensorflow left behind for libraries that probe for it
        for n in added + ["tensorflow.lite.python.schema_py_generated"]:
            sys.modules.pop(n, None)
    return converter


def export_causal_lm_tflite(model_dir: Path, out_path: Path, quantization: str = "dynamic_int4_block32",
                            prefill_seq_lens: tuple[int, ...] = (32, 128), kv_cache_max_len: int = 1024,
                            tied: bool | None = None) -> dict:
    """Write ``out_path`` (.tflite) from the HF folder ``model_dir`` (its safetensors are the weights).
    ``tied``: the LM head reads the token table (default: the config's ``tie_word_embeddings``)."""
    if quantization not in QUANTIZATIONS:
        raise EdgecompError(f"unknown LiteRT quantization {quantization!r}", f"use one of {QUANTIZATIONS}")
    converter = _import_litert_converter()  # first: it loads the LoRA helper that model_builder needs too
    from litert_torch.generative.utilities import model_builder
    from litert_torch.generative.utilities.export_config import ExportConfig

    model_dir, out_path = Path(model_dir), Path(out_path)
    hf = json.loads((model_dir / "config.json").read_text())
    reason = tflite_unsupported(hf, kv_cache_max_len)
    if reason:
        raise EdgecompError(f"no .tflite for this model: {reason}", "use the .onnx / .ort artifacts of this export")
    from ..archs.litert_decoder import litert_decoder_of

    family = litert_decoder_of(hf)
    tied = bool(hf.get("tie_word_embeddings", True)) if tied is None else tied  # transformers' own default
    config = family.litert_config(hf, tied)
    model = model_builder.build_decoder_only_model(checkpoint_path=str(model_dir), config=config,
                                                   tensor_names=family.tensor_names(tied),
                                                   model_class=model_builder.DecoderOnlyModel)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp, quiet_converter():
        produced = converter.convert_to_tflite(model, output_path=tmp, output_name_prefix="model",
                                               prefill_seq_len=list(prefill_seq_lens), kv_cache_max_len=kv_cache_max_len,
                                               quantize=quantization, config=config,
                                               export_config=ExportConfig(mask_as_input=True, output_logits_on_prefill=True))
        os.replace(produced, out_path)
    return {"converter": "litert-torch generative", "quantization": quantization, "mask_as_input": True,
            "causal_mask_value": float(config.causal_mask_value),
            "prefill_seq_lens": list(prefill_seq_lens), "kv_cache_max_len": kv_cache_max_len}
