"""Lowering of compress/moe.py's ``MoEFeedForward`` layers to edgecomp's own op (edgecomp/kernels).

``torch.onnx.export`` writes each MoE layer as one ``edgecomp.MoEFeedForward`` node over float expert
weights (``_MoEOp.symbolic``), its gate as standard ops producing ``scores``. Two passes finish it:

- ``finish_moe_export`` (on the raw fp32 graph, before onnxslim): imports the ``edgecomp`` opset and adds
  the op's standard-op body (``moe_function_proto``, one per activation used) as a local function, so the
  graph also runs, densely, where the library is not registered; the kernel runs it where it is (ORT
  prefers a registered kernel over the local function, see edgecomp/kernels).
- ``quantize_moe_experts`` (on a quantized artifact, after ORT's quantizer, which leaves a custom-domain
  node alone): the experts' W1/W2 become symmetric int8 per row with their scales (``quantize_experts``),
  which the kernel runs on SDOT / VNNI.

``verify_moe_graph`` checks the fp32 graph against the PyTorch MoE model (not the dense one): the lowering
must not change what the compressed model computes. LiteRT has no custom-op path here: litert-torch
lowers the eager layer (every expert computed, then masked), which saves no work, so DSTI recipes ship ONNX
Runtime formats only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from ..kernels import DOMAIN, OP_TYPE, OPSET, moe_function_proto, quantize_experts


def has_moe_layers(model) -> bool:
    from ..compress.moe import MoEFeedForward

    return any(isinstance(m, MoEFeedForward) for m in model.modules())


def moe_nodes(graph) -> list:
    return [n for n in graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]


def _activation(node) -> str:
    for a in node.attribute:
        if a.name == "activation":
            return a.s.decode()
    return "gelu"


def finish_moe_export(path: Path, torch_model=None) -> int:
    """Add the ``edgecomp`` opset and the standard-op fallback functions to the graph at ``path`` (in place);
    the number of MoE nodes. ``torch_model``: the model it was exported from; without MoE layers the graph
    is not read (every export passes here)."""
    import onnx

    if torch_model is not None and not has_moe_layers(torch_model):
        return 0
    model = onnx.load(str(path))
    nodes = moe_nodes(model.graph)
    if not nodes:
        return 0
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET))
    acts = sorted({_activation(n) for n in nodes})
    if len(acts) > 1:
        # one local function per (domain, name): a body cannot branch on the activation attribute
        raise EdgecompError(f"the MoE layers use several activations ({', '.join(acts)})",
                            "give every block the same FFN activation")
    keep = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend([*keep, moe_function_proto(acts[0], opset)])
    model.ir_version = max(model.ir_version, 9)  # FunctionProto.attribute_proto (the threshold's default)
    onnx.save(model, str(path))
    return len(nodes)


def quantize_moe_experts(path: Path) -> dict:
    """The MoE nodes' float W1/W2 at ``path`` as int8 per row + scales (in place); what was done."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = moe_nodes(model.graph)
    if not nodes:
        return {}
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    done = 0
    for n in nodes:
        for w_idx, s_idx in ((2, 3), (5, 6)):
            w_name, s_name = n.input[w_idx], n.input[s_idx]
            if w_name not in inits or s_name not in inits:
                raise EdgecompError(f"MoE node {n.name}: expert weights {w_name} are not constant", "report this to edgecomp")
            w = numpy_helper.to_array(inits[w_name])
            if w.dtype == np.int8:
                continue
            s = numpy_helper.to_array(inits[s_name]).astype(np.float32)
            q, scale = quantize_experts(w.astype(np.float32) * s[..., None])
            # fresh names: onnxslim may have merged equal scale tensors (all ones) across layers
            qn, sn = f"{w_name}_int8", f"{w_name}_scale"
            model.graph.initializer.extend([numpy_helper.from_array(q, qn), numpy_helper.from_array(scale, sn)])
            n.input[w_idx], n.input[s_idx] = qn, sn
            done += 1
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.save(model, str(path))
    return {"moe_layers": len(nodes), "expert_weights": "int8 symmetric per row (edgecomp.MoEFeedForward)",
            "quantized_tensors": done}


def moe_thresholds(path: Path) -> list[float]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [round(next((a.f for a in n.attribute if a.name == "threshold"), 0.0), 6) for n in moe_nodes(model.graph)]


# An expert runs when its gate's score passes the layer's threshold: a token whose score sits at the threshold
# may run one expert more or less in the graph than in PyTorch (float rounding order), a real but rare
# difference. The lowering is wrong when many tokens differ, or any differs a lot.
FLIPPED_TOKEN_SHARE = 0.01  # at most this share of tokens below min_cos
FLIPPED_TOKEN_COS = 0.95  # and none below this


def verify_moe_graph(path: Path, model, feeds: list[dict], output: str = "last_hidden_state",
                     min_cos: float = 0.999) -> dict:
    """The graph at ``path`` (run with edgecomp's kernel library) against the PyTorch MoE ``model`` on
    ``feeds``: cosine of ``output`` per real token (a [batch, seq, ...] output) or per row (a classifier's
    logits); more than FLIPPED_TOKEN_SHARE of them below ``min_cos``, or any below FLIPPED_TOKEN_COS, is an error."""
    import torch

    from ..runtime import open_artifact

    runner = open_artifact(path, threads=1)
    cos, per_token = [], True
    for f in feeds:
        got = runner.run(f)[output]
        with torch.no_grad():
            want = model(**{k: torch.as_tensor(v) for k, v in f.items() if k in runner.input_names})
        want = getattr(want, output, None) if hasattr(want, output) else want[0]
        want = want.numpy()
        m = f["attention_mask"].astype(bool)
        per_token = got.ndim >= 3 and got.shape[:2] == m.shape
        a = (got[m] if per_token else got.reshape(got.shape[0], -1)).astype(np.float64)
        b = (want[m] if per_token else want.reshape(want.shape[0], -1)).astype(np.float64)
        cos.append((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30))
    cos = np.concatenate(cos)
    below = float((cos < min_cos).mean())
    out = {"against": "pytorch MoE model (the compressed one)", "cos_min": round(float(cos.min()), 6),
           "cos_mean": round(float(cos.mean()), 6), "tokens" if per_token else "rows": int(cos.size),
           "share_below_min_cos": round(below, 5), "min_cos": min_cos}
    if below > FLIPPED_TOKEN_SHARE or out["cos_min"] < FLIPPED_TOKEN_COS:
        raise EdgecompError(f"the lowered MoE graph {Path(path).name} differs from the PyTorch MoE model "
                            f"(cosine min {out['cos_min']}, {100 * below:.1f}% below {min_cos})", "report this model to edgecomp")
    return out
