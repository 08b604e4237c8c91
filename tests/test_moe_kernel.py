"""edgecomp.MoEFeedForward (edgecomp/kernels/moe_ffn.c) in ONNX Runtime against a numpy reference of its
contract: float and int8 weights, thresholds from dense to top-1, the three activations, [B, S, H] and
[N, H] inputs, shapes off the kernels' tile sizes; the standard-op function body (moe_function_proto) gives
the same output without the library; ORT prefers the kernel when both exist; the .ort conversion; the
runner and the native probe register the library on their own; the aarch64 build under qemu agrees.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecomp import cbuild, kernels
from edgecomp.bench.arm64 import SETUP_HINT, env_present
from edgecomp.errors import EdgecompError
from edgecomp.kernels import (build_custom_ops, kernel_variant, moe_function_proto, moe_node, moe_reference,
                              quantize_experts, strip_fallback, uses_edgecomp_ops)

OPSET = 17
WEIGHTS = ["W1", "S1", "B1", "W2", "S2", "B2"]


def make_weights(rng, E, D, H, int8: bool):
    w1 = (rng.standard_normal((E, D, H)) / np.sqrt(H)).astype(np.float32)
    w2 = (rng.standard_normal((E, H, D)) / np.sqrt(D)).astype(np.float32)
    if int8:
        (w1, s1), (w2, s2) = quantize_experts(w1), quantize_experts(w2)
    else:
        s1, s2 = np.ones((E, D), np.float32), np.ones((E, H), np.float32)
    b1 = (0.1 * rng.standard_normal((E, D))).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(H)).astype(np.float32)
    return [w1, s1, b1, w2, s2, b2]


def make_model(weights, lead, threshold, activation, with_function=False, attrs=True):
    E, _, H = weights[0].shape
    if attrs and activation in kernels.ACTIVATIONS and 0 <= threshold <= 1:
        node = moe_node(["X", "scores", *WEIGHTS], "Y", threshold, activation)  # the helper the lowering uses
    else:  # no attributes (the defaults), or values outside the contract for the kernel to refuse
        extra = {"threshold": threshold, "activation": activation} if attrs else {}
        node = helper.make_node("MoEFeedForward", ["X", "scores", *WEIGHTS], ["Y"], domain="edgecomp", **extra)
    lead = [f"d{i}" for i in range(len(lead))]
    graph = helper.make_graph(
        [node], "moe",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [*lead, H]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [*lead, E])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*lead, H])],
        [numpy_helper.from_array(a, n) for a, n in zip(weights, WEIGHTS)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("edgecomp", 1)],
                              functions=[moe_function_proto(activation, OPSET)] if with_function else [])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def session(model, library: bool, profile_prefix=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    if library:
        so.register_custom_ops_library(str(build_custom_ops()))
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def inputs(rng, lead, H, E, fraction_ties=False):
    x = rng.standard_normal((*lead, H)).astype(np.float32)
    scores = rng.random((*lead, E)).astype(np.float32)
    if fraction_ties:  # exact ties at the cut: ">=" keeps them
        scores[..., 1] = scores.max(axis=-1)
    return x, scores


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


# shapes: (lead dims, H, D, E); H=20/D=6 are off every tile size (16-wide k steps, 4 rows, 2 columns)
SHAPES = [((2, 5), 20, 6, 4), ((7,), 48, 16, 8), ((1, 33), 64, 24, 5)]
CASES = [(tau, act) for tau in (0.0, 0.4, 0.8, 1.0) for act in ("gelu", "gelu_tanh", "relu")]


@pytest.fixture(scope="module")
def library():
    return build_custom_ops()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"lead{s[0]}-H{s[1]}-D{s[2]}-E{s[3]}")
def test_float_kernel_matches_contract(library, shape):
    lead, H, D, E = shape
    rng = np.random.default_rng(H)
    w = make_weights(rng, E, D, H, int8=False)
    for tau, act in CASES:
        x, scores = inputs(rng, lead, H, E, fraction_ties=tau == 1.0)
        got = session(make_model(w, lead, tau, act), library=True).run(None, {"X": x, "scores": scores})[0]
        want = moe_reference(x, scores, *w, threshold=tau, activation=act)
        assert got.shape == want.shape == x.shape
        assert rel_err(got, want) < 1e-4, (tau, act)


def test_threshold_changes_the_output(library):
    """A test that cannot fail is a defect: the selection matters (dense != top-1), and tau=1 with a single
    maximum is exactly the top expert alone."""
    lead, H, D, E = (3, 4), 32, 8, 6
    rng = np.random.default_rng(1)
    w = make_weights(rng, E, D, H, int8=False)
    x, scores = inputs(rng, lead, H, E)
    dense = session(make_model(w, lead, 0.0, "gelu"), True).run(None, {"X": x, "scores": scores})[0]
    top1 = session(make_model(w, lead, 1.0, "gelu"), True).run(None, {"X": x, "scores": scores})[0]
    assert np.abs(dense - top1).max() > 0.1
    one_hot = (scores == scores.max(-1, keepdims=True)).astype(np.float32)
    mask_dense = session(make_model(w, lead, 0.0, "gelu"), True).run(None, {"X": x, "scores": one_hot})[0]
    # with one-hot scores tau=0 runs every expert (0 >= 0), so compare with the reference's top-1 instead
    assert rel_err(top1, moe_reference(x, one_hot, *w, threshold=1.0)) < 1e-4
    assert rel_err(mask_dense, dense) < 1e-4


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: f"lead{s[0]}-H{s[1]}-D{s[2]}-E{s[3]}")
def test_int8_kernel_matches_contract(library, shape):
    """int8 weights: the kernel also rounds X_t and each hidden vector to int8 per row. Against a reference
    that rounds the same way the remaining differences are float32-vs-float64 sums and the rare rounding
    tie that lands on the other side (one hidden unit off by one step: <= 1/127 of that row's largest
    contribution), so 1% of the output's range; against the float-activation contract the activation
    rounding itself shows (two 8-bit roundings of vectors of 16-64 values: a few % per element, measured
    <= 3%), so the cosine per token is the check there."""
    lead, H, D, E = shape
    rng = np.random.default_rng(H + 1)
    w = make_weights(rng, E, D, H, int8=True)
    assert w[0].dtype == np.int8 and w[3].dtype == np.int8
    for tau, act in CASES:
        x, scores = inputs(rng, lead, H, E)
        got = session(make_model(w, lead, tau, act), library=True).run(None, {"X": x, "scores": scores})[0]
        emulated = moe_reference(x, scores, *w, threshold=tau, activation=act, quantize_activations=True)
        contract = moe_reference(x, scores, *w, threshold=tau, activation=act)
        assert rel_err(got, emulated) < 1e-2, (tau, act)
        assert float(np.abs(got - emulated).mean() / np.abs(emulated).mean()) < 1e-3, (tau, act)
        g, c = got.reshape(-1, H).astype(np.float64), contract.reshape(-1, H).astype(np.float64)
        cos = (g * c).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(c, axis=1))
        assert cos.min() > 0.995, (tau, act)


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_function_body_matches_contract_without_library(int8):
    """moe_function_proto's standard-op body (the portable fallback) computes the contract (dequantized
    weights, float activations): without the library ORT inlines it."""
    lead, H, D, E = (2, 5), 20, 6, 4
    rng = np.random.default_rng(3)
    w = make_weights(rng, E, D, H, int8=int8)
    for tau, act in CASES:
        x, scores = inputs(rng, lead, H, E, fraction_ties=tau == 1.0)
        got = session(make_model(w, lead, tau, act, with_function=True), library=False).run(None, {"X": x, "scores": scores})[0]
        assert rel_err(got, moe_reference(x, scores, *w, threshold=tau, activation=act)) < 1e-4, (tau, act)
    # a node without attributes takes the defaults (threshold 0 = dense; the function's body is its activation)
    x, scores = inputs(rng, lead, H, E)
    got = session(make_model(w, lead, 0.0, "gelu", with_function=True, attrs=False), False).run(None, {"X": x, "scores": scores})[0]
    kern = session(make_model(w, lead, 0.0, "gelu", attrs=False), True).run(None, {"X": x, "scores": scores})[0]
    want = moe_reference(x, scores, *w)
    assert rel_err(got, want) < 1e-4 and (int8 or rel_err(kern, want) < 1e-4)


def _ops_run(sess):
    trace = json.loads(open(sess.end_profiling()).read())
    return {e["args"]["op_name"] for e in trace if e.get("cat") == "Node"}


def test_ort_prefers_the_kernel_over_the_local_function(library, tmp_path):
    """The answer kernels/__init__.py documents: with the library registered ORT runs the kernel for a node
    whose model also defines the local function; without it, the function's standard ops run."""
    lead, H, D, E = (2, 3), 16, 4, 3
    rng = np.random.default_rng(4)
    w = make_weights(rng, E, D, H, int8=False)
    model = make_model(w, lead, 0.5, "gelu", with_function=True)
    x, scores = inputs(rng, lead, H, E)
    with_lib = session(model, True, tmp_path / "lib")
    y_kernel = with_lib.run(None, {"X": x, "scores": scores})[0]
    assert _ops_run(with_lib) == {"MoEFeedForward"}
    without = session(model, False, tmp_path / "nolib")
    y_body = without.run(None, {"X": x, "scores": scores})[0]
    body_ops = _ops_run(without)
    assert "MoEFeedForward" not in body_ops and {"Erf", "TopK"} <= body_ops
    assert rel_err(y_kernel, y_body) < 1e-4
    # the forms: kernel_variant keeps the fallback, strip_fallback drops it (then it needs the library)
    assert len(kernel_variant(model).functions) == 1 and len(strip_fallback(model).functions) == 0
    with pytest.raises(Exception, match="MoEFeedForward"):
        session(strip_fallback(model), False)


