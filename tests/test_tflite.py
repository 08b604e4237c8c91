"""TFLite lowering + LiteRT runner, checked against PyTorch on a tiny random-init BERT (no downloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import torch

from edgecomp.errors import EdgecompError
from edgecomp.lower.tflite import export_tflite
from edgecomp.quant import parse_scheme
from edgecomp.runtime import open_artifact
from edgecomp.tasks.feature_extraction import cosine_rows, pool
from tiny import IO_NAMES, encoder_module, tiny_bert

# the schemes the android target and the int4 recipe give its .tflite
INT8 = parse_scheme({"weights": {"bits": 8}, "activations": "dynamic-per-row"}, "test")
INT4 = parse_scheme({"weights": {"bits": 4, "block": 32}, "activations": "dynamic-per-row"}, "test")

NAMES = IO_NAMES
VOCAB = 2000


@pytest.fixture(scope="module")
def bert():
    # weight-dominated (embeddings + linears ~0.65M params) so the int8 size ratio is meaningful
    return tiny_bert(vocab_size=VOCAB, hidden_size=128, intermediate_size=512, max_position_embeddings=64)


@pytest.fixture(scope="module")
def exported(bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("tflite")
    fp32 = export_tflite(encoder_module(bert), NAMES, ["last_hidden_state"], d / "fp32.tflite", [16, 8], None)
    int8 = export_tflite(encoder_module(bert), NAMES, ["last_hidden_state"], d / "int8.tflite", [8, 16], INT8)
    return d, fp32, int8


def _feeds(batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    mask[1:, length - 2:] = 0  # the second row is padded: only its real tokens are compared
    ids = rng.integers(1, VOCAB, (batch, length)) * mask
    types = np.zeros((batch, length), np.int64)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}


def _torch(bert, feeds):
    with torch.no_grad():
        return bert(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()


def test_export_writes_one_signature_per_bucket(exported):
    d, fp32, int8 = exported
    assert fp32["signatures"] == ["seq8", "seq16"]
    assert fp32["size_bytes"] == (d / "fp32.tflite").stat().st_size
    assert int8["quantization"] == "dynamic-int8"
    assert not list(d.glob(".*tmp*"))  # written to a temporary name, then renamed
    runner = open_artifact(d / "fp32.tflite", threads=1)
    assert runner.buckets == [8, 16]
    assert set(runner.input_names) == set(NAMES)
    assert runner.output_names == ["last_hidden_state"]


@pytest.mark.parametrize("length", [5, 8, 16])  # 5 pads to bucket 8; 8 and 16 fill their buckets
def test_fp32_matches_pytorch(bert, exported, length):
    d, _, _ = exported
    feeds = _feeds(2, length, seed=length)
    got = open_artifact(d / "fp32.tflite", threads=1).run(feeds)["last_hidden_state"]
    ref = _torch(bert, feeds)
    assert got.shape == ref.shape == (2, length, 128)
    real = feeds["attention_mask"].astype(bool)
    # fp32 with a different op order (XNNPACK): 1e-4 absolute on unit-scale hidden states
    np.testing.assert_allclose(got[real], ref[real], atol=1e-4, rtol=0)


def test_dynamic_int8_is_smaller_and_close(bert, exported):
    d, fp32, int8 = exported
    assert int8["size_bytes"] < 0.4 * fp32["size_bytes"]
    feeds = _feeds(8, 12, seed=1)
    got = open_artifact(d / "int8.tflite", threads=1).run(feeds)["last_hidden_state"]
    ref = _torch(bert, feeds)
    mask = feeds["attention_mask"]
    cos = cosine_rows(pool(got, mask, "mean", True), pool(ref, mask, "mean", True))
    # measured 0.9999 on this model; 0.98 leaves room for other seeds while catching a broken scheme
    assert cos.min() > 0.98, cos


def test_int4_block_is_smaller_than_int8(bert, exported, tmp_path):
    _, _, int8 = exported
    info = export_tflite(encoder_module(bert), NAMES, ["last_hidden_state"], tmp_path / "int4.tflite", [16], INT4)
    assert info["size_bytes"] < int8["size_bytes"]
    feeds = _feeds(4, 16, seed=2)
    got = open_artifact(tmp_path / "int4.tflite", threads=1).run(feeds)["last_hidden_state"]
    mask = feeds["attention_mask"]
    cos = cosine_rows(pool(got, mask, "mean", True), pool(_torch(bert, feeds), mask, "mean", True))
    assert cos.min() > 0.95, cos  # int4 weights: measured 0.996 on this model


def test_buckets_and_reloads_match_pytorch_with_shared_packed_weights(bert, exported):
    """The runner packs the weights once for all buckets (XNNPACK in-memory weight cache): each bucket, and a
    second load of the file (which builds its own cache), must still give PyTorch's outputs."""
    d, _, _ = exported
    feeds = _feeds(2, 5, seed=7)
    padded = {k: np.pad(v, ((0, 0), (0, 7))) for k, v in feeds.items()}  # 12 masked-out tokens: bucket 16
    ref = _torch(bert, feeds)
    mask = feeds["attention_mask"]
    real = mask.astype(bool)
    for name in ("fp32.tflite", "int8.tflite"):
        first, second = (open_artifact(d / name, threads=1) for _ in range(2))
        outs = [r.run(f)["last_hidden_state"][:, :5] for r in (first, second) for f in (feeds, padded)]
        np.testing.assert_array_equal(outs[0], outs[2])  # a reload computes exactly what the first load did
        np.testing.assert_array_equal(outs[1], outs[3])
        for got in outs:
            if name == "fp32.tflite":
                np.testing.assert_allclose(got[real], ref[real], atol=1e-4, rtol=0)
            else:  # dynamic int8: same bar as test_dynamic_int8_is_smaller_and_close
                cos = cosine_rows(pool(got, mask, "mean", True), pool(ref, mask, "mean", True))
                assert cos.min() > 0.98, cos
    if sys.platform == "linux":  # the mechanism: one XNNPACK weight cache per load, in memory (no file)
        assert "memfd:XNNPack in-memory weight cache" in Path("/proc/self/maps").read_text()


