"""`--custom-ops` lowering and what simplification does to the compressed form.

wrap_as_functions turns every compressed module into one `edgecomp.*` node backed by an ONNX local
function of standard ops; onnxruntime must run it with the same result (tolerance 1e-5, observed 0) on
the fp32, int8 (quantize_dynamic per-channel) and int4 (MatMulNBits) artifacts. onnxslim must keep
low-rank / Kronecker / factorized-embedding weights factorized; the `decode` lowering of ae-weights is
folded back to dense by it (that is why the pipeline must skip constant folding for it)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgecomp.compress import compress_model
from edgecomp.compress.functions import DOMAIN, compressed_modules, wrap_as_functions
from edgecomp.compress.onnx_check import (export_encoder, missing_factors, ort_session, quantize_int4, quantize_int8,
                                          run_encoder)

from test_compress_methods import tiny_bert


pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = [{"method": "ae-embedding", "latent_dim": 16, "steps": 5},
         {"method": "lowrank", "modules": "*attention.self*", "rank": 8},
         {"method": "kronecker", "modules": "*intermediate*", "a_shape": [4, 8], "terms": 2},
         {"method": "ae-weights", "modules": "*output.dense", "latent_dim": 8, "steps": 5}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("fn")
    model = tiny_bert()
    report = compress_model(model, STEPS, None)
    fp32 = export_encoder(model, d / "m.onnx")
    return report, {"fp32": fp32, "int8": quantize_int8(fp32, d / "m8.onnx"), "int4": quantize_int4(fp32, d / "m4.onnx")}


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_functions_run_in_ort_unchanged(exported, precision, tmp_path):
    _, paths = exported
    plain = onnx.load(str(paths[precision]))
    wrapped = wrap_as_functions(plain)
    onnx.checker.check_model(wrapped)
    ops = {n.op_type for n in wrapped.graph.node if n.domain == DOMAIN}
    assert {"FactorizedEmbedding", "LowRankLinear", "KroneckerLinear", "SharedDecoderLinear"} <= {o.split("_")[0] for o in ops}
    assert {f.domain for f in wrapped.functions} == {DOMAIN}
    assert len(wrapped.graph.node) < len(plain.graph.node)
    # weights stay graph initializers (quantized ones too), passed into the functions
    assert {i.name for i in wrapped.graph.initializer} == {i.name for i in plain.graph.initializer}
    onnx.save(wrapped, str(tmp_path / "w.onnx"))
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    got = run_encoder(ort_session(tmp_path / "w.onnx"), feeds)
    want = run_encoder(ort_session(paths[precision]), feeds)
    assert np.abs(got - want).max() <= 1e-5


def test_compressed_modules_found_by_name(exported):
    report, paths = exported
    found = compressed_modules(onnx.load(str(paths["int8"])))
    touched = [m for s in report["steps"] for m in s["modules"]]
    assert len(found) == len(touched) and all(any(f.endswith(t) for f in found) for t in touched)


def test_onnxslim_keeps_factorizations(exported):
    onnxslim = pytest.importorskip("onnxslim")
    report, paths = exported
    slim = onnxslim.slim(onnx.load(str(paths["fp32"])))
    assert missing_factors(slim, report) == []


def test_decode_lowering_is_refolded_by_onnxslim(tmp_path):
    """Lowering (a) only keeps its storage gain if nothing constant-folds it: documented, and detected."""
    onnxslim = pytest.importorskip("onnxslim")
    model = tiny_bert()
    report = compress_model(model, [{"method": "ae-weights", "latent_dim": 8, "steps": 2, "lowering": "decode"}], None)
    assert report["steps"][0]["details"]["keep_unfolded"]
    slim = onnxslim.slim(onnx.load(str(export_encoder(model, tmp_path / "d.onnx"))))
    assert missing_factors(slim, report)  # re-densified: the pipeline must skip folding for this recipe
