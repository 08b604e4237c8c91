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
    from ..optimize.external_data import stored_bytes

    total = stored_bytes(path)  # an external-data .onnx: its data file too
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


def _classified(weights, layout, total: int) -> dict:
    """Bytes per component from (name + consumer names, nbytes) pairs, the rest of the file as graph."""
    out = dict.fromkeys(COMPONENTS, 0)
    for where, nbytes in weights:
        out[classify(where, layout)] += nbytes
    out["graph_and_metadata"] = max(total - sum(out[c] for c in COMPONENTS), 0)
    out["total"] = total
    return out


def ort_size_breakdown(path: Path, model=None) -> dict:
    """The breakdown of an ORT-format (.ort) file, read with onnxruntime's own flatbuffers schema: its
    initializers keep the ONNX names and its nodes the ONNX node names, so they classify as the .onnx does."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    from ..archs import layout_of

    buf = Path(path).read_bytes()
    graph = InferenceSession.GetRootAs(buf, 0).Model().Graph()
    consumers: dict[str, list[str]] = {}
    for j in range(graph.NodesLength()):
        node = graph.Nodes(j)
        for k in range(node.InputsLength()):
            consumers.setdefault(node.Inputs(k).decode(), []).append((node.Name() or b"").decode())
    weights = []
    for j in range(graph.InitializersLength()):
        t = graph.Initializers(j)
        name = t.Name().decode()
        weights.append((" ".join([name, *consumers.get(name, [])]), t.RawDataLength() + 0))
    return _classified(weights, layout_of(model) if model is not None else None, len(buf))


def tflite_size_breakdown(path: Path, model=None) -> dict:
    """The breakdown of a LiteRT (.tflite) file, read with ai-edge-litert's flatbuffers schema. Signatures
    (sequence buckets) are subgraphs sharing weight buffers: each buffer counts once. litert-torch names
    tensors ``t<N>``, so a buffer is attributed by its element count to the component whose parameters
    have that many elements (the majority, when several do: e.g. a bias and a norm of the same width);
    a count no parameter has (scales, folded constants) is "other"."""
    import math

    from ai_edge_litert.schema_py_generated import Model

    buf = Path(path).read_bytes()
    m = Model.GetRootAs(buf, 0)
    sizes = {}
    for b in range(m.BuffersLength()):
        entry = m.Buffers(b)
        # a buffer is inline data or, as litert-torch writes weights, an offset/size past the flatbuffer
        sizes[b] = entry.DataLength() or (entry.Size() if entry.Offset() > 1 else 0)
    by_numel = _components_by_numel(model)
    seen: dict[int, str] = {}
    for s in range(m.SubgraphsLength()):
        g = m.Subgraphs(s)
        for t in range(g.TensorsLength()):
            tensor = g.Tensors(t)
            if sizes.get(tensor.Buffer()) and tensor.Buffer() not in seen:
                n = math.prod(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else 1
                seen[tensor.Buffer()] = by_numel.get(n) or classify_keywords((tensor.Name() or b"").decode())
    out = dict.fromkeys(COMPONENTS, 0)
    for b, component in seen.items():
        out[component] += sizes[b]
    total = len(buf)
    out["graph_and_metadata"] = max(total - sum(out[c] for c in COMPONENTS), 0)
    out["total"] = total
    return out


def _components_by_numel(model) -> dict[int, str]:
    """Element count -> the component holding most parameters of that count (torch_size_breakdown's rule)."""
    if model is None:
        return {}
    from ..archs import layout_of

    layout = layout_of(model)
    votes: dict[int, dict[str, int]] = {}
    for name, p in model.named_parameters():
        c = classify(name, layout)
        votes.setdefault(p.numel(), {}).setdefault(c, 0)
        votes[p.numel()][c] += 1
    return {n: max(v, key=v.get) for n, v in votes.items()}


# Per artifact suffix: how its bytes split into components (the size plot covers every artifact).
SIZE_BREAKDOWNS = {".onnx": onnx_size_breakdown, ".ort": ort_size_breakdown, ".tflite": tflite_size_breakdown}


def artifact_size_breakdown(path: Path, model=None) -> dict | None:
    fn = SIZE_BREAKDOWNS.get(Path(path).suffix)
    return fn(path, model) if fn else None