def test_too_long_input_names_the_limit(exported):
    d, _, _ = exported
    with pytest.raises(EdgecompError, match="at most 16 tokens.*max_length=16"):
        open_artifact(d / "fp32.tflite").run(_feeds(1, 17, seed=0))


def test_corrupt_file_is_a_clear_error(exported, tmp_path):
    d, _, _ = exported
    bad = tmp_path / "model.tflite"
    bad.write_bytes((d / "fp32.tflite").read_bytes()[:4096])
    with pytest.raises(EdgecompError, match="model.tflite.*re-run `edgecomp export`"):
        open_artifact(bad)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(EdgecompError, match="junk.tflite"):
        open_artifact(junk)


def test_a_scheme_litert_cannot_store_is_rejected(bert, tmp_path):
    blocks64 = parse_scheme({"weights": {"bits": 4, "block": 64}, "activations": "dynamic-per-row"}, "test")
    with pytest.raises(EdgecompError, match="TFLite artifact cannot store"):
        export_tflite(encoder_module(bert), NAMES, ["last_hidden_state"], tmp_path / "m.tflite", [8], blocks64)
    assert not (tmp_path / "m.tflite").exists()


def test_int4_tflite_quantizes_layernorm_folded_weights(bert, tmp_path):
    """What "int4-tflite" distillation trains for: LiteRT's converter folds each LayerNorm's scale into the
    Linear it feeds before quantizing, so those FULLY_CONNECTED blocks carry the scales of W·diag(gamma)
    (value, intermediate exactly; query and key also times d^-1/4), and the others those of W."""
    from ai_edge_litert.interpreter import Interpreter

    from edgecomp.compress.distill import layernorm_inputs
    from edgecomp.optimize.quantize import litert_int4_blocks

    import copy

    bert = copy.deepcopy(bert)
    with torch.no_grad():  # random-init LayerNorms have gamma = 1, which folds to nothing
        for m in bert.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
    export_tflite(encoder_module(bert), NAMES, ["last_hidden_state"], tmp_path / "int4.tflite", [16], INT4)
    it = Interpreter(str(tmp_path / "int4.tflite"))
    details = it.get_tensor_details()
    stored = [details[o["inputs"][1]]["quantization_parameters"]["scales"]
              for o in it._get_ops_details() if o["op_name"] == "FULLY_CONNECTED"]
    folds = layernorm_inputs(bert, {k: torch.from_numpy(v) for k, v in _feeds(2, 16, seed=3).items()})
    layer = bert.encoder.layer[0]
    assert set(folds) >= {layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                          layer.intermediate.dense}
    assert layer.attention.output.dense not in folds and layer.output.dense not in folds

    def scales(linear, fold: bool):
        w = linear.weight.detach().numpy()
        if fold:
            w = w * folds[linear].weight.detach().numpy()[None, :]
        return litert_int4_blocks(w, 32)[1].ravel()

    for linear in (layer.attention.self.value, layer.intermediate.dense):
        assert any(s.shape == scales(linear, True).shape and np.array_equal(s, scales(linear, True)) for s in stored)
        assert not any(s.shape == scales(linear, False).shape and np.array_equal(s, scales(linear, False)) for s in stored)
    out_dense = scales(layer.attention.output.dense, False)
    assert any(s.shape == out_dense.shape and np.array_equal(s, out_dense) for s in stored)
