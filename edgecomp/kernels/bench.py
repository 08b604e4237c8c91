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

from . import DOMAIN, OPSET, moe_function_proto, moe_node, quantize_experts, strip_fallback

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
    node = moe_node(["X", "scores", *names], "Y", threshold, activation)
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


def run_benchmark(work: Path, hidden: int = 384, ffn: int = 1536, experts: tuple[int, ...] = (16, 32),
                  fractions: tuple[float, ...] = (1.0, 0.5, 0.3, 0.2), seq: int = 128, x86_runs: int = 30,
                  arm_runs: int = 2, arm: bool = True, seed: int = 0) -> dict:
    """Every configuration through the native probe (bench/native.py): x86 latency (median of ``x86_runs``,
    1 thread) and, under qemu Cortex-A76, guest instructions per inference (median of ``arm_runs``).
    The probe registers the library from the graph's session options (custom_ops), as an app would."""
    import onnx

    from ..bench.native import arm64_native_block, native_block
    from ..runtime.options import session_options
    from . import build_custom_ops, kernel_info, moe_reference

    work.mkdir(parents=True, exist_ok=True)
    w = ffn_weights(hidden, ffn, seed)
    x = np.random.default_rng(seed + 1).standard_normal((1, seq, hidden)).astype(np.float32)
    build_custom_ops()
    if arm:
        build_custom_ops("aarch64")
    rows = []

    def measure(name: str, path: Path, feeds: dict, options: dict | None = None, **info) -> np.ndarray:
        opts = session_options(path) if options is None else options
        block, outs = native_block(path, feeds, threads=1, runs=x86_runs, warmup=2, options=opts)
        row = {"config": name, **info, "session_options": opts, "x86_latency_ms_p50": block["latency_ms"]["p50"],
               "x86_latency_ms_p90": block["latency_ms"]["p90"], "file_mb": round(path.stat().st_size / 2**20, 2)}
        if arm:
            ablock, aouts = arm64_native_block(path, feeds, runs=arm_runs, options=opts)
            row["arm_instructions"] = ablock["instructions_per_inference"]
            g, c = aouts["Y"].reshape(-1, hidden).astype(np.float64), outs["Y"].reshape(-1, hidden).astype(np.float64)
            row["arm_cos_min_vs_x86"] = round(float(((g * c).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(c, axis=1))).min()), 6)
        rows.append(row)
        return outs["Y"]

    fp32 = work / "dense_fp32.onnx"
    dense = dense_int8_model(w, work)  # writes dense_fp32.onnx too
    y_fp32 = measure("dense fp32 (MatMul)", fp32, {"X": x}, experts=None, active=None)
    y_int8 = measure("dense int8 (DynamicQuantizeLinear + MatMulInteger)", dense, {"X": x}, experts=None, active=None)
    fidelity = {"dense_int8_vs_fp32_cos_min": _cos_min(y_int8, y_fp32)}
    for e in experts:
        ew = expert_weights(w, e, int8=True)
        kernel_path, body_path = work / f"moe_e{e}_kernel.onnx", work / f"moe_e{e}_function.onnx"
        onnx.save(moe_model(ew), kernel_path)
        onnx.save(moe_model(ew, fallback=True), body_path)
        for f in fractions:
            k = max(1, round(f * e))
            feeds = {"X": x, "scores": fraction_scores(seq, e, k, seed)}
            y = measure(f"kernel E={e} {k}/{e} experts", kernel_path, feeds, experts=e, active=k)
            ref = moe_reference(x, feeds["scores"], *ew, threshold=0.5, quantize_activations=True)
            rows[-1]["rel_err_vs_reference"] = float(f"{np.abs(y - ref).max() / np.abs(ref).max():.3g}")
            if k == e:
                fidelity[f"kernel_e{e}_all_experts_vs_dense_int8_cos_min"] = _cos_min(y, y_int8)
                fidelity[f"kernel_e{e}_all_experts_vs_fp32_cos_min"] = _cos_min(y, y_fp32)
        # the standard-op body, without the library (options={}: nothing registers it, ORT inlines the function)
        k = max(1, round(fractions[-1] * e))
        feeds = {"X": x, "scores": fraction_scores(seq, e, k, seed)}
        measure(f"function body E={e} (standard ops, {k}/{e} selected)", body_path, feeds, options={}, experts=e, active=k)
    base = next(r for r in rows if r["config"].startswith("dense int8"))
    for r in rows:
        r["x86_latency_vs_dense_int8"] = round(r["x86_latency_ms_p50"] / base["x86_latency_ms_p50"], 3)
        if arm:
            r["arm_instructions_vs_dense_int8"] = round(r["arm_instructions"] / base["arm_instructions"], 3)
    import onnxruntime

    return {"shape": {"hidden": hidden, "ffn": ffn, "seq": seq, "batch": 1}, "threads": 1,
            "onnxruntime": onnxruntime.__version__, "emulated_cpu": "cortex-a76" if arm else None,
            "kernel_paths": {"x86_64": kernel_info(build_custom_ops()),
                             **({"aarch64": "int8: aarch64 sdot by lane (vdotq_laneq_s32, packed weights); float: portable"} if arm else {})},
            "fidelity": fidelity, "rows": rows}


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return round(float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min()), 6)
