"""Every decoder family through the CLI, as a user brings it (a ``save_pretrained`` folder): ``edgecomp export DIR
--target T`` verifies against PyTorch, ``edgecomp run --generate / --perplexity`` reproduces PyTorch's greedy
tokens and NLL, android gets .onnx + .ort and a .tflite where litert-torch can re-author the family (else a
skip recorded before any work), and ``edgecomp bench`` / ``report`` work on the export from another folder.

Tiny random-init models (hidden 64, 2 layers, 1,000-word vocab). Each export is built once per module and
shared by the assertions. The default set (every family on cpu-x86, android for a skipped and a converted
.tflite, arm64 once) fits in ~4 minutes on 2 shared cores; the rest of family x target is marked ``slow``
(``pytest -m slow tests/test_decoders.py``): each android .tflite conversion alone is 35-90 s there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgecomp.cli import app
from tiny_decoders import CONFIGS, write_tiny_decoder

runner = CliRunner()
FAMILIES = list(CONFIGS)  # gpt2, llama (untied head), llama-tied, qwen2, mistral, phi3, gemma
TARGETS = ("cpu-x86", "arm64", "android")
# litert-torch re-authors these from their config; GPT-2 (learned position embeddings) it cannot
TFLITE_FAMILIES = {"llama", "llama-tied", "qwen2", "mistral", "phi3", "gemma"}
FAST = {("cpu-x86", f) for f in FAMILIES} | {("android", "gpt2"), ("android", "llama"), ("arm64", "qwen2")}
MATRIX = [pytest.param(t, f, id=f"{f}-{t}", marks=() if (t, f) in FAST else pytest.mark.slow)
          for t in TARGETS for f in FAMILIES]
# verification and `run` input: two lines of the built-in sentences' words (the tokenizer's vocabulary)
TEXTS = ["the model runs on the phone and the answer is short .",
         "a small model can still write a long sentence about the weather today"]
N_NEW = 12


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("decoders")
    (d / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    return d


@pytest.fixture(scope="module")
def exports(workdir):
    """(target, family) -> (export folder, CLI output, the PyTorch model); each built once, on first use."""
    built = {}

    def get(target: str, family: str):
        if (target, family) not in built:
            src = workdir / f"src-{family}"
            if not src.exists():
                write_tiny_decoder(family, src)
            out = workdir / f"out-{family}-{target}"
            res = runner.invoke(app, ["export", str(src), "--target", target, "-o", str(out), "--no-bench",
                                      "--texts", str(workdir / "texts.txt")])
            assert res.exit_code == 0, res.output
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True).eval()
            built[(target, family)] = (out, res.output, model)
        return built[(target, family)]

    return get


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _prompt_ids(out: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(out / "tokenizer.json")).encode(text, add_special_tokens=False).ids


def _run(out: Path, artifact: str, workdir: Path, *flags) -> list[dict]:
    dst = workdir / f"run-{out.name}-{artifact}-{'-'.join(flags)}.jsonl"
    res = runner.invoke(app, ["run", str(out / artifact), "--input", str(workdir / "texts.txt"), "-o", str(dst), *flags])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in dst.read_text().splitlines()]


def _is_fp32(rec: dict) -> bool:
    return rec["precision"] == "fp32"


@pytest.mark.parametrize("target,family", MATRIX)
def test_export_has_the_targets_artifacts_and_verifies(exports, target, family):
    out, log, _ = exports(target, family)
    m = _manifest(out)
    assert m["model"]["task"] == "text-generation"  # GPT2LMHeadModel too, not a feature extractor
    formats = sorted(a["format"] for a in m["artifacts"])
    skipped = {s["format"]: s["reason"] for s in m.get("skipped_artifacts", [])}
    if target == "android":
        if family in TFLITE_FAMILIES:
            assert formats == ["onnx", "ort", "tflite"] and not skipped
        else:  # decided from config.json before anything was lowered, and said why
            assert formats == ["onnx", "ort"] and "position embeddings" in skipped["tflite"]
            assert log.index("skip: model.tflite") < log.index("lower:")
    else:
        assert formats == (["onnx", "onnx"] if target == "cpu-x86" else ["onnx"]) and not skipped
    assert sum(a["primary"] for a in m["artifacts"]) == 1
    for a in m["artifacts"]:
        f = a["metrics"]["fidelity"]
        assert f["tokens_scored"] > 10
        if _is_fp32(a):  # the same weights: every greedy token and the perplexity equal PyTorch's
            assert f["greedy_match_min"] == f["max_new_tokens"]
            assert f["nll_ratio"] == pytest.approx(1.0, abs=1e-4)
        else:  # int8 weights: perplexity within 2% of PyTorch's
            assert f["nll_ratio"] == pytest.approx(1.0, abs=0.02)
        assert a["metrics"]["latency_ms"] is None  # --no-bench


def _torch_steps(model, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """PyTorch's logits for each generated position, given the artifact's own tokens before it."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + tokens])).logits[0].numpy()
    return logits[len(prompt) - 1: len(prompt) - 1 + len(tokens)]


