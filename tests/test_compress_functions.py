"""`--custom-ops` lowering and what simplification does to the compressed form, through `edgecomp export`.

A tiny BERT folder exported with a recipe that uses every factorization, once plainly and once with
`--custom-ops`: each compressed module of the shipped fp32, int8 (dynamic per-channel) and int4
(block-int4) artifacts is one `edgecomp.*` node backed by an ONNX local function of standard ops, and
onnxruntime gives the same result as the plain artifact (tolerance 1e-5, observed 0). The pipeline's
onnxslim keeps low-rank / Kronecker / factorized-embedding weights factorized; the `decode` lowering of
ae-weights is folded back to dense by it, which is why a recipe using it sets `keep_factorized`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgecomp.bench.size import onnx_size_breakdown
from edgecomp.compress import compress_model
from edgecomp.compress.functions import DOMAIN, compressed_modules

from shipped import export_cli, hidden_states, lower_encoder, open_target
from tiny import tiny_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = '''description = "every factorization"
steps = [{method = "ae-embedding", latent_dim = 16, steps = 5},
         {method = "lowrank", modules = "*attention.self*", rank = 8},
         {method = "kronecker", modules = "*intermediate*", a_shape = [4, 8], terms = 2},
         {method = "ae-weights", modules = "*output.dense", latent_dim = 8, steps = 5}]
'''
FP32 = {"name": "model-fp32", "format": "onnx", "precision": "fp32"}
INT8 = {"name": "model", "format": "onnx", "precision": "int8", "quantization": "dynamic-per-channel", "primary": True}
INT4 = {"name": "model-int4", "format": "onnx", "precision": "int4", "quantization": "block-int4"}
FILES = {"fp32": "model-fp32.onnx", "int8": "model.onnx", "int4": "model-int4.onnx"}
# parameter names of the compressed layers (edgecomp.compress.layers); quantizers keep them as prefixes
FACTOR_NAMES = ("lowrank_u", "lowrank_v", "kron_a", "kron_b", "latent", "decoder", "ae_latent_t", "ae_latent",
                "ae_decoder_t")


def missing_factors(model: onnx.ModelProto, compress_report: dict) -> list[str]:
    """Compressed modules of a compression report none of whose factors is an initializer of ``model`` any
    more, i.e. that a constant folder multiplied back into a dense weight (the exporter may prepend a scope)."""
    names = [i.name for i in model.graph.initializer]
    missing = []
    for step in compress_report["steps"]:
        for module in step["modules"]:
            if module == step.get("details", {}).get("tied_output_head"):
                continue  # the head reuses the table's factors
            if not any(f"{module}.{f}" in n for n in names for f in FACTOR_NAMES):
                missing.append(module)
    return missing


@pytest.fixture(scope="module")
def exported(tiny_bert_dir, few_texts, tmp_path_factory):
    d = tmp_path_factory.mktemp("fn")
    (d / "recipe.toml").write_text(RECIPE)
    target = open_target(d / "three.toml", [FP32, INT8, INT4])  # fp32, int8 and int4 from one export
    plain = export_cli(tiny_bert_dir, target, d / "plain", d / "recipe.toml", few_texts)
    custom = export_cli(tiny_bert_dir, target, d / "custom", d / "recipe.toml", few_texts, "--custom-ops")
    return {"plain": (d / "plain", plain), "custom": (d / "custom", custom)}


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_functions_run_in_ort_unchanged(exported, precision):
    (plain_dir, plain_m), (custom_dir, custom_m) = exported["plain"], exported["custom"]
    plain = onnx.load(str(plain_dir / FILES[precision]))
    wrapped = onnx.load(str(custom_dir / FILES[precision]))
    onnx.checker.check_model(wrapped)
    ops = {n.op_type for n in wrapped.graph.node if n.domain == DOMAIN}
    assert {"FactorizedEmbedding", "LowRankLinear", "KroneckerLinear", "SharedDecoderLinear"} <= {o.split("_")[0] for o in ops}
    assert {f.domain for f in wrapped.functions} == {DOMAIN}
    assert not any(n.domain == DOMAIN for n in plain.graph.node)
    assert len(wrapped.graph.node) < len(plain.graph.node)
    # weights stay graph initializers (quantized ones too), passed into the functions
    assert {i.name for i in wrapped.graph.initializer} == {i.name for i in plain.graph.initializer}
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(1))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    got = hidden_states(custom_dir / FILES[precision], feeds)
    want = hidden_states(plain_dir / FILES[precision], feeds)
    assert np.abs(got - want).max() <= 1e-5
    # the export verified the wrapped artifact itself, and recorded how it was written
    records = {r["path"]: r for r in custom_m["artifacts"]}
    assert records[FILES[precision]]["custom_ops"].startswith("edgecomp.*")
    plain_fid = {r["path"]: r for r in plain_m["artifacts"]}[FILES[precision]]["metrics"]["fidelity"]
    assert records[FILES[precision]]["metrics"]["fidelity"]["cos_mean"] == pytest.approx(plain_fid["cos_mean"], abs=1e-5)


def test_compressed_modules_found_by_name(exported):
    out, manifest = exported["plain"]
    found = compressed_modules(onnx.load(str(out / FILES["int8"])))
    touched = [m for s in manifest["compression"]["steps"] for m in s["modules"]]
    assert len(touched) == 1 + 2 * 3 + 2 + 2 * 2  # the table; q, k, v; up; attention-output and down per layer
    assert len(found) == len(touched) and all(any(f.endswith(t) for f in found) for t in touched)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_onnxslim_keeps_factorizations(exported, precision):
    """The shipped graphs went through onnxslim with constant folding: every factorization is still there."""
    out, manifest = exported["plain"]
    assert manifest["artifacts"][0]["simplify"]["constant_folding"] is True
    assert missing_factors(onnx.load(str(out / FILES[precision])), manifest["compression"]) == []


def test_decode_lowering_is_refolded_unless_the_recipe_keeps_it(tiny_bert_dir, few_texts, tmp_path):
    """Lowering (a) only keeps its storage gain if nothing constant-folds it: the pipeline's simplification
    re-densifies it, detected here, and a recipe with `keep_factorized = true` ships it factorized (the
    exporter renames the factors `onnx::MatMul_N`, so what is compared is the bytes of the layers)."""
    model = tiny_bert()
    step = {"method": "ae-weights", "latent_dim": 8, "steps": 2, "lowering": "decode"}
    report = compress_model(model, [step], None)
    assert report["steps"][0]["details"]["keep_unfolded"]
    folded_path = lower_encoder(model, tmp_path / "d.onnx")
    assert missing_factors(onnx.load(str(folded_path)), report)  # re-densified
    folded = onnx_size_breakdown(folded_path)
    dense_layers = 4 * sum(p.numel() for n, p in tiny_bert().named_parameters()
                           if n.startswith("encoder.") and n.endswith(".weight") and "LayerNorm" not in n)
    assert folded["attention"] + folded["feed_forward"] >= dense_layers

    (tmp_path / "recipe.toml").write_text(
        'description = "decode"\nkeep_factorized = true\n'
        'steps = [{method = "ae-weights", latent_dim = 8, steps = 2, lowering = "decode"}]\n')
    target = open_target(tmp_path / "fp32.toml", [{**FP32, "primary": True}])
    m = export_cli(tiny_bert_dir, target, tmp_path / "o", tmp_path / "recipe.toml", few_texts)
    (fp32,) = m["artifacts"]
    assert fp32["simplify"]["constant_folding"] is False
    assert fp32["metrics"]["fidelity"]["n_texts"] == 16  # it loaded, ran and was compared with PyTorch
    kept = m["size_breakdown"][fp32["path"]]
    assert kept["attention"] + kept["feed_forward"] < 0.5 * dense_layers
    assert kept["total"] < folded["total"] - 0.5 * dense_layers
