"""`export --with-tokenizer`: string-input twins of the ONNX Runtime artifacts (the tokenizer as
onnxruntime-extensions ops in the graph). They feed their model the Hugging Face tokenizer's ids, answer as
their token-input twins and PyTorch do, and `edgecomp run` runs them where no tokenizer library imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecomp.cli import app

pytest.importorskip("onnxruntime_extensions")
runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

TARGET = """name = "ort-text"
opset = 18
[tolerance]
cos_mean = 0.9
cos_min = 0.8
[bench]
batch = 1
seq_len = 32
threads = [1]
warmup = 1
runs = 1
[[artifacts]]
name = "model-fp32"
format = "onnx"
runtime = "onnxruntime"
[[artifacts]]
name = "model"
format = "onnx"
runtime = "onnxruntime"
quantization = {weights = {bits = 8}, activations = "dynamic-per-tensor"}
primary = true
[[artifacts]]
name = "model"
format = "ort"
runtime = "onnxruntime"
quantization = {weights = {bits = 8}, activations = "dynamic-per-tensor"}
from = "onnx"
"""
# what a tokenizer graph gets wrong first: case, accents, CJK, punctuation, whitespace runs, truncation
HARD_TEXTS = ["The Café in São Paulo — naïve RÉSUMÉ!", "中文 and 日本語 mixed with latin", "tabs\tand   spaces  ",
              "don't stop-believing... (really?)", "EMOJI 🙂 ok", "word " * 300]


@pytest.fixture(scope="module")
def text_export(tiny_bert_dir, few_texts, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("with-tokenizer")
    (d / "target.toml").write_text(TARGET)
    out = d / "out"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(d / "target.toml"), "-o", str(out),
                              "--no-bench", "--texts", str(few_texts), "--with-tokenizer"])
    assert res.exit_code == 0, res.output
    return out


def test_manifest_lists_the_string_input_twins(text_export):
    import onnxruntime_extensions

    m = json.loads((text_export / "manifest.json").read_text())
    by_path = {a["path"]: a for a in m["artifacts"]}
    assert m["with_tokenizer"]["string_input"] == ["model-fp32-text.onnx", "model-text.onnx", "model-text.ort"]
    assert m["with_tokenizer"]["onnxruntime_extensions"] == onnxruntime_extensions.__version__
    assert {"python", "java_android", "c"} <= set(m["with_tokenizer"]["register_custom_ops"])
    for name in m["with_tokenizer"]["string_input"]:
        a = by_path[name]
        assert a["inputs"] == ["text"] and a["input"] == "text" and not a["primary"]
        assert {"sentence_embedding", "input_ids", "attention_mask"} <= set(a["outputs"])
        assert a["tokenizer"]["op"] == "ai.onnx.contrib.BertTokenizer" and a["tokenizer"]["kind"] == "WordPiece"
        f = a["metrics"]["fidelity"]
        assert f["token_mismatches"] == 0 and f["n_texts"] == 16
        assert a["metrics"]["vs_token_input"]["max_abs_diff"] < 1e-6, name  # same graph, same ids, same batch
        assert f["cos_mean"] == pytest.approx(by_path[a["token_input_twin"]]["metrics"]["fidelity"]["cos_mean"], abs=1e-6)
    config = (text_export / "model-text.required_operators.config").read_text()
    assert "ai.onnx.contrib;1;BertTokenizer" in config and "ai.onnx;16;" in config  # the Loop over the batch
    assert "model-text.onnx" not in m["loads_with"]["sentence-transformers"]  # takes strings: ORT only
    assert set(m["files"]) >= {"model-text.onnx", "model-text.ort", "model-fp32-text.onnx"}


@pytest.mark.parametrize("artifact", ["model-text.ort", "model-fp32-text.onnx"])
def test_token_ids_match_hugging_face_on_shared_text(text_export, artifact):
    """A subset of the shared SST-2 / STS text (scripts/check_tokenizer_graphs.py runs all of it) and texts
    that exercise normalization and truncation: the same ids as AutoTokenizer, the same outputs as the twin."""
    from edgecomp.bench.tokenizer_parity import shared_sentences, token_id_parity

    sets = shared_sentences(SHARED)
    texts = [t for s in sets.values() for t in s[:100]] + HARD_TEXTS
    if not sets:
        pytest.skip(f"shared data not found at {SHARED}")
    m = json.loads((text_export / "manifest.json").read_text())
    rec = next(a for a in m["artifacts"] if a["path"] == artifact)
    res = token_id_parity(text_export / artifact, text_export, texts, rec["max_length"], batch_size=32,
                          twin=text_export / rec["token_input_twin"], twin_texts=len(texts))
    assert res["token_id_mismatches"] == 0, res["mismatch_examples"]
    assert res["vs_token_input"]["max_abs_diff"] < 1e-5


BLOCKED = """
import sys
sys.modules["transformers"] = None  # import fails: the run below cannot reach either library
sys.modules["tokenizers"] = None
from edgecomp.cli import main
sys.argv = ["edgecomp", *sys.argv[1:]]
main()
"""


def test_run_without_tokenizer_libraries(text_export, tiny_bert_dir, tmp_path):
    """`edgecomp run` on a string-input artifact in a process where transformers and tokenizers cannot be
    imported gives the token-input artifact's answers (and PyTorch's, for fp32)."""
    from test_sentence_transformers import torch_sentence_embeddings

    texts = ["the film was a delight", "a dull and tired script", *HARD_TEXTS[:3]]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(artifact: str, blocked: bool) -> np.ndarray:
        dst = tmp_path / f"{artifact}.jsonl"
        cmd = ([sys.executable, "-c", BLOCKED] if blocked else [sys.executable, "-m", "edgecomp"])
        proc = subprocess.run([*cmd, "run", str(text_export / artifact), "--input", str(src), "-o", str(dst)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return np.array([json.loads(ln)["embedding"] for ln in dst.read_text().splitlines()])

    probe = subprocess.run([sys.executable, "-c", BLOCKED.split("from edgecomp")[0] + "import tokenizers"],
                           env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "import of tokenizers halted" in probe.stderr  # the blocker does block
    fp32 = run("model-fp32-text.onnx", blocked=True)
    assert np.abs(fp32 - run("model-fp32.onnx", blocked=False)).max() < 1e-5  # batches differ: float rounding
    assert (fp32 * torch_sentence_embeddings(tiny_bert_dir, texts, "mean")).sum(-1).min() >= 0.9999
    assert np.abs(run("model-text.ort", blocked=True) - run("model.ort", blocked=False)).max() < 1e-5


def test_bench_remeasures_the_twins(text_export):
    """`edgecomp bench OUT` re-verifies the string-input twins (ids, fidelity, parity) and benches the others."""
    res = runner.invoke(app, ["bench", str(text_export)])
    assert res.exit_code == 0, res.output
    m = json.loads((text_export / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a.get("input") == "text":
            assert a["metrics"]["fidelity"]["token_mismatches"] == 0 and a["metrics"]["latency_ms"] is None
        else:
            assert a["metrics"]["latency_ms"]["p50"] > 0


def test_run_refuses_max_length_on_a_string_input_artifact(text_export, tmp_path):
    (tmp_path / "in.txt").write_text("a text\n")
    res = runner.invoke(app, ["run", str(text_export / "model-text.onnx"), "--input", str(tmp_path / "in.txt"),
                              "-o", str(tmp_path / "o.jsonl"), "--max-length", "8"])
    assert res.exit_code == 2 and "tokenizes inside its graph" in res.output


ORT_ONLY = TARGET.split("[[artifacts]]")[0] + """[[artifacts]]
name = "model"
format = "ort"
runtime = "onnxruntime"
quantization = {weights = {bits = 8}, activations = "dynamic-per-tensor"}
primary = true
"""


@pytest.mark.parametrize("family,writer,kind,op", [
    ("roberta", "write_tiny_bpe_tokenizer", "BPE", "RobertaTokenizer"),
    ("xlm-roberta", "write_tiny_unigram_tokenizer", "Unigram", "SentencepieceTokenizer"),
])
def test_bpe_and_sentencepiece_tokenizers(family, writer, kind, op, few_texts, tmp_path):
    """RoBERTa's byte-level BPE and XLM-R's SentencePiece unigram (each family with its own kind of tokenizer):
    an .ort-only target builds the string-input .ort from a scratch .onnx; same ids as AutoTokenizer on shared
    and hard text, same outputs as the token-input .ort."""
    import tiny
    from edgecomp.bench.tokenizer_parity import shared_sentences, token_id_parity

    src = tiny.save_tiny_encoder_with_tokenizer(family, tmp_path / "src", getattr(tiny, writer))
    (tmp_path / "target.toml").write_text(ORT_ONLY)
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(src), "--target", str(tmp_path / "target.toml"), "-o", str(out),
                              "--no-bench", "--texts", str(few_texts), "--with-tokenizer"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert [a["path"] for a in m["artifacts"]] == ["model.ort", "model-text.ort"]
    rec = m["artifacts"][1]
    assert rec["tokenizer"]["kind"] == kind and rec["tokenizer"]["op"] == f"ai.onnx.contrib.{op}"
    assert rec["metrics"]["fidelity"]["token_mismatches"] == 0
    assert f"ai.onnx.contrib;1;{op}" in (out / "model-text.required_operators.config").read_text()
    texts = [t for s in shared_sentences(SHARED).values() for t in s[:50]] + HARD_TEXTS
    got = token_id_parity(out / "model-text.ort", out, texts, rec["max_length"], batch_size=32,
                          twin=out / "model.ort", twin_texts=len(texts))
    assert got["token_id_mismatches"] == 0, got["mismatch_examples"]
    assert got["vs_token_input"]["max_abs_diff"] < 1e-5


def test_refuses_a_tokenizer_it_cannot_build(tiny_bert_dir, tmp_path):
    """A WordPiece tokenizer that does not normalize as BERT does: one line, before any work."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_bert_dir, src)
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "NFC"}
    (src / "tokenizer.json").write_text(json.dumps(tj))
    (tmp_path / "target.toml").write_text(ORT_ONLY)
    res = runner.invoke(app, ["export", str(src), "--target", str(tmp_path / "target.toml"), "-o", str(tmp_path / "o"),
                              "--no-bench", "--with-tokenizer"])
    assert res.exit_code == 2 and "does not normalize and split as BERT does" in res.output
    assert not (tmp_path / "o").exists()
