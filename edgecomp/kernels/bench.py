"""The graphs scripts/bench_moe_kernel.py measures: one transformer feed-forward layer (MiniLM-sized by
default) as the plain int8 export makes it (dynamic-quantized MatMulInteger, through edgecomp's own
quantize_onnx), as one ``edgecomp.MoEFeedForward`` node over the same weights split into experts (int8,
run by the kernel), and as the node's standard-op function body (no library: ORT inlines it).

Expert fractions are exact: every token's scores are 1 for ``k`` experts (a different random subset per
token) and 0 for the rest, with threshold 0.5, so exactly ``k`` of ``E`` experts run for every token and
each expert sees about ``k/E`` of the tokens (the grouping the kernel does is exercised as in a real model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import DOMAIN, OPSET, moe_function_proto, quantize_experts, strip_fallback

ONNX_OPSET = 17


def ffn_weights(hidden: int, ffn: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random FFN weights of BERT's scale (std 0.02 as in its init, plus small biases)."""
    rng = np.random.default_rng(seed)
    return {"w1": (0.02 * rng.standard_normal((ffn, hidden))).astype(np.float32),
            "b1": (0.02 * rng.standard_normal(ffn)).astype(np.float32),
            "w2": (0.02 * rng.standard_normal((hidden, ffn))).astype(np.float32),
            "b2": (0.02 * rng.standard_normal(hidden)).astype(np.float32)}


def dense_ffn_model(w: dict[str, np.ndarray]):
    """X [1, S, H] -> MatMul + bias -> GELU (erf, as the exporters write it) -> MatMul + bias, float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ffn, hidden = w["w1"].shape
    inits = [numpy_helper.from_array(w["w1"].T.copy(), "W1t"), numpy_helper.from_array(w["b1"], "B1"),
             numpy_helper.from_array(w["w2"].T.copy(), "W2t"), numpy_helper.from_array(w["b2"], "B2"),
             numpy_helper.from_array(np.float32(0.70710678), "rsqrt2"), numpy_helper.from_array(np.float32(1.0), "one"),
             numpy_helper.from_array(np.float32(0.5), "half")]
    n = helper.make_node
    nodes = [n("MatMul", ["X", "W1t"], ["h0"]), n("Add", ["h0", "B1"], ["h1"]), n("Mul", ["h1", "rsqrt2"], ["h2"]),
             n("Erf", ["h2"], ["h3"]), n("Add", ["h3", "one"], ["h4"]), n("Mul", ["h1", "h4"], ["h5"]),
             n("Mul", ["h5", "half"], ["h6"]), n("MatMul", ["h6", "W2t"], ["y0"]), n("Add", ["y0", "B2"], ["Y"])]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "seq", hidden])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "seq", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def dense_int8_model(w: dict[str, np.ndarray], work: Path) -> Path:
    """The dense FFN quantized as the default int8 export does (edgecomp.optimize.quantize: per-channel int8
    weights, dynamic per-tensor uint8 activations -> DynamicQuantizeLinear + MatMulInteger)."""
    import onnx

    from ..optimize.quantize import quantize_onnx
    from ..quant import parse_scheme

    src, dst = work / "dense_fp32.onnx", work / "dense_int8.onnx"
    onnx.save(dense_ffn_model(w), src)
    quantize_onnx(src, dst, parse_scheme({"weights": {"bits": 8}, "activations": "dynamic-per-tensor"}, "bench_moe_kernel"))
    return dst


def expert_weights(w: dict[str, np.ndarray], experts: int, int8: bool = True) -> list[np.ndarray]:
    """[W1, S1, B1, W2, S2, B2] of the contract: neuron block e of the dense FFN is expert e."""
    ffn, hidden = w["w1"].shape
    if ffn % experts:
        raise ValueError(f"{ffn} neurons do not split into {experts} equal experts")
    d = ffn // experts
    w1 = w["w1"].reshape(experts, d, hidden)
    w2 = w["w2"].reshape(hidden, experts, d).transpose(1, 0, 2).copy()
    b1 = w["b1"].reshape(experts, d)
    if int8:
        (w1, s1), (w2, s2) = quantize_experts(w1), quantize_experts(w2)
    else:
        s1, s2 = np.ones((experts, d), np.float32), np.ones((experts, hidden), np.float32)
    return [w1, s1, b1, w2, s2, w["b2"]]


def moe_model(weights: list[np.ndarray], threshold: float = 0.5, activation: str = "gelu", fallback: bool = False):
    """One MoEFeedForward node over [1, S, H] / [1, S, E]; ``fallback``: with its function (and without the
    library ORT inlines it), else stripped so only the kernel can run it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = ["W1", "S1", "B1", "W2", "S2", "B2"]
    e, _, hidden = weights[0].shape
    node = helper.make_node("MoEFeedForward", ["X", "scores", *names], ["Y"], domain=DOMAIN, threshold=threshold,
                            activation=activation)
    graph = helper.make_graph(
        [node], "moe",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "seq", hidden]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "seq", e])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "seq", hidden])],
        [numpy_helper.from_array(a, n) for a, n in zip(weights, names)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(DOMAIN, OPSET)],
                              functions=[moe_function_proto(activation, ONNX_OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model if fallback else strip_fallback(model)


def fraction_scores(tokens: int, experts: int, active: int, seed: int = 0) -> np.ndarray:
    """[1, tokens, experts] scores selecting exactly ``active`` experts per token at threshold 0.5."""
    rng = np.random.default_rng(seed)
    s = np.zeros((tokens, experts), np.float32)
    for t in range(tokens):
        s[t, rng.choice(experts, size=active, replace=False)] = 1.0
    return s[None]
