"""Where the bytes of an ONNX graph go: token embeddings, attention, feed-forward, norms/other.

Initializers are classified by the names of the nodes that consume them (exporters rename weights,
e.g. ``onnx::MatMul_123``, but keep module paths in node names such as
``/encoder/layer.0/attention/self/query/MatMul``), so the breakdown survives quantization.
"""

from __future__ import annotations

from pathlib import Path

COMPONENTS = ("token_embeddings", "attention", "feed_forward", "norms_other")


def classify(path: str) -> str:
    p = path.lower()
    if any(k in p for k in ("word_embeddings", "embed_tokens", "wte", "lm_head", "shared")):
        return "token_embeddings"
    if any(k in p for k in ("layernorm", "layer_norm", "norm")):
        return "norms_other"
    if any(k in p for k in ("attention", "attn")):
        return "attention"
    if any(k in p for k in ("intermediate", "mlp", "ffn", "feed_forward", "output/dense", "output.dense")):
        return "feed_forward"
    return "norms_other"


def initializer_nbytes(init) -> int:
    """Bytes an initializer takes as stored. 4-bit tensors written without raw_data would unpack to one
    byte per value through to_array(); they are stored two per byte."""
    import math

    import onnx

    if init.raw_data:
        return len(init.raw_data)
    if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (math.prod(init.dims) + 1) // 2
    return onnx.numpy_helper.to_array(init).nbytes


def onnx_size_breakdown(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    consumers: dict[str, list[str]] = {}
    for node in m.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
    out = dict.fromkeys(COMPONENTS, 0)
    for init in m.graph.initializer:
        nbytes = initializer_nbytes(init)
        where = " ".join([init.name, *consumers.get(init.name, [])])
        out[classify(where)] += nbytes
    total = Path(path).stat().st_size
    out["graph_and_metadata"] = max(total - sum(out[c] for c in COMPONENTS), 0)
    out["total"] = total
    return out


def torch_size_breakdown(model) -> dict:
    """The same breakdown for the fp32 PyTorch model (parameters counted once when tied)."""
    out = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        out[classify(name)] += p.numel() * p.element_size()
    out["total"] = sum(out.values())
    return out
