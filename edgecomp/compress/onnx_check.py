"""Export a (compressed) encoder with torch.onnx and run it with onnxruntime: used by the tests and the
compression study to check that each method's lowering computes what PyTorch computes, and to size the
int8 artifact. The production export path is edgecomp.lower; this is deliberately the plain exporter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..tasks import MODEL_INPUTS as INPUTS


class _HiddenOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def export_encoder(model: nn.Module, path: str | Path, seq_len: int = 8, opset: int = 17) -> Path:
    """torch.onnx.export (TorchScript exporter, dynamic batch/sequence) of last_hidden_state."""
    path = Path(path)
    ids = torch.ones(2, seq_len, dtype=torch.long)
    tmp = path.with_suffix(".tmp.onnx")
    axes = {k: {0: "batch", 1: "sequence"} for k in INPUTS} | {"last_hidden_state": {0: "batch", 1: "sequence"}}
    torch.onnx.export(_HiddenOnly(model).eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(tmp),
                      input_names=list(INPUTS), output_names=["last_hidden_state"], dynamic_axes=axes,
                      opset_version=opset, dynamo=False)
    os.replace(tmp, path)
    return path


def export_module(module: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """One module with a single input whose every axis but the last is dynamic."""
    path = Path(path)
    axes = {"x": {i: f"d{i}" for i in range(example.dim() - (0 if example.dtype == torch.long else 1))},
            "y": {}}
    torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def ort_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_encoder(session, batch: dict[str, torch.Tensor]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in names}
    if "token_type_ids" in names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return session.run(["last_hidden_state"], feeds)[0]


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """The pipeline's default: ORT dynamic int8, per-channel weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
    return Path(dst)


def quantize_int4(src: str | Path, dst: str | Path, block_size: int = 32,
                  op_types: tuple[str, ...] = ("MatMul", "Gather"), bits: int = 4) -> Path:
    """Weight-only blocks (MatMulNBits; GatherBlockQuantized for Gather tables, blocks along the row)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True,
                             op_types_to_quantize=op_types)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return Path(dst)


def initializer_bytes(path: str | Path) -> dict[str, int]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i).nbytes for i in m.graph.initializer}


def size_breakdown(path: str | Path) -> dict[str, int]:
    """Initializer bytes by part, classified by the initializer's name or else its consumer's node name
    (the TorchScript exporter names folded weights `onnx::MatMul_N`; the node keeps the module scope)."""
    import onnx

    from ..bench.size import initializer_nbytes

    m = onnx.load(str(path))
    consumer = {}
    for node in m.graph.node:
        for i in node.input:
            consumer.setdefault(i, node.name)
    out = {"token_embeddings": 0, "attention": 0, "feed_forward": 0, "norms_other": 0}
    for init in m.graph.initializer:
        key = init.name + " " + consumer.get(init.name, "")
        nbytes = initializer_nbytes(init)
        if "word_embeddings" in key:
            out["token_embeddings"] += nbytes
        elif "attention" in key and "LayerNorm" not in key:
            out["attention"] += nbytes
        elif ("intermediate" in key or "output" in key) and "LayerNorm" not in key:
            out["feed_forward"] += nbytes
        else:
            out["norms_other"] += nbytes
    return out


FACTOR_NAMES = ("lowrank_u", "lowrank_v", "kron_a", "kron_b", "latent", "decoder", "ae_latent_t", "ae_latent",
                "ae_decoder_t")


def missing_factors(model, compress_report: dict) -> list[str]:
    """Compressed modules of a compress_model report whose factors are no longer initializers of `model`
    (an onnx.ModelProto after simplification/quantization), i.e. that a constant folder re-densified.
    Names survive quantization as prefixes (`<module>.lowrank_u_quantized`); the exporter may prepend a
    wrapper scope, so a module counts as kept if any initializer contains `<module>.<factor>`."""
    names = [i.name for i in model.graph.initializer]
    missing = []
    for step in compress_report.get("steps", []):
        if step["method"] == "distill":
            continue
        for module in step["modules"]:
            if module == step.get("details", {}).get("tied_output_head"):
                continue  # the head reuses the table's factors
            if not any(f"{module}.{f}" in n for n in names for f in FACTOR_NAMES):
                missing.append(module)
    return missing
