"""Layer-wise distillation lowers every block's output error and raises the model's fidelity on the
calibration text; with fake quantization the raw (unquantized) weights are what stays in the model."""

from __future__ import annotations

import pytest
import numpy as np
import torch

from edgecomp.compress import compress_model
from edgecomp.compress.distill import fake_quant_int4, fake_quant_int8
from edgecomp.compress.layers import LowRankLinear

from test_compress_methods import calibration, tiny_bert


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_distill_recovers_fidelity():
    model = tiny_bert()
    cal = calibration()
    report = compress_model(model, [{"method": "lowrank", "rank": 4},
                                    {"method": "distill", "steps": 40, "lr": 2e-3, "final_steps": 10}], cal)
    lowrank, distill = report["steps"]
    for block, m in distill["fidelity"]["block_mse"].items():
        # blocks learn; the short end-to-end stage only has to do no harm
        assert m["after"] < m["before"] if block != "end_to_end" else m["after"] <= m["before"] * 1.01, block
    assert distill["fidelity"]["calibration"]["cos_mean"] > lowrank["fidelity"]["calibration"]["cos_mean"]
    assert isinstance(model.encoder.layer[0].attention.self.query, LowRankLinear)  # structure unchanged
    assert not any(p for n, p in model.named_parameters() if "original" in n)  # parametrizations removed


def _tiny_matmul(w):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w.shape[1]])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _dequantized(model, k):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": np.eye(k, dtype=np.float32)})[0]


def test_fake_quantizers_match_onnxruntime(tmp_path):
    """The distillation's quantizers are the pipeline's: same grid as ORT int8 per-channel / MatMulNBits."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    w = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    q = MatMulNBitsQuantizer(_tiny_matmul(w), bits=4, block_size=32, is_symmetric=True)
    q.process()
    ort4 = _dequantized(q.model.model, 64)
    assert np.abs(fake_quant_int4(torch.from_numpy(w), 32).numpy() - ort4).max() < 1e-5
    onnx.save(_tiny_matmul(w), str(tmp_path / "f.onnx"))
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), per_channel=True, weight_type=QuantType.QInt8)
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    ort8 = inits["W_quantized"].astype(np.float32) * inits["W_scale"]
    assert np.abs(fake_quant_int8(torch.from_numpy(w)).numpy() - ort8).max() < 1e-5
    wt = torch.from_numpy(w).requires_grad_(True)
    fake_quant_int8(wt).sum().backward()
    assert torch.equal(wt.grad, torch.ones_like(wt))  # straight-through


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_distill_on_a_causal_lm():
    """Llama: the table sits next to the blocks (model.embed_tokens), blocks take position embeddings and
    the mask as kwargs, and the model passes a KV cache that replayed blocks must not append to."""
    untouched = compress_model(_tiny_llama(), [{"method": "distill", "steps": 1}], calibration())
    for block, m in untouched["steps"][0]["fidelity"]["block_mse"].items():
        assert m["before"] < 1e-10, block  # replaying the teacher's own blocks reproduces their outputs
    model = _tiny_llama()
    report = compress_model(model, [{"method": "lowrank", "modules": "model.layers.*.mlp.*", "rank": 8},
                                    {"method": "distill", "steps": 30, "lr": 2e-3}], calibration())
    for block, m in report["steps"][1]["fidelity"]["block_mse"].items():
        assert m["after"] < m["before"], block
    assert isinstance(model.model.layers[0].mlp.up_proj, LowRankLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tied head stays tied


def test_int4_tflite_fake_quant_folds_the_layernorm_scale():
    """The weight a folded Linear trains with is LiteRT's int4 of W·diag(gamma), with gamma taken back out."""
    from edgecomp.compress.distill import add_fake_quant, fake_quant_int4_litert, remove_fake_quant
    from edgecomp.quant import TrainView, WeightQuant

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 48))
    with torch.no_grad():
        block[0].weight.uniform_(0.5, 2.0)
    w, g = block[1].weight.detach().clone(), block[0].weight.detach().clone()
    litert4 = WeightQuant(4, 32, grid="litert", symmetric=True)  # what LiteRT's converter stores
    done = add_fake_quant(block, TrainView(litert4, litert4, "dynamic-per-row", fold_layernorm=True),
                          folds={block[1]: block[0]})
    want = (fake_quant_int4_litert((w * g[None, :]).T, 32) / g[:, None]).T
    assert torch.allclose(block[1].weight, want, atol=1e-6)
    assert not torch.allclose(block[1].weight, fake_quant_int4_litert(w.T, 32).T)  # folding changes the grid
    remove_fake_quant(done)
    assert torch.equal(block[1].weight, w)
