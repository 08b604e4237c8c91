"""Every compression method on a tiny random BERT: the fp32 ONNX graph `edgecomp export` builds of the
compressed model (edgecomp.lower + onnxslim, run by edgecomp.runtime's ONNX Runtime runner) computes what
the compressed PyTorch model computes, for random batch/sequence shapes; parameter counts follow each
method's formula; the report is JSON-able and names the touched modules.

Tolerance: max abs diff <= 1e-4 on last_hidden_state (fp32 vs fp32; observed ~1e-6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

from edgecomp.compress import METHODS, Calibration, compress_model
from edgecomp.runtime import open_artifact
from edgecomp.studies.encoder_artifacts import train_view

from shipped import hidden_states, lower_encoder, lower_module_outputs


pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-4
V, H, L, I = 1000, 64, 2, 128  # vocab, hidden, layers, intermediate


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=4, intermediate_size=I)
    return BertModel(cfg).eval()


class WordTokenizer:
    """A stand-in tokenizer (hash of words): calibration only needs ids and masks."""

    def __call__(self, texts, padding=True, truncation=True, max_length=32, return_tensors="pt"):
        ids = [[1] + [hash(w) % (V - 10) + 5 for w in t.split()][: max_length - 2] + [2] for t in texts]
        n = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids]),
                "token_type_ids": torch.zeros(len(ids), n, dtype=torch.long)}


def calibration() -> Calibration:
    words = "the a movie film good bad plot actor story scene long short funny dull".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 20))) for _ in range(24)]
    return Calibration(WordTokenizer(), texts, max_length=32, batch_size=8)


LIN_ATT, LIN_FF = 4 * (H * H + H), 2 * H * I + I + H  # per layer
RECIPES = {
    "lowrank": ([{"method": "lowrank", "rank": 8}], L * (4 * (8 * 2 * H + H) + (8 * (H + I) + I) + (8 * (I + H) + H))),
    "lowrank-aware": ([{"method": "lowrank", "modules": "encoder.layer.*.intermediate.dense", "rank": 8,
                        "activation_aware": True}], L * (LIN_ATT + 8 * (H + I) + I + I * H + H)),
    "lowrank-global": ([{"method": "lowrank", "ratio": 2, "allocation": "global", "activation_aware": True}], None),
    "svd-embedding": ([{"method": "svd-embedding", "latent_dim": 16}], None),
    "ae-embedding": ([{"method": "ae-embedding", "latent_dim": 16, "steps": 20}], None),
    "kron-embedding": ([{"method": "kron-embedding", "d2": 4, "terms": 2}], None),
    "kronecker": ([{"method": "kronecker", "modules": "encoder.layer.*.intermediate.dense", "a_shape": [4, 8],
                    "terms": 3}], L * (LIN_ATT + 3 * (4 * 8 + (I // 4) * (H // 8)) + I + I * H + H)),
    "kronecker-auto": ([{"method": "kronecker", "ratio": 3}], None),
    "ae-weights": ([{"method": "ae-weights", "latent_dim": 8, "steps": 10}], None),
    "ae-weights-decode": ([{"method": "ae-weights", "latent_dim": 8, "steps": 10, "lowering": "decode",
                            "joint": False}], None),
    "prune+smooth+distill": ([{"method": "prune-ffn", "keep": 0.5}, {"method": "smooth"},
                              {"method": "distill", "steps": 5, "quant_aware": True}],
                             L * (LIN_ATT + 2 * H * (I // 2) + I // 2 + H)),
    "combined+distill": ([{"method": "ae-embedding", "latent_dim": 24, "steps": 10},
                          {"method": "lowrank", "ratio": 1.5, "activation_aware": True},
                          {"method": "distill", "steps": 5, "quant_aware": True}], None),
}
# What the quant-aware distill steps train for: the ONNX artifact of each scheme (int8 MatMuls with ORT's
# per-tensor activation ranges, with 4-bit tables or int8 ones)
QUANT = {"prune+smooth+distill": {"weights": {"bits": 8}, "table": {"bits": 4, "block": 32},
                                  "activations": "dynamic-per-tensor"},
         "combined+distill": "dynamic-per-channel"}
DENSE_ENCODER = L * (LIN_ATT + LIN_FF + 4 * H)  # + 2 LayerNorms per layer
EMB_OTHER = 512 * H + 2 * H + 2 * H  # position + token type + LayerNorm
POOLER = H * H + H


@pytest.fixture(scope="module", params=sorted(RECIPES))
def compressed(request, tmp_path_factory):
    steps, _ = RECIPES[request.param]
    model = tiny_bert()
    quant = train_view(QUANT[request.param]) if request.param in QUANT else None
    report = compress_model(model, steps, calibration(), quant=quant)
    path = lower_encoder(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return request.param, model, report, open_artifact(path, threads=1)


@settings(max_examples=4, deadline=None)
@given(batch=st.integers(1, 3), seq=st.integers(1, 17), seed=st.integers(0, 10_000))
def test_onnx_matches_pytorch(compressed, batch, seq, seed):
    _, model, _, runner = compressed
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2 + 1:] = 0  # some padding
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        want = model(**feeds).last_hidden_state.numpy()
    got = hidden_states(runner, feeds)
    assert np.abs(got - want).max() <= ATOL


def test_report_counts_params(compressed):
    name, model, report, _ = compressed
    json.dumps(report)  # JSON-able
    total = sum(p.numel() for p in model.parameters())
    assert report["params_after"] == total
    assert report["bytes_after_fp32"] == 4 * total
    assert report["params_after"] < report["params_before"]
    step = report["steps"][0]
    assert step["modules"] and step["params_after"] < step["params_before"]
    assert 0 < step["fidelity"]["calibration"]["cos_mean"] <= 1.0001
    for module in step["modules"]:  # replacement parameters keep the original module path as prefix
        assert any(n.startswith(module + ".") for n, _ in model.named_parameters())
    expected_encoder = RECIPES[name][1]
    if expected_encoder is not None:
        enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
        assert enc == expected_encoder + L * 4 * H  # + the LayerNorms, untouched


def test_embedding_formulas():
    for steps, table in [([{"method": "svd-embedding", "latent_dim": 16}], V * 16 + 16 * H),
                         ([{"method": "ae-embedding", "latent_dim": 16, "steps": 1}], V * 16 + 16 * H + H),
                         ([{"method": "kron-embedding", "d2": 4, "terms": 2}], V * (H // 4) * 2 + 2 * 4)]:
        model = tiny_bert()
        report = compress_model(model, steps, None)
        assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("embeddings.word_embeddings.")) == table
        assert report["steps"][0]["params_after"] == table
        assert report["steps"][0]["params_before"] == V * H


def test_shared_decoder_is_one_initializer(tmp_path):
    import onnx

    model = tiny_bert()
    compress_model(model, [{"method": "ae-weights", "latent_dim": 8, "steps": 2}], None)
    path = lower_encoder(model, tmp_path / "m.onnx")
    names = [i.name for i in onnx.load(str(path)).graph.initializer if "ae_decoder_t" in i.name]
    assert len(names) == 6  # one per module type, shared by both layers
    # joint: per layer L*m*(l+1) for the latents + (l+1)*n once per module type
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
    per_type = [(H, H)] * 4 + [(I, H), (H, I)]
    expected = sum(L * m * 9 + n * 9 for m, n in per_type) + L * (4 * H + I + H) + L * 4 * H
    assert enc == expected


def test_kronecker_reproduces_exact_kronecker_weight():
    """A weight that *is* a 2-term Kronecker sum is recovered exactly (Van Loan-Pitsianis)."""
    model = tiny_bert()
    lin = model.encoder.layer[0].intermediate.dense  # 128 x 64
    a, b = torch.randn(2, 4, 8), torch.randn(2, 32, 8)
    with torch.no_grad():
        lin.weight.copy_(torch.kron(a[0], b[0]) + torch.kron(a[1], b[1]))
    report = compress_model(model, [{"method": "kronecker", "modules": "encoder.layer.0.intermediate.dense",
                                     "a_shape": [4, 8], "terms": 2}], None)
    assert report["steps"][0]["details"]["per_module"]["encoder.layer.0.intermediate.dense"]["rel_weight_error"] < 1e-5


def test_activation_aware_beats_plain_on_output_error():
    plain, aware = tiny_bert(), tiny_bert()
    cal = calibration()
    step = {"method": "lowrank", "modules": "encoder.layer.0.intermediate.dense", "rank": 4}
    compress_model(plain, [step], cal)
    rep = compress_model(aware, [{**step, "activation_aware": True}], cal)
    info = rep["steps"][0]["details"]["per_module"]["encoder.layer.0.intermediate.dense"]
    # the aware factors minimise the calibration output error: never worse than the weight-SVD ones
    from edgecomp.compress.base import input_covariances

    cov, _ = input_covariances(tiny_bert(), ["encoder.layer.0.intermediate.dense"], cal)["encoder.layer.0.intermediate.dense"]
    w = tiny_bert().encoder.layer[0].intermediate.dense.weight.detach().double()
    dw = w - plain.encoder.layer[0].intermediate.dense.dense_weight().double()
    plain_err = float((torch.trace(dw @ cov @ dw.T) / torch.trace(w @ cov @ w.T)).sqrt())
    assert info["rel_output_error"] <= plain_err + 1e-6


def test_every_method_is_registered():
    assert set(METHODS.names()) >= {"lowrank", "svd-embedding", "ae-embedding", "kron-embedding", "kronecker",
                                    "ae-weights", "distill", "prune-ffn", "smooth", "drop-layers"}


@pytest.mark.parametrize("method", ["svd-embedding", "ae-embedding"])
def test_tied_output_head_stays_tied(method, tmp_path):
    """A masked-LM head tied to the token table keeps using the compressed factors: one table in the
    artifact (no transposed copy from constant folding), logits equal to the dense-equivalent ones."""
    import onnx
    from transformers import BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=I)).eval()
    step = {"method": method, "latent_dim": 16} | ({"steps": 3} if method == "ae-embedding" else {})
    report = compress_model(model, [step], None)
    assert report["steps"][0]["details"]["tied_output_head"] == "cls.predictions.decoder"
    assert report["params_after"] == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        table = model.bert.embeddings.word_embeddings
        h = model.cls.predictions.transform(model.bert(input_ids=ids).last_hidden_state)
        assert torch.allclose(logits, h @ table.dense_weight().T + model.cls.predictions.decoder.bias, atol=1e-4)
    # no task ships masked-LM heads: the model goes through the module exporter and onnxslim of the pipeline
    path = lower_module_outputs(model, {"input_ids": ids}, ["logits"], tmp_path / "mlm.onnx")
    g = onnx.load(str(path)).graph
    big = [i.name for i in g.initializer if V in i.dims and 16 in i.dims]
    assert len(big) == 1 and big[0].endswith("bert.embeddings.word_embeddings.latent")  # (under the wrapper's scope)
    got = open_artifact(path, threads=1).run({"input_ids": ids.numpy()})["logits"]
    assert np.abs(got - logits.numpy()).max() <= ATOL