def test_ort_format_with_the_custom_op(library, tmp_path):
    """The .ort conversion with the library keeps the custom node (its config lists it); the pip ORT runs
    that .ort with the library registered and refuses it without."""
    from edgecomp.optimize.ort_format import to_ort_format
    from edgecomp.runtime import open_artifact

    lead, H, D, E = (1, 8), 32, 8, 4
    rng = np.random.default_rng(5)
    w = make_weights(rng, E, D, H, int8=True)
    model = make_model(w, lead, 0.5, "gelu_tanh", with_function=True)
    onnx.save(model, tmp_path / "moe.onnx")
    ort_path, cfg = to_ort_format(tmp_path / "moe.onnx", tmp_path, custom_op_library=str(library))
    assert "edgecomp;1;MoEFeedForward" in cfg.read_text()
    x, scores = inputs(rng, lead, H, E)
    want = session(model, True).run(None, {"X": x, "scores": scores})[0]
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    got = ort.InferenceSession(str(ort_path), so, providers=["CPUExecutionProvider"]).run(None, {"X": x, "scores": scores})[0]
    assert np.array_equal(got, want)
    with pytest.raises(Exception, match="MoEFeedForward"):
        ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    # converted WITHOUT the library, the .ort holds the inlined standard-op body: portable, no kernel
    portable_dir = tmp_path / "portable"
    portable_dir.mkdir()
    portable, portable_cfg = to_ort_format(tmp_path / "moe.onnx", portable_dir)
    assert "MoEFeedForward" not in portable_cfg.read_text() and "Erf" not in portable_cfg.read_text()  # gelu_tanh body
    assert not uses_edgecomp_ops(portable)
    y_body = ort.InferenceSession(str(portable), providers=["CPUExecutionProvider"]).run(None, {"X": x, "scores": scores})[0]
    assert rel_err(y_body, moe_reference(x, scores, *w, threshold=0.5, activation="gelu_tanh")) < 1e-4
    # edgecomp's runner registers the library itself, for both files (runtime/options.py: custom_ops)
    from edgecomp.runtime.options import session_options

    for path in (tmp_path / "moe.onnx", ort_path):
        assert uses_edgecomp_ops(path) and session_options(path)["custom_ops"] == "edgecomp"
        out = open_artifact(path, threads=1).run({"X": x, "scores": scores})["Y"]
        assert np.array_equal(out, want)


