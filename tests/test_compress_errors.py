"""Impossible or mistyped recipe steps are refused with one EdgecompError naming the problem and the fix,
before any work is done."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from edgecomp.compress import compress_model, parse_steps
from edgecomp.errors import EdgecompError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128)).eval()


BAD_STEPS = [
    ({"method": "lowrank", "rank": 65, "modules": "encoder.layer.*.attention.self.query"}, "exceeds min"),
    ({"method": "lowrank", "ratio": 1.0}, "does not compress"),
    ({"method": "lowrank", "ratio": 0.5}, "does not compress"),
    ({"method": "lowrank"}, "exactly one of"),
    ({"method": "lowrank", "rank": 8, "energy": 0.9}, "exactly one of"),
    ({"method": "lowrank", "energy": 1.5}, "outside"),
    ({"method": "lowrank", "rnak": 8}, "unknown key"),
    ({"method": "lowrank", "rank": "8"}, "wrong type"),
    ({"method": "lowrank", "rank": 8, "modules": "decoder.*"}, "match no Linear"),
    ({"method": "lowrank", "rank": 8, "activation_aware": True}, "needs calibration"),
    ({"method": "svd-embedding", "latent_dim": 64}, "not below the embedding width"),
    ({"method": "svd-embedding", "latent_dim": 8, "module": "embeddings.LayerNorm"}, "not an nn.Embedding"),
    ({"method": "ae-embedding", "ratio": 1}, "does not compress"),
    ({"method": "kron-embedding", "d2": 5}, "does not divide"),
    ({"method": "kron-embedding", "d2": 4, "terms": 4}, "terms < d2"),
    ({"method": "kron-embedding", "ratio": 100}, "no divisor"),
    ({"method": "kronecker", "a_shape": [3, 8], "terms": 1}, "does not divide"),
    ({"method": "kronecker", "a_shape": [4, 8], "terms": 999}, "impossible"),
    ({"method": "kronecker", "ratio": 0.9}, "does not compress"),
    ({"method": "kronecker", "terms": 2}, "needs a_shape"),
    ({"method": "ae-weights", "latent_dim": 64}, "impossible"),
    ({"method": "ae-weights", "latent_dim": 8, "lowering": "dense"}, "unknown"),
    ({"method": "distill"}, "needs calibration"),
    ({"method": "distill", "fake_quant": "int3"}, "unknown"),
    ({"method": "prune-ffn", "keep": 1.0}, "outside (0, 1)"),
    ({"method": "prune-ffn", "up": ["intermediate.dense"]}, "give both up and down"),
    ({"method": "prune-ffn", "score": "magnitude"}, "unknown"),
    ({"method": "prune-ffn"}, "needs calibration"),
    ({"method": "smooth", "alpha": 1.5}, "outside [0, 1]"),
    ({"method": "smooth"}, "needs calibration"),
    ({"method": "prune"}, "unknown compression method"),
    ({"rank": 4}, "no `method`"),
]


@pytest.mark.parametrize("step,words", BAD_STEPS, ids=[f"{s.get('method')}-{w}" for s, w in BAD_STEPS])
def test_refused_with_message(step, words):
    model = tiny_bert()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(EdgecompError) as e:
        compress_model(model, [step], None)
    msg = str(e.value)
    assert words in msg and "Fix:" in msg and "\n" not in msg
    if "method" in step and step["method"] != "prune":
        after = model.state_dict()  # refused before touching the model
        assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)


def test_whole_recipe_is_validated_before_the_first_step():
    model = tiny_bert()
    with pytest.raises(EdgecompError, match="step 2"):
        compress_model(model, [{"method": "svd-embedding", "latent_dim": 8}, {"method": "lowrank", "bogus": 1}], None)
    assert isinstance(model.embeddings.word_embeddings, torch.nn.Embedding)


def test_parse_steps_accepts_toml_shapes():
    parsed = parse_steps([{"method": "lowrank", "modules": ["encoder.layer.*.intermediate.dense"], "energy": 0.9},
                          {"method": "kronecker", "ratio": 4}])
    assert [m for m, _ in parsed] == ["lowrank", "kronecker"]
