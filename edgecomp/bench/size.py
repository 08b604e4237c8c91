"""Where the bytes of an ONNX graph go: token embeddings, attention, feed-forward, norms/other.

Initializers are classified by the names of the nodes that consume them (exporters rename weights,
e.g. ``onnx::MatMul_123``, but keep module paths in node names such as
``/encoder/layer.0/attention/self/query/MatMul``), so the breakdown survives quantization. With the
model at hand, its family's adapter (archs/) says which module paths are the token table/head, norms,
attention and feed-forward; names it does not own (and families without one) fall back to keywords.
"""

from __future__ import annotations

from pathlib import Path

COMPONENTS = ("token_embeddings", "attention", "feed_forward", "norms_other")


def classify(path: str, layout=None) -> str:
    """The component of a parameter / initializer (+ consumer node) name: the adapter's, else by keyword."""
    if layout is not None:
        for part in path.split(" "):
            found = layout.component(part)
            if found is not None:
                return found
    return classify_keywords(path)


def classify_keywords(path: str) -> str:
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


def onnx_size_breakdown(path: Path, model=None) -> dict:
    """Bytes per component of the ONNX file; `model` (the PyTorch model it came from) lets the family's
    adapter classify."""
    import onnx

    from ..archs import layout_of

    layout = layout_of(model) if model is not None else None
    m = onnx.load(str(path))
    consumers: dict[str, list[str]] = {}
    for node in m.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
    out = dict.fromkeys(COMPONENTS, 0)
    for init in m.graph.initializer:
        nbytes = initializer_nbytes(init)
        where = " ".join([init.name, *consumers.get(init.name, [])])
        out[classify(where, layout)] += nbytes
    total = Path(path).stat().st_size
    out["graph_and_metadata"] = max(total - sum(out[c] for c in COMPONENTS), 0)
    out["total"] = total
    return out


def torch_size_breakdown(model) -> dict:
    """The same breakdown for the fp32 PyTorch model (parameters counted once when tied)."""
    from ..archs import layout_of

    layout = layout_of(model)
    out = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        out[classify(name, layout)] += p.numel() * p.element_size()
    out["total"] = sum(out.values())
    return out
