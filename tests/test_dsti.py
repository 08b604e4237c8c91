"""DSTI (compress/dsti.py, compress/moe.py, lower/moe.py) on tiny random-init BERTs.

- moefy only regroups neurons: with every expert running (tau 0) the model computes what it did;
- the lowered graph (one edgecomp.MoEFeedForward node per layer, int8 experts) matches the PyTorch MoE
  model (not the dense one) with the kernel library registered and, without it, through the op's
  standard-op fallback function;
- a higher tau runs fewer experts (FFN multiply-adds counted);
- `edgecomp export` with a DSTI recipe verifies the artifacts against the MoE model (manifest), ships int8
  experts, and refuses a bad config in one line (exit 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgecomp.compress import compress_model
from edgecomp.compress.dsti import ffn_macs_per_token
from edgecomp.compress.moe import MoEFeedForward, set_threshold
from edgecomp.kernels import DOMAIN, OP_TYPE

from shipped import export_cli, hidden_states, lower_encoder, open_target, quantized
from test_compress_methods import I, V, calibration, tiny_bert
from tiny import recipe_file, save_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GATED = [{"method": "moefy", "experts": 8, "iterations": 5}, {"method": "expert-gates"}]


def _feeds(batch=2, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def _torch_out(model, feeds):
    with torch.no_grad():
        return model(**feeds).last_hidden_state.numpy()


def _cos_min(a, b):
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def test_moefy_keeps_the_function_with_every_expert():
    dense, model = tiny_bert(), tiny_bert()
    report = compress_model(model, [{"method": "moefy", "experts": 8, "iterations": 5}], calibration())
    layers = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
    assert len(layers) == 2 and all(m.experts == 8 and m.expert_size == I // 8 for m in layers)
    feeds = _feeds()
    assert np.abs(_torch_out(model, feeds) - _torch_out(dense, feeds)).max() < 1e-5
    # the neurons were regrouped, not kept in place (the clustering did something)
    up = dense.encoder.layer[0].intermediate.dense.weight
    assert not torch.equal(layers[0].w1.reshape(I, -1), up)
    assert report["steps"][0]["params_after"] > 0


@pytest.fixture(scope="module")
def gated():
    model = tiny_bert()
    compress_model(model, GATED + [{"method": "dynamic-k", "threshold": 0.5}], calibration())
    return model


def test_higher_threshold_runs_fewer_experts(gated):
    cal = calibration()
    macs = {}
    for tau in (0.0, 0.3, 0.6, 0.9):
        set_threshold(gated, tau)
        macs[tau] = ffn_macs_per_token(gated, cal)
    set_threshold(gated, 0.5)
    assert macs[0.0]["expert_share"] == [1.0, 1.0]
    ratios = [macs[t]["ratio"] for t in (0.0, 0.3, 0.6, 0.9)]
    assert all(a > b for a, b in zip(ratios, ratios[1:])), ratios
    assert macs[0.9]["ratio"] < 0.6


@pytest.mark.parametrize("max_share", [0.6, 0.35])
def test_compute_budget_search_meets_the_expert_share(max_share):
    """dynamic-k with max_share: per-layer taus whose mean expert share on the held-aside text is at most the
    budget, and a tighter budget runs fewer experts."""
    model = tiny_bert()
    report = compress_model(model, GATED + [{"method": "dynamic-k", "max_share": max_share}], calibration())
    d = report["steps"][-1]["details"]
    assert d["chosen_by"] == "search (max_share)"
    assert sum(d["expert_share"]) / len(d["expert_share"]) <= max_share
    assert [m.threshold for m in model.modules() if isinstance(m, MoEFeedForward)] == d["thresholds"]
    assert 0 < d["ratio"] < (0.75 if max_share > 0.5 else 0.5)


def test_distill_after_dynamic_k_trains_with_the_routing_in_the_loop():
    """A distill step after dynamic-k trains each block with its skipped experts skipped: the MoE model comes
    closer to the dense one on the calibration text while the taus, and so the skipping, stay."""
    cal = calibration()
    routed = GATED + [{"method": "dynamic-k", "threshold": 0.6}]
    model = tiny_bert()
    report = compress_model(model, routed + [{"method": "distill", "steps": 40, "lr": 2e-3}], cal)
    dk, distill = report["steps"][-2:]
    assert distill["fidelity"]["calibration"]["cos_mean"] > dk["fidelity"]["calibration"]["cos_mean"]
    assert all(m["after"] < m["before"] for m in distill["fidelity"]["block_mse"].values())
    layers = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
    assert [m.threshold for m in layers] == [0.6, 0.6]
    assert ffn_macs_per_token(model, cal)["ratio"] < 0.8


def test_fake_int8_forward_rounds_as_the_int8_kernel_and_passes_gradients():
    """Quant-aware distillation's fake quantization switches a MoE layer to the int8 kernel's contract
    (edgecomp.kernels.moe_reference with int8 weights and activations, on the int8 gate's scores), not the
    float one, with gradients; removing it restores the float layer."""
    from edgecomp.compress.distill import add_fake_quant, remove_fake_quant
    from edgecomp.kernels import moe_reference, quantize_experts
    from edgecomp.quant import TrainView, WeightQuant

    torch.manual_seed(0)
    e, d, h = 4, 16, 32
    layer = MoEFeedForward(torch.randn(e, d, h) / h ** 0.5, 0.1 * torch.randn(e, d), torch.randn(e, h, d) / d ** 0.5,
                           0.1 * torch.randn(h), "gelu", threshold=0.5)
    with torch.no_grad():
        layer.gate.weight.normal_()
    x = torch.randn(3, 10, h)
    w = [layer.w1.detach().numpy(), layer.b1.detach().numpy(), layer.w2.detach().numpy(), layer.b2.detach().numpy()]
    (q1, s1), (q2, s2) = quantize_experts(w[0]), quantize_experts(w[2])
    float_scores = layer.scores(x).detach().numpy()
    int8 = WeightQuant(8, "channel", symmetric=True)
    done = add_fake_quant(layer, TrainView(int8, None, "dynamic-per-tensor"))
    assert layer.fake_int8
    scores = layer.scores(x).detach().numpy()  # the gate is an int8 MatMul in the artifact too
    kernel = moe_reference(x.numpy(), scores, q1, s1, w[1], q2, s2, w[3], threshold=0.5, quantize_activations=True)
    floats = moe_reference(x.numpy(), scores, w[0], np.ones((e, d)), w[1], w[2], np.ones((e, h)), w[3], threshold=0.5)
    got = layer(x)
    err = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    assert err(got.detach().numpy(), kernel) < 1e-4 < 1e-2 < err(floats, kernel)
    got.pow(2).sum().backward()
    assert layer.w1.grad is not None and float(layer.w1.grad.abs().sum()) > 0
    remove_fake_quant(done)
    assert not layer.fake_int8 and np.array_equal(layer.scores(x).detach().numpy(), float_scores)


def test_lowered_graph_matches_the_moe_model_with_and_without_the_library(gated, tmp_path):
    import onnx
    import onnxruntime as ort

    fp32 = lower_encoder(gated, tmp_path / "moe.onnx")
    int8 = quantized(fp32, tmp_path / "moe-int8.onnx", "dynamic-per-channel")
    graph = onnx.load(str(int8))
    nodes = [n for n in graph.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
    assert len(nodes) == 2 and any(f.name == OP_TYPE for f in graph.functions)
    inits = {t.name: t for t in graph.graph.initializer}
    assert inits[nodes[0].input[2]].data_type == onnx.TensorProto.INT8
    feeds = _feeds()
    want = _torch_out(gated, feeds)
    dense = _torch_out(tiny_bert(), feeds)
    # the kernel's float path computes the MoE model, and the skipped experts are really skipped: it is far closer
    # to the MoE model than the dense model is
    assert np.abs(hidden_states(fp32, feeds) - want).max() < min(1e-4, 0.1 * np.abs(dense - want).max())
    kernel = hidden_states(int8, feeds)  # open_artifact registers the library (session options)
    plain = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])  # no library: the fallback body
    fallback = plain.run(["last_hidden_state"], {k: v.numpy() for k, v in feeds.items()})[0]
    # int8: within int8's error of the MoE model (in a 64-wide model one int8 rounding can rival one skipped
    # expert, so closeness to MoE vs dense is checked on the float path above)
    for got in (kernel, fallback):
        assert _cos_min(got, want) > 0.995


@pytest.mark.parametrize("classifier", [False, True], ids=["encoder", "classifier"])
def test_export_cli_verifies_against_the_moe_model(tmp_path, classifier):
    import onnx

    model_dir = save_tiny_encoder("bert", tmp_path / "m", classifier=classifier)
    target = open_target(tmp_path / "t.toml", [{"name": "model", "format": "onnx", "precision": "int8",
                                                "quantization": "dynamic-per-channel", "primary": True}])
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["the movie was good", "a dull plot and a long scene", "funny actors in a short film",
                                "the story is bad", "good scene, good actor", "a long film with a dull story"] * 3))
    recipe = recipe_file(tmp_path / "r.toml", 'steps = [{method = "sparsify", steps = 3, distill = "auto"}, '
                                              '{method = "moefy", experts = 8, iterations = 3}, {method = "expert-gates"}, '
                                              '{method = "dynamic-k", budget = 0.98}, {method = "distill", steps = 3}]\n'
                                              'formats = ["onnx"]\n')
    manifest = export_cli(model_dir, target, tmp_path / "out", recipe, texts)
    rec = manifest["artifacts"][0]
    check = rec["moe_verification"]  # fp32 graph vs the PyTorch MoE model: per token, or per row of logits
    assert check["cos_min"] >= 0.999 and check["share_below_min_cos"] == 0
    assert ("rows" if classifier else "tokens") in check
    assert rec["moe"]["moe_layers"] == 2 and len(rec["moe"]["thresholds"]) == 2
    assert rec["session_options"].get("custom_ops") == "edgecomp"
    steps = {s["method"]: s for s in manifest["compression"]["steps"]}
    assert steps["sparsify"]["details"]["distilled"] == ("hidden+logits" if classifier else "hidden")
    assert ("kl_first_last" in steps["sparsify"]["details"]) == classifier
    # the threshold search keeps what the model's user sees: a classifier's predictions, an encoder's embedding
    dk = steps["dynamic-k"]["details"]
    assert dk["fidelity"] == ("logits-agreement" if classifier else "pooled-cosine") and dk["held_fidelity"] >= 0.98
    assert steps["dynamic-k"]["details"]["thresholds"] == rec["moe"]["thresholds"]
    g = onnx.load(str(tmp_path / "out" / rec["path"]))
    assert sum(n.op_type == OP_TYPE for n in g.graph.node) == 2


@pytest.mark.parametrize("step, words", [
    ('{method = "moefy", experts = 7}', "does not divide the FFN width 128"),
    ('{method = "dynamic-k", threshold = 1.5}', "outside [0, 1]"),
    ('{method = "sparsify", distill = "labels"}', "distill = 'labels' is not one of"),
    ('{method = "dynamic-k", fidelity = "accuracy"}', "fidelity = 'accuracy' is not one of"),
    ('{method = "dynamic-k", threshold = 0.3, max_share = 0.4}', "give max_share or threshold(s), not both"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, step, words):
    model_dir = save_tiny_encoder("bert", tmp_path / "m")
    target = open_target(tmp_path / "t.toml", [{"name": "model", "format": "onnx", "precision": "fp32", "primary": True}])
    recipe = recipe_file(tmp_path / "r.toml", f"steps = [{step}]\n")
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "edgecomp", "export", str(model_dir), "--target", str(target),
                          "--recipe", str(recipe), "-o", str(tmp_path / "out"), "--no-bench"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    # progress lines ("  0.0s load: ...") may precede the one error line
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.lstrip()[:1].isdigit()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_moe_model_exports_where_optimum_knows_the_architecture(gated, tmp_path, monkeypatch):
    """optimum's exporter runs the raw graph in ONNX Runtime, which cannot load the custom op before its fallback
    function is attached: a model with MoE layers takes torch.onnx even when optimum knows its architecture
    (whether it does depends on optimum's lazily filled registry: true in a CLI process for BERT)."""
    import edgecomp.lower.onnx as lower_onnx
    from edgecomp.tasks import TASKS

    monkeypatch.setattr(lower_onnx, "_optimum_knows", lambda model, task: True)
    info = lower_onnx.export_model_onnx(gated, TASKS.get("feature-extraction"), tmp_path / "m.onnx", 18)
    assert info["exporter"] == "torch.onnx" and (tmp_path / "m.onnx").is_file()
