"""Block-int4 in ONNX Runtime on LiteRT's grid: the stored weights are exactly the values LiteRT's quantizer
picks, for MatMul (MatMulNBits) and embedding tables (GatherBlockQuantized), and the distillation's fake
quantizer trains against that same grid."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgecomp.compress.distill import fake_quant_int4_litert
from edgecomp.errors import EdgecompError
from edgecomp.optimize.quantize import litert_int4_blocks, quantize_onnx
from edgecomp.quant import parse_scheme
from edgecomp.runtime.ort import ort_session

K, N, V = 64, 96, 50


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((K, N)) * 0.05).astype(np.float32), (rng.standard_normal((V, K)) * 0.1).astype(np.float32)


def _matmul_gather_model(w: np.ndarray, table: np.ndarray, path):
    """y = x @ w and e = table[ids]: one MatMul and one Gather with constant weights."""
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Gather", ["table", "ids"], ["e"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", K])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))


def _dequant(w_rows: np.ndarray, block: int) -> np.ndarray:
    q, s = litert_int4_blocks(w_rows, block)
    return q.reshape(w_rows.shape[0], -1, block) * s[..., None]


def test_litert_grid_matches_ai_edge_quantizer():
    from ai_edge_quantizer import qtyping  # litert-torch's own quantizer: installed with the android extra
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    w = _weights()[0].T.copy()  # [N, K]: LiteRT's FC weight, blocks along the input axis
    blocks = w.reshape(N, K // 32, 32)
    zp, scale = uqt.tensor_zp_scale_from_min_max(blocks.min(-1), blocks.max(-1), 4, True,
                                                 qtyping.QuantGranularity.BLOCKWISE_32)
    params = qtyping.UniformQuantParams(num_bits=4, quantized_dimension=1, scale=scale, zero_point=zp,
                                        symmetric=True, block_size=32)
    theirs = uqt.uniform_quantize(w, params, is_blockwise_quant=True)
    ours, our_scale = litert_int4_blocks(w, 32)
    np.testing.assert_array_equal(our_scale, scale)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("block", [16, 32])
def test_ort_int4_on_litert_grid_stores_litert_values(tmp_path, block):
    w, table = _weights(1)
    _matmul_gather_model(w, table, tmp_path / "f.onnx")
    scheme = parse_scheme({"weights": {"bits": 4, "block": block, "grid": "litert"}}, "test")
    info = quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", scheme)
    assert info["grid"] == "litert"
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert sorted(ops) == ["GatherBlockQuantized", "MatMulNBits"]
    y, e = ort_session(tmp_path / "q.onnx", threads=1).run(
        None, {"x": np.eye(K, dtype=np.float32), "ids": np.arange(V, dtype=np.int64)})
    # the identity input reads the dequantized weight back out, exactly
    np.testing.assert_array_equal(y.T, _dequant(w.T.copy(), block).reshape(N, K))
    np.testing.assert_array_equal(e, _dequant(table, block).reshape(V, K))
    # the distillation's fake quantizer ([in, out] layout) lands on the same values
    fq = fake_quant_int4_litert(torch.from_numpy(w), block).detach().numpy()
    np.testing.assert_array_equal(fq, y)


def test_unknown_grid_is_refused(tmp_path):
    with pytest.raises(EdgecompError, match="grid = 'nf4' is unknown"):
        parse_scheme({"weights": {"bits": 4, "block": 32, "grid": "nf4"}}, "test")


def test_a_grid_onnx_cannot_store_is_refused_before_writing(tmp_path):
    w, table = _weights()
    _matmul_gather_model(w, table, tmp_path / "f.onnx")
    q4_1 = parse_scheme({"weights": {"bits": 4, "block": 32, "grid": "q4_1"}}, "test")
    with pytest.raises(EdgecompError, match="ORT's or LiteRT's grid"):
        quantize_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", q4_1)
    assert not (tmp_path / "q.onnx").exists()
