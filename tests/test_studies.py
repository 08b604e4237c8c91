"""The study protocols in edgecomp.studies, on a tiny random-init BERT: an encoder lowered through the shipped
passes embeds as PyTorch does, a compressed one keeps its factors when asked, and the peers' fixed-shape
.tflite runner (and its memory probe) give PyTorch's hidden states."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer, BertModel

from edgecomp.bench.memory import peak_rss_mb
from edgecomp.compress import compress_model
from edgecomp.runtime import open_artifact
from edgecomp.studies.encoder_artifacts import lower_encoder, quantized
from edgecomp.studies.peers import FixedTFLite
from edgecomp.studies.sst2_embeddings import cos_stats, embed_artifact, embed_torch
from edgecomp.studies.wikitext import detokenize_wikitext

TEXTS = ["the film is a quiet triumph of craft and nerve", "a dull , lifeless slog", "it works", "not bad at all"]


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    return BertModel.from_pretrained(tiny_bert_dir).eval(), AutoTokenizer.from_pretrained(tiny_bert_dir)


def test_lowered_encoder_embeds_like_pytorch(bert, tmp_path):
    model, tok = bert
    fp32 = lower_encoder(model, tmp_path / "fp32.onnx")
    ref = embed_torch(model, tok, TEXTS, batch_size=3)
    assert cos_stats(ref, embed_artifact(open_artifact(fp32), tok, TEXTS, batch_size=3))["cos_min"] >= 0.9999
    int8 = quantized(fp32, tmp_path / "int8.onnx", "dynamic-per-channel")
    assert {n.op_type for n in onnx.load(str(int8)).graph.node} >= {"DynamicQuantizeLinear", "MatMulInteger"}
    assert cos_stats(ref, embed_artifact(open_artifact(int8), tok, TEXTS, batch_size=1))["cos_mean"] > 0.95


def test_keep_factorized_keeps_the_svd_factors(bert, tmp_path):
    model, tok = bert
    small = copy.deepcopy(model)
    compress_model(small, [{"method": "lowrank", "modules": "encoder.layer.*.intermediate.dense", "ratio": 2}], None)
    kept = lower_encoder(small, tmp_path / "kept.onnx", keep_factorized=True)
    names = " ".join(i.name for i in onnx.load(str(kept)).graph.initializer)
    assert "lowrank_u" in names or "lowrank_v" in names, names[:400]
    ref = embed_torch(small, tok, TEXTS)
    assert cos_stats(ref, embed_artifact(open_artifact(kept), tok, TEXTS))["cos_min"] >= 0.9999


def test_peer_fixed_shape_tflite_and_its_memory_probe(bert, tmp_path):
    import litert_torch

    from tiny import encoder_module

    model, tok = bert
    z = torch.zeros(1, 16, dtype=torch.long)
    path = tmp_path / "peer.tflite"
    litert_torch.convert(encoder_module(model), (z + 5, z + 1, z)).export(str(path))
    enc = tok(TEXTS[:2], padding=True, truncation=True, max_length=16, return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in enc.items()}
    got = FixedTFLite(path, 1).run(feeds)["last_hidden_state"]
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    mask = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[mask], ref[mask], atol=1e-4)  # real tokens; padding rows are don't-care
    # in MB, of a process that loaded LiteRT and the model (measured 42 here): not kB, bytes or an empty probe
    assert 20 < peak_rss_mb(path, feeds, kind="fixed-tflite") < 1000


def test_wikitext_detokenization():
    assert detokenize_wikitext("a @-@ b , 1 @,@ 000 ( c ) don 't it 's") == "a-b, 1,000 (c) don't it's"


def test_dsti_recipes_rows_name_recipes_that_load_and_ratios_pair_model_and_format():
    """The end-to-end DSTI study's rows name shipped recipes or recipe files that load, and each artifact's
    instructions are divided by the same model's plain int8 artifact of the same format."""
    from pathlib import Path

    from edgecomp.recipes import check_steps, list_recipes, read_recipe_file
    from edgecomp.studies.dsti_recipes import RESULTS, TEXT_FILES, default_rows, with_ratios

    shipped = {r.name for r in list_recipes()}
    for row in default_rows():
        assert row.texts is None or row.texts in TEXT_FILES
        if row.recipe and row.recipe not in shipped:
            check_steps(read_recipe_file(RESULTS.parents[1] / Path(row.recipe)))
    art = lambda path, n: {"path": path, "arm_instructions": n}  # noqa: E731
    result = with_ratios({"rows": [
        {"model": "a", "recipe": None, "artifacts": [art("model.onnx", 200), art("model.tflite", 100)]},
        {"model": "b", "recipe": None, "artifacts": [art("model.onnx", 400)]},
        {"model": "a", "recipe": "dsti", "artifacts": [art("model.onnx", 140), art("model.ort", 150)]},
        {"model": "b", "recipe": "dsti", "label": "x", "failed": "error: ..."}]})
    assert [a["arm_vs_int8"] for a in result["rows"][2]["artifacts"]] == [0.7, None]  # no int8 .ort row to pair
    assert result["rows"][0]["artifacts"][1]["arm_vs_int8"] == 1.0
