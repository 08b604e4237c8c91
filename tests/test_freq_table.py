"""The frequency-aware token table (freq-table, vocab-trim) and the calibrated block weights (GPTQ, HQQ,
k-quant, 2-bit feed-forward) through `edgecomp export` on a tiny random BERT: the artifacts run in ONNX
Runtime and compute what the compressed PyTorch model computes, the manifest records the rows' allocation
and coverage, and what ORT cannot store is refused in one line before any work."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import AutoTokenizer, BertModel
from typer.testing import CliRunner

from edgecomp.cli import app
from edgecomp.compress import Calibration, compress_model
from edgecomp.compress.freq_table import int2_blocks, pack_codes
from edgecomp.compress.layers import FrequencySplitEmbedding
from edgecomp.errors import EdgecompError
from edgecomp.quant import FORMAT_QUANT, parse_scheme
from shipped import hidden_states
from tiny import recipe_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()

FREQ = '{method = "freq-table", frequent = 300, rare_block = 16}'


def export(model_dir, target, out, recipe, texts) -> dict:
    res = runner.invoke(app, ["export", str(model_dir), "--target", str(target), "--recipe", str(recipe), "--texts",
                              str(texts), "-o", str(out), "--no-bench"])
    assert res.exit_code == 0, res.output
    return json.loads((out / "manifest.json").read_text())


def feeds(tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


@pytest.fixture(scope="module")
def freq_export(tiny_bert_dir, fast_target, few_texts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("freq")
    recipe = recipe_file(tmp / "freq.toml", f"steps = [{FREQ}]\ntolerance = {{cos_mean = 0.98}}\n"
                         'tolerance_reason = "the task is the floor"\n[quantization]\nweights = {bits = 4, block = 32}\n')
    out = tmp / "o"
    return out, export(tiny_bert_dir, fast_target, out, recipe, few_texts)


def compressed_like_the_export(model_dir, texts_file, steps):
    """The tiny BERT compressed by the same steps on the same calibration text as the export."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    texts = [t for t in texts_file.read_text().splitlines() if t.strip()]
    compress_model(model, steps, Calibration(tok, texts))
    return tok, model


def test_split_table_runs_in_ort_as_pytorch_decodes_it(freq_export, tiny_bert_dir, few_texts, unseen_texts):
    out, manifest = freq_export
    tok, model = compressed_like_the_export(tiny_bert_dir, few_texts, [{"method": "freq-table", "frequent": 300,
                                                                        "rare_block": 16}])
    table = model.embeddings.word_embeddings
    assert isinstance(table, FrequencySplitEmbedding) and table.n_rare == 1000 - 300
    x = feeds(tok, unseen_texts[16:24])
    rare = np.flatnonzero(table.remap.numpy() >= 300)
    words = x["attention_mask"].astype(bool) & (np.arange(x["input_ids"].shape[1]) % 3 == 1)
    x["input_ids"][words] = rare[np.arange(words.sum()) * 7 % len(rare)]  # the check reaches the 2-bit rows
    with torch.no_grad():
        want = model(**{k: torch.as_tensor(v) for k, v in x.items()}).last_hidden_state.numpy()
    np.testing.assert_allclose(hidden_states(out / "model-fp32.onnx", x), want, atol=1e-4)
    # the 4-bit artifact: only the float frequent rows went to GatherBlockQuantized; the 2-bit rows, their
    # scales and the byte lookup are left as the method wrote them
    g = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("GatherBlockQuantized") >= 1
    inits = {t.name: t for t in g.graph.initializer}
    lut = next(numpy_helper.to_array(t) for n, t in inits.items() if n.endswith("rare_lut"))
    np.testing.assert_array_equal(lut, table.rare_lut.numpy())
    codes = next(numpy_helper.to_array(t) for n, t in inits.items() if n.endswith("rare_codes"))
    np.testing.assert_array_equal(codes, table.rare_codes.numpy())
    cos = np.sum(hidden_states(out / "model.onnx", x) * want, -1) / (
        np.linalg.norm(hidden_states(out / "model.onnx", x), axis=-1) * np.linalg.norm(want, axis=-1))
    assert cos.mean() > 0.99