def test_runner_leaves_other_graphs_alone(tmp_path):
    from edgecomp.runtime.options import session_options

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(g, producer_name="edgecomp"), tmp_path / "plain.onnx")
    assert not uses_edgecomp_ops(tmp_path / "plain.onnx") and "custom_ops" not in session_options(tmp_path / "plain.onnx")


def test_bad_attributes_and_shapes_are_ort_errors(library):
    lead, H, D, E = (2,), 16, 4, 3
    rng = np.random.default_rng(6)
    w = make_weights(rng, E, D, H, int8=False)
    with pytest.raises(Exception, match="activation \"swish\" is not one of"):
        session(make_model(w, lead, 0.0, "swish"), True)
    with pytest.raises(Exception, match="threshold 1.5 is outside"):
        session(make_model(w, lead, 1.5, "gelu"), True)
    model = make_model(w, lead, 0.0, "gelu")
    model.graph.input[1].type.tensor_type.shape.dim[-1].dim_param = "experts"  # so the kernel sees the mismatch
    sess = session(model, True)
    x, scores = inputs(rng, lead, H, E + 1)
    with pytest.raises(Exception, match=r"input scores has shape \[2,4\], expected \[2,3\]"):
        sess.run(None, {"X": x, "scores": scores})


def test_missing_compiler_names_the_package(monkeypatch):
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: None)
    with pytest.raises(EdgecompError, match="gcc-aarch64-linux-gnu"):
        build_custom_ops("aarch64", force=True)
    with pytest.raises(EdgecompError, match="no compiler known"):
        build_custom_ops("riscv64")