@pytest.mark.parametrize("target,family", MATRIX)
def test_run_generate_gives_pytorchs_greedy_tokens(exports, workdir, target, family):
    """fp32 artifacts: exactly PyTorch's greedy tokens. Quantized ones: every token is PyTorch's argmax given the
    same prefix, or within 5% of PyTorch's logit range of it (int8 weights and activations move these logits by
    up to ~3% of that range: a near tie can flip, a token PyTorch ranks low cannot)."""
    from edgecomp.llm.generate import torch_greedy

    out, _, model = exports(target, family)
    for a in _manifest(out)["artifacts"]:
        recs = _run(out, a["path"], workdir, "--generate", str(N_NEW))
        for text, r in zip(TEXTS, recs):
            prompt = _prompt_ids(out, text)
            got = r["tokens"]
            assert len(got) == N_NEW and r["tokens_per_s"] > 0
            if _is_fp32(a):
                assert got == torch_greedy(model, prompt, N_NEW), a["path"]
                continue
            steps = _torch_steps(model, prompt, got)
            span = steps.max(-1) - steps.min(-1)
            gap = steps.max(-1) - steps[np.arange(N_NEW), got]
            assert (gap <= 0.05 * span).all(), (a["path"], gap / span)
            assert (gap == 0).mean() >= 0.5, a["path"]  # mostly PyTorch's very argmax


@pytest.mark.parametrize("target,family", MATRIX)
def test_run_perplexity_matches_pytorch(exports, workdir, target, family):
    from edgecomp.llm.generate import torch_nll

    out, _, model = exports(target, family)
    for a in _manifest(out)["artifacts"]:
        for text, r in zip(TEXTS, _run(out, a["path"], workdir, "--perplexity")):
            ids = _prompt_ids(out, text)
            assert r["tokens_scored"] == len(ids) - 1
            assert r["perplexity"] == pytest.approx(math.exp(r["nll"] / r["tokens_scored"]), rel=1e-3)
            assert r["nll"] == pytest.approx(torch_nll(model, ids), rel=1e-4 if _is_fp32(a) else 2e-2), a["path"]