def test_manifest_records_the_allocation(freq_export):
    _, manifest = freq_export
    step = manifest["compression"]["steps"][0]
    alloc, cov = step["details"]["allocation"], step["details"]["coverage"]
    assert alloc["rows"] == 1000 and alloc["frequent_rows"] == 300 and alloc["rare_rows"] == 700
    assert alloc["rare_bytes"] == 700 * (64 // 4 + 2 * 2 * (64 // 16))  # codes + float16 scale and minimum
    assert cov["corpus"] == "calibration text" and 0 < cov["frequent_rows_cover_corpus"] <= 1
    arts = {a["path"]: a for a in manifest["artifacts"]}
    assert arts["model.onnx"]["scheme"]["table"]["bits"] == 4
    # the recipe's own cosine floor is recorded with its reason on the quantized artifacts only
    assert arts["model.onnx"]["tolerance"] == {"cos_mean": 0.98, "reason": "the task is the floor"}
    assert "tolerance" not in arts["model-fp32.onnx"]


@pytest.mark.parametrize("body, needle", [
    ('tolerance = {cos_mean = 0.97}\n', "without tolerance_reason"),
    ('tolerance = {cos = 0.97}\ntolerance_reason = "x"\n', "unknown tolerance key 'cos'"),
    ('tolerance = {cos_mean = 2}\ntolerance_reason = "x"\n', "not a cosine"),
])
def test_recipe_tolerance_is_strict(tmp_path, body, needle):
    from edgecomp.recipes import read_recipe_file

    with pytest.raises(EdgecompError, match=needle):
        read_recipe_file(recipe_file(tmp_path / "r.toml", "steps = []\n" + body))


def test_int2_rows_decode_as_packed():
    torch.manual_seed(0)
    rows = torch.randn(50, 64)
    q, scale, mn = int2_blocks(rows, 16)
    m = FrequencySplitEmbedding(50, 64, 1, 49, 16)
    m.remap.copy_(torch.arange(50, dtype=torch.int32))
    m.rare_codes.copy_(pack_codes(q[1:]))
    m.rare_scale.copy_(scale[1:])
    m.rare_min.copy_(mn[1:])
    want = (q.double() * scale.double()[..., None] + mn.double()[..., None]).reshape(50, 64)[1:]
    np.testing.assert_allclose(m(torch.arange(1, 50)).detach().numpy(), want.numpy(), atol=1e-6)
    assert torch.nn.functional.cosine_similarity(want.float(), rows[1:]).mean() > 0.85  # 2 bits keep the direction


@pytest.mark.parametrize("rare", ["nearest", "unk"])
def test_vocab_trim_maps_unkept_tokens_to_a_kept_row(tiny_bert_dir, fast_target, few_texts, tmp_path, rare):
    step = {"method": "vocab-trim", "frequent": 300, "rare": rare}
    recipe = recipe_file(tmp_path / "trim.toml", f'steps = [{{method = "vocab-trim", frequent = 300, rare = "{rare}"}}]\n'
                         "[quantization]\nweights = {bits = 4, block = 32}\n")
    manifest = export(tiny_bert_dir, fast_target, tmp_path / "o", recipe, few_texts)
    alloc = manifest["compression"]["steps"][0]["details"]["allocation"]
    assert alloc["rare_rows"] == 700 and alloc["rare_bytes"] == 0
    tok, model = compressed_like_the_export(tiny_bert_dir, few_texts, [step])
    table = model.embeddings.word_embeddings
    remap = table.remap.numpy()
    assert remap.max() < 300 and len(np.unique(remap)) == 300
    rare_tok = next(t for t in range(5, 1000) if list(remap).count(remap[t]) > 1)  # shares its row with a kept token
    twin = next(t for t in range(1000) if t != rare_tok and remap[t] == remap[rare_tok])
    if rare == "unk":
        assert remap[rare_tok] == remap[tok.unk_token_id]
    ids = np.array([[tok.cls_token_id, rare_tok, tok.sep_token_id], [tok.cls_token_id, twin, tok.sep_token_id]])
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    h = hidden_states(tmp_path / "o" / "model-fp32.onnx", x)
    np.testing.assert_allclose(h[0], h[1], atol=1e-5)  # the artifact reads one row for both


def test_freq_table_trim_to_stores_three_tiers(tiny_bert_dir, fast_target, few_texts, tmp_path):
    """frequent rows at the table's bits, the next ones 2-bit, the rest read their nearest stored row; the
    artifact matches the compressed PyTorch model, and the report counts each tier."""
    step = {"method": "freq-table", "frequent": 100, "rare": "int2", "trim_to": 400}
    recipe = recipe_file(tmp_path / "tiers.toml", 'steps = [{method = "freq-table", frequent = 100, rare = "int2", trim_to = 400}]\n'
                         "[quantization]\nweights = {bits = 4, block = 32}\n")
    manifest = export(tiny_bert_dir, fast_target, tmp_path / "o", recipe, few_texts)
    alloc = manifest["compression"]["steps"][0]["details"]["allocation"]
    assert (alloc["frequent_rows"], alloc["rare_rows"], alloc["dropped_rows"]) == (100, 300, 600)
    assert alloc["rare_bytes"] > 0
    tok, model = compressed_like_the_export(tiny_bert_dir, few_texts, [step])
    remap = model.embeddings.word_embeddings.remap.numpy()
    assert remap.max() == 399 and len(np.unique(remap)) == 400  # every stored row is read, no other
    # a dropped token reads the stored row nearest its own fp32 row (cosine), not an arbitrary one
    w = BertModel.from_pretrained(tiny_bert_dir).embeddings.word_embeddings.weight.detach()
    from edgecomp.compress.freq_table import rank_tokens, token_counts

    texts = [t for t in few_texts.read_text().splitlines() if t.strip()]
    order = rank_tokens(token_counts(tok, texts, 1000), list(tok.all_special_ids))
    stored_tok, dropped_tok = np.sort(order[:400]), int(order[-1])
    cos = torch.nn.functional.cosine_similarity(w[dropped_tok][None], w[torch.as_tensor(stored_tok)])
    assert remap[dropped_tok] == remap[stored_tok[int(cos.argmax())]]
    shared = next(t for t in range(5, 1000) if list(remap).count(remap[t]) > 1)
    twin = next(t for t in range(1000) if t != shared and remap[t] == remap[shared])
    ids = np.array([[tok.cls_token_id, shared, tok.sep_token_id], [tok.cls_token_id, twin, tok.sep_token_id]])
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    h = hidden_states(tmp_path / "o" / "model-fp32.onnx", x)
    np.testing.assert_allclose(h[0], h[1], atol=1e-5)
    with torch.no_grad():
        want = model(**{k: torch.as_tensor(v) for k, v in x.items()}).last_hidden_state.numpy()
    np.testing.assert_allclose(h, want, atol=1e-4)


def test_trim_to_needs_int2_rows():
    from edgecomp.compress.freq_table import FrequencyTableConfig

    with pytest.raises(EdgecompError, match="needs rare"):
        FrequencyTableConfig(frequent=10, rare="nearest", trim_to=20)
    with pytest.raises(EdgecompError, match="fewer rows"):
        FrequencyTableConfig(frequent=10, trim_to=5)


@pytest.mark.parametrize("raw, needle", [
    ({"weights": {"bits": 2, "block": 32, "algorithm": "gptq"}}, "writes 4-bit weights"),
    ({"weights": {"bits": 4, "block": 32, "algorithm": "gptq", "grid": "litert"}}, "drop grid"),
    ({"weights": {"bits": 4, "block": 32, "algorithm": "hqq", "symmetric": True}}, "asymmetric"),
    ({"weights": {"bits": 4, "algorithm": "gptq"}}, "blocks only"),
    ({"weights": {"bits": 4, "block": 32, "algorithm": "awq"}}, "algorithm = 'awq' is unknown"),
    ({"weights": {"bits": 3, "block": 32}}, "weights of 3 bits"),
])
def test_algorithm_schemes_are_refused_when_impossible(raw, needle):
    with pytest.raises(EdgecompError, match=needle):
        FORMAT_QUANT["onnx"].check(parse_scheme(raw, "t"))


def test_algorithm_schemes_parse_and_name_themselves():
    s = FORMAT_QUANT["onnx"].check(parse_scheme({"weights": {"bits": 4, "block": 64, "algorithm": "gptq"}}, "t"))
    assert s.weights.algorithm == "gptq" and s.table.rtn and s.table.block == 64  # tables: 4-bit RTN rows
    assert FORMAT_QUANT["onnx"].label(s) == "block-int4-b64-gptq-ort"
    s = FORMAT_QUANT["onnx"].check(parse_scheme({"weights": {"bits": 4, "block": 32}, "ffn": {"bits": 2, "block": 32}}, "t"))
    assert s.ffn.symmetric is False  # 2-bit blocks default to a zero point
    with pytest.raises(EdgecompError, match="rounds its weights to nearest"):
        FORMAT_QUANT["tflite"].check(parse_scheme({"weights": {"bits": 4, "block": 32, "algorithm": "hqq"},
                                                   "activations": "dynamic-per-row"}, "t"))


def test_gptq_artifact_matches_and_differs_from_rtn(tiny_bert_dir, fast_target, few_texts, tmp_path):
    weights = {}
    for algo in ("rtn", "gptq"):
        recipe = recipe_file(tmp_path / f"{algo}.toml", f'steps = []\n[quantization]\nweights = {{bits = 4, block = 32, '
                             f'algorithm = "{algo}"}}\n')
        m = export(tiny_bert_dir, fast_target, tmp_path / algo, recipe, few_texts)
        a = {x["path"]: x for x in m["artifacts"]}["model.onnx"]
        assert a["metrics"]["fidelity"]["cos_mean"] >= 0.99, a["metrics"]  # the export verified it against PyTorch fp32
        g = onnx.load(str(tmp_path / algo / "model.onnx"))
        inits = {t.name: t for t in g.graph.initializer}
        weights[algo] = {n.name.split("_Q4")[0]: numpy_helper.to_array(inits[n.input[1]]) for n in g.graph.node
                         if n.op_type == "MatMulNBits"}
        assert len(weights[algo]) == 12  # every Linear of the 2 blocks
    assert a["quantization"] == "block-int4-b32-gptq-ort"
    assert any(not np.array_equal(weights["gptq"][k], v) for k, v in weights["rtn"].items() if k in weights["gptq"])


def test_two_bit_ffn_only_touches_the_feed_forward(tiny_bert_dir, fast_target, few_texts, tmp_path):
    recipe = recipe_file(tmp_path / "ffn2.toml", 'steps = []\n[quantization]\nweights = {bits = 4, block = 32}\n'
                         'ffn = {bits = 2, block = 32, algorithm = "hqq"}\n')
    m = export(tiny_bert_dir, fast_target, tmp_path / "o", recipe, few_texts)
    a = {x["path"]: x for x in m["artifacts"]}["model.onnx"]
    assert a["quantization"] == "block-int4-b32-ort+ffn-int2-b32-hqq-asym"
    g = onnx.load(str(tmp_path / "o" / "model.onnx"))
    bits = {n.name: next(x.i for x in n.attribute if x.name == "bits") for n in g.graph.node if n.op_type == "MatMulNBits"}
    two = sorted(n for n, b in bits.items() if b == 2)
    assert len(two) == 4 and all("intermediate" in n or "output/dense" in n and "attention" not in n for n in two), two
    assert sum(b == 4 for b in bits.values()) == 8


def test_tiny_recipe_is_valid_for_android():
    from edgecomp.pipeline import recipe_artifacts, recipe_scheme
    from edgecomp.recipes import find_recipe
    from edgecomp.targets import load_target

    recipe = find_recipe("tiny", {}, "all-minilm-l6-v2", "feature-extraction")
    kept, skipped = recipe_artifacts(load_target("android"), recipe)
    assert {a.format for a in kept} == {"onnx", "ort"} and [s["format"] for s in skipped] == ["tflite"]
    assert skipped[0]["reason"]
    schemes = [recipe_scheme(a, recipe).scheme for a in kept]
    assert all(s.weights.bits == 4 for s in schemes)
    assert any(step["method"] in ("freq-table", "vocab-trim") for step in recipe.steps)


def test_wordfreq_corpus_ranks_common_words_first(tiny_bert_dir, few_texts):
    """corpus = "wordfreq:en": general English frequencies rank the rows without a corpus of the domain;
    an unknown language is one line."""
    pytest.importorskip("wordfreq")
    from edgecomp.compress.freq_table import wordfreq_counts

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    vocab = tok.get_vocab()
    counts = wordfreq_counts(tok, "en", len(vocab))
    common = [w for w in ("the", "and", "of", "is") if w in vocab]
    rare = [w for w in ("zebra", "thriller", "flick") if w in vocab]
    assert common and counts[[vocab[w] for w in common]].min() > 0
    if rare:
        assert counts[[vocab[w] for w in common]].min() > counts[[vocab[w] for w in rare]].max()
    # wordfreq's lists hold no punctuation; the characters' own rows still rank above every word
    punct = [c for c in (",", "(", ")", "-", "?", "!") if c in vocab]
    assert punct and counts[[vocab[c] for c in punct]].min() > counts[[vocab[w] for w in common]].max()
    tok_c, model = compressed_like_the_export(tiny_bert_dir, few_texts, [{"method": "vocab-trim", "frequent": 100,
                                                                          "corpus": "wordfreq:en"}])
    remap = model.embeddings.word_embeddings.remap.numpy()
    assert len(np.unique(remap)) == 100 and all(list(remap).count(remap[vocab[w]]) >= 1 for w in common)
    with pytest.raises(EdgecompError, match="no word list"):
        wordfreq_counts(tok, "xx-nonexistent", len(vocab))


def test_recipe_corpus_is_read_beside_the_recipe_file(tiny_bert_dir, few_texts, tmp_path):
    """A recipe file and its domain text travel together: a relative corpus is read from the recipe's folder,
    not the working directory, and the kept rows cover that text."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "domain.txt").write_text("the movie was a thriller\na dull plot, a long scene\n" * 5)
    recipe = folder / "domain-trim.toml"
    recipe.write_text('steps = [{method = "vocab-trim", frequent = 200, rare = "nearest", corpus = "domain.txt"}]\n')
    res = runner.invoke(app, ["compress", str(tiny_bert_dir), "--recipe", str(recipe), "--texts", str(few_texts),
                              "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    (step,) = json.loads((tmp_path / "o" / "compression.json").read_text())["steps"]
    cov = step["details"]["coverage"]
    assert cov["corpus"] == str(folder / "domain.txt") and cov["frequent_rows_cover_corpus"] == 1.0