def test_native_probe_registers_the_library(library, tmp_path):
    """The C probe (bench/native/probe.c) registers the library via RegisterCustomOpsLibrary when the
    session options carry custom_ops, as session_options(path) does for a graph with the op."""
    from edgecomp.bench.native import native_block

    lead, H, D, E = (1, 16), 32, 8, 4
    rng = np.random.default_rng(7)
    w = make_weights(rng, E, D, H, int8=True)
    model = strip_fallback(make_model(w, lead, 0.5, "gelu", with_function=True))
    onnx.save(model, tmp_path / "moe.onnx")
    x, scores = inputs(rng, lead, H, E)
    block, outs = native_block(tmp_path / "moe.onnx", {"X": x, "scores": scores}, runs=2, warmup=1)
    assert block["session_options"] == {"custom_ops": "edgecomp"}
    assert np.array_equal(outs["Y"], session(model, True).run(None, {"X": x, "scores": scores})[0])


@pytest.mark.arm64
@pytest.mark.skipif(not env_present(), reason=f"no aarch64 environment: {SETUP_HINT}")
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_aarch64_kernel_under_qemu(library, tmp_path, int8):
    """The aarch64 build (SDOT int8 path) through the aarch64 probe on the guest's ORT, against the
    reference (the same tolerances as on x86: the int8 rounding is the same, the sums' order is not)."""
    from edgecomp.bench.native import arm64_native_block

    build_custom_ops("aarch64")
    lead, H, D, E = (2, 9), 48, 12, 5
    rng = np.random.default_rng(8)
    w = make_weights(rng, E, D, H, int8=int8)
    x, scores = inputs(rng, lead, H, E)
    for tau, act in [(0.0, "gelu"), (0.6, "gelu_tanh"), (1.0, "relu")]:
        path = tmp_path / f"moe-{tau}-{act}.onnx"
        onnx.save(strip_fallback(make_model(w, lead, tau, act)), path)
        block, outs = arm64_native_block(path, {"X": x, "scores": scores}, runs=1)
        assert block["instructions_per_inference"] > 0
        want = moe_reference(x, scores, *w, threshold=tau, activation=act, quantize_activations=int8)
        assert rel_err(outs["Y"], want) < (1e-2 if int8 else 1e-4), (tau, act)


def test_int8_portable_path_equals_the_simd_path(library, monkeypatch):
    """x86 runs int8 on AVX-512 VNNI when the CPU has it, else the portable loop (EDGECOMP_KERNEL_PORTABLE=1
    forces it): both round the same way and sum integers exactly, so they agree to float rounding."""
    lead, H, D, E = (3, 11), 40, 20, 6
    rng = np.random.default_rng(9)
    w = make_weights(rng, E, D, H, int8=True)
    x, scores = inputs(rng, lead, H, E)
    model = make_model(w, lead, 0.3, "gelu")
    simd = session(model, True).run(None, {"X": x, "scores": scores})[0]
    monkeypatch.setenv("EDGECOMP_KERNEL_PORTABLE", "1")
    portable = session(model, True).run(None, {"X": x, "scores": scores})[0]
    assert rel_err(portable, simd) < 1e-5
    assert rel_err(portable, moe_reference(x, scores, *w, threshold=0.3, quantize_activations=True)) < 1e-2


@pytest.mark.arm64
@pytest.mark.skipif(not env_present(), reason=f"no aarch64 environment: {SETUP_HINT}")
def test_arm64_python_guest_registers_the_library(library, tmp_path):
    """The Python guest runner of the `arm64` check (arm64_guest.py) registers the aarch64 library for a
    graph with the op (session_options' custom_ops), so an artifact with it is checked like any other."""
    from edgecomp.bench.arm64 import arm64_block

    lead, H, D, E = (1, 12), 32, 16, 4
    rng = np.random.default_rng(10)
    w = make_weights(rng, E, D, H, int8=True)
    path = tmp_path / "moe.onnx"
    onnx.save(strip_fallback(make_model(w, lead, 0.5, "gelu")), path)
    x, scores = inputs(rng, lead, H, E)
    x86 = {"Y": session(onnx.load(path), True).run(None, {"X": x, "scores": scores})[0]}
    block = arm64_block(path, {"X": x, "scores": scores}, x86, runs=1)
    # same rounding, exact integer sums: the two builds differ by float rounding only
    assert block["cos_min_vs_x86"] > 0.99999 and block["max_abs_diff"] < 1e-4 and block["instructions_per_inference"] > 0, block