def test_eval_perplexity_matches_pytorch(exports, workdir):
    """`edgecomp eval --task perplexity`: PyTorch's figure is exp(sum of its NLL / tokens) over the artifact's own
    tokenization, each artifact's is what `run --perplexity` gives line by line, pooled."""
    from edgecomp.llm.generate import torch_nll

    out, _, model = exports("cpu-x86", "llama")
    res = runner.invoke(app, ["eval", str(out), "--task", "perplexity", "--data", str(workdir / "texts.txt")])
    assert res.exit_code == 0, res.output
    m = _manifest(out)
    ev = m["task_eval"]["perplexity"]
    ids = [_prompt_ids(out, t) for t in TEXTS]
    tokens = sum(len(i) - 1 for i in ids)
    assert ev["higher_is_better"] is False and ev["n"] == len(TEXTS)
    assert ev["reference"]["value"] == pytest.approx(math.exp(sum(torch_nll(model, i) for i in ids) / tokens), rel=1e-4)
    for a in m["artifacts"]:
        recs = _run(out, a["path"], workdir, "--perplexity")
        want = math.exp(sum(r["nll"] for r in recs) / sum(r["tokens_scored"] for r in recs))
        t = a["metrics"]["task"]["perplexity"]
        assert t["value"] == pytest.approx(want, rel=1e-3) and t["tokens"] == tokens, a["path"]
        assert t["drop"] == pytest.approx(t["value"] - ev["reference"]["value"], rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("target,family", [("cpu-x86", "gpt2"), ("android", "llama")])
def test_bench_and_report_from_another_folder(exports, tmp_path, monkeypatch, target, family):
    """`edgecomp bench OUT` on an LLM export: decode-step latency, tokens/s, fresh-process RSS and the fidelity
    check for every artifact (.onnx, .ort, .tflite), run from a folder that is not the export's."""
    out, _, _ = exports(target, family)
    before = _manifest(out)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["bench", str(out)])
    assert res.exit_code == 0, res.output
    m = _manifest(out)
    assert [a["path"] for a in m["artifacts"]] == [a["path"] for a in before["artifacts"]]
    for a, b in zip(m["artifacts"], before["artifacts"]):
        met = a["metrics"]
        lat = met["latency_ms"]
        assert set(lat["threads"]) == {"1", "2"} and lat["measures"].startswith("decode step")
        assert lat["tokens_per_s"] == pytest.approx(1e3 / lat["p50"], rel=0.01)
        assert met["peak_rss_mb"] > 10  # a process with the runtime and the weights loaded
        # re-verified on the built-in sentences: the fp32 artifacts still decode exactly like PyTorch
        assert met["fidelity"]["nll_ratio"] == pytest.approx(1.0, abs=1e-4 if _is_fp32(a) else 0.02)
        assert met["fidelity"]["n_texts"] != b["metrics"]["fidelity"]["n_texts"]  # measured again, other texts
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    assert "## Text generation" in report
    for a in m["artifacts"]:
        assert f"`{a['path']}` | {a['metrics']['fidelity']['greedy_match']}" in report
    assert "decode step" in report


def test_bench_target_on_an_llm_export_is_one_line(exports):
    out, _, _ = exports("android", "gpt2")
    res = runner.invoke(app, ["bench", str(out), "--target", "cpu-x86"])
    assert res.exit_code == 2 and "measured for its own target" in res.output


@pytest.mark.parametrize("archs,task", [
    (["GPT2LMHeadModel"], "text-generation"), (["Qwen2ForCausalLM"], "text-generation"),
    (["MyOwnLMHeadModel"], "text-generation"),  # unknown to transformers: the class-name ending decides
    (["BertForSequenceClassification"], "text-classification"),
    (["BertModel"], "feature-extraction"), (["BertForMaskedLM"], "feature-extraction"), ([], "feature-extraction")])
def test_task_from_the_model_class(archs, task):
    from edgecomp.models import task_for_architectures

    assert task_for_architectures(archs) == task


@pytest.mark.parametrize("hf,words", [
    ({"model_type": "gpt2"}, "position embeddings"),
    ({"model_type": "falcon"}, "no litert-torch mapping for model_type 'falcon'"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "'llama3' rotary scaling"),
    ({"model_type": "mistral", "sliding_window": 512}, "sliding-window attention (512 tokens)"),
])
def test_tflite_refusals_are_decided_from_the_config(hf, words):
    from edgecomp.llm.tflite import tflite_unsupported

    assert words in tflite_unsupported(hf, 1024)
    assert tflite_unsupported({"model_type": "llama"}, 1024) is None
    assert tflite_unsupported({"model_type": "mistral", "sliding_window": 4096}, 1024) is None
