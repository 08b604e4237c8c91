"""The export pipeline on a tiny random BERT: manifest contract, verification, `run`, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecomp.cli import app
from edgecomp.manifest import sha256

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_export(tiny_bert_dir, fast_target, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "tiny-x86"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(fast_target), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def torch_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1).numpy()


def test_manifest_contract(tiny_export):
    m = json.loads((tiny_export / "manifest.json").read_text())
    assert m["edgecomp_version"]
    assert {"name", "source", "task", "params"} <= set(m["model"])
    assert m["model"]["task"] == "feature-extraction"
    assert m["target"]["name"] == "cpu-x86-fast"
    assert m["recipe"]["name"] == "none"
    assert [a["path"] for a in m["artifacts"]] == ["model.onnx", "model-fp32.onnx"]  # primary first
    for a in m["artifacts"]:
        p = tiny_export / a["path"]
        data = [tiny_export / d["path"] for d in a.get("external_data", [])]  # what a device stores with it
        assert a["size_bytes"] == sum(f.stat().st_size for f in (p, *data))
        assert a["sha256"] == sha256(p) and all(d["sha256"] == sha256(tiny_export / d["path"]) for d in a.get("external_data", []))
        assert a["format"] == "onnx" and a["runtime"] == "onnxruntime"
        assert a["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert a["outputs"] == ["last_hidden_state", "sentence_embedding"]  # pooling + L2 norm in the graph
        met = a["metrics"]
        assert met["peak_rss_mb"] > 10
        assert met["latency_ms"]["p50"] > 0 and set(met["latency_ms"]["threads"]) == {"1", "2"}
        assert met["fidelity"]["n_texts"] == 240
    fp32 = next(a for a in m["artifacts"] if a["precision"] == "fp32")
    int8 = next(a for a in m["artifacts"] if a["precision"] == "int8")
    assert fp32["metrics"]["fidelity"]["cos_min"] > 0.9999
    assert fp32["metrics"]["fidelity"]["max_abs_diff"] < 1e-3
    assert fp32["metrics"]["fidelity"]["sentence_embedding_max_abs_diff"] < 1e-5
    assert int8["size_bytes"] < 0.5 * fp32["size_bytes"]
    sb = m["size_breakdown"]["model-fp32.onnx"]
    assert sb["token_embeddings"] > 0 and sb["attention"] > 0 and sb["feed_forward"] > 0
    # 1000 x 64 fp32 table = 256,000 bytes
    assert sb["token_embeddings"] == 1000 * 64 * 4
    assert (tiny_export / "report.md").read_text().startswith("# edgecomp export")
    assert not list(tiny_export.parent.glob(".tiny-x86.tmp-*")), "temporary build folder left behind"


def test_int8_onnx_keeps_its_weights_in_a_mapped_data_file(tiny_export):
    """cpu-x86's int8 .onnx (external_data = true): the graph file holds no large initializer, the data file
    holds them, the manifest lists and hashes it, and `edgecomp run` refuses a corrupt data file in one line."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    m = json.loads((tiny_export / "manifest.json").read_text())
    int8 = next(a for a in m["artifacts"] if a["precision"] == "int8")
    fp32 = next(a for a in m["artifacts"] if a["precision"] == "fp32")
    assert [d["path"] for d in int8["external_data"]] == ["model.onnx.data"] and "external_data" not in fp32
    assert "model.onnx.data" in m["files"]
    graph = onnx.load(str(tiny_export / "model.onnx"), load_external_data=False)
    big = [t for t in graph.graph.initializer if t.ByteSize() > 4096 or uses_external_data(t)]
    assert big and all(uses_external_data(t) for t in big)
    assert (tiny_export / "model.onnx").stat().st_size < 0.5 * int8["external_data"][0]["size_bytes"]
    assert int8["metrics"]["native"]["peak_rss_mb"] > 0  # the probe loads it by path, data mapped beside it


def test_corrupt_external_data_is_one_line(tiny_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    data = copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-64] + bytes(64))
    res = CliRunner().invoke(app, ["bench", str(copy)])
    assert res.exit_code == 2 and "model.onnx.data" in res.output and "Traceback" not in res.output, res.output


def test_onnx_loads_with_optimum(tiny_export, tiny_bert_dir, unseen_texts):
    """OUT is also an optimum folder: ORTModelForFeatureExtraction gives PyTorch's hidden states."""
    import torch
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_export)
    enc = tok(unseen_texts[:4], padding=True, return_tensors="pt")
    got = ORTModelForFeatureExtraction.from_pretrained(tiny_export, file_name="model-fp32.onnx")(**enc).last_hidden_state
    with torch.no_grad():
        ref = AutoModel.from_pretrained(tiny_bert_dir).eval()(**enc).last_hidden_state
    assert torch.allclose(torch.as_tensor(got), ref, atol=1e-4)


@pytest.mark.parametrize("artifact", ["", "model.onnx", "model-fp32.onnx"])
def test_run_matches_pytorch_on_unseen_text(tiny_export, tiny_bert_dir, unseen_texts, tmp_path, artifact):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(unseen_texts) + "\n")
    dst = tmp_path / "emb.jsonl"
    res = runner.invoke(app, ["run", str(tiny_export / artifact), "--input", str(src), "--output", str(dst)])
    assert res.exit_code == 0, res.output
    got = np.array([json.loads(ln)["embedding"] for ln in dst.read_text().splitlines()])
    ref = torch_embeddings(tiny_bert_dir, unseen_texts)
    cos = (got * ref).sum(-1)
    assert got.shape == ref.shape
    floor = 0.9999 if artifact == "model-fp32.onnx" else 0.97  # tiny random models quantize worse than MiniLM
    assert cos.mean() > floor


def test_bench_updates_manifest(tiny_export):
    before = json.loads((tiny_export / "manifest.json").read_text())
    res = runner.invoke(app, ["bench", str(tiny_export)])
    assert res.exit_code == 0, res.output
    after = json.loads((tiny_export / "manifest.json").read_text())
    assert [a["sha256"] for a in after["artifacts"]] == [a["sha256"] for a in before["artifacts"]]
    assert after["artifacts"][0]["metrics"]["fidelity"]["cos_mean"] == pytest.approx(
        before["artifacts"][0]["metrics"]["fidelity"]["cos_mean"], abs=1e-5)


@pytest.fixture(scope="module")
def tiny_int4_export(tiny_bert_dir, tmp_path_factory) -> Path:
    """Block-int4 (4-bit embedding table included) as .onnx and as ORT format."""
    d = tmp_path_factory.mktemp("int4")
    t = d / "int4.toml"
    t.write_text(
        'name = "int4"\nopset = 18\n[tolerance]\ncos_mean = 0.9\ncos_min = 0.8\n'
        '[bench]\nbatch = 1\nseq_len = 32\nthreads = [1]\nwarmup = 1\nruns = 3\n'
        '[[artifacts]]\nname = "model"\nformat = "onnx"\n'
        'quantization = {weights = {bits = 4, block = 16}, activations = "dynamic-per-row"}\nprimary = true\n'
        '[[artifacts]]\nname = "model"\nformat = "ort"\n'
        'quantization = {weights = {bits = 4, block = 16}, activations = "dynamic-per-row"}\n')
    out = d / "o"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(t), "-o", str(out), "--no-bench"])
    assert res.exit_code == 0, res.output
    return out


def test_int4_onnx_and_ort_agree(tiny_int4_export, unseen_texts):
    """The ORT format reads no 4-bit tensors, so tables are packed as uint8 (bits=4): .onnx and .ort agree exactly."""
    import onnx
    from transformers import AutoTokenizer

    from edgecomp.runtime import open_artifact

    out = tiny_int4_export
    ops = {n.op_type: n for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {a.name: a.i for a in ops["GatherBlockQuantized"].attribute}["bits"] == 4
    assert {a.name: a.i for a in ops["MatMulNBits"].attribute}["accuracy_level"] == 4
    enc = AutoTokenizer.from_pretrained(out)(unseen_texts[:4], padding="max_length", max_length=16,
                                             truncation=True, return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in enc.items()}
    a = open_artifact(out / "model.onnx", threads=1).run(feeds)
    b = open_artifact(out / "model.ort", threads=1).run(feeds)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bench_compares_exports_side_by_side(tiny_export, tiny_int4_export, tmp_path):
    res = runner.invoke(app, ["bench", str(tiny_export), str(tiny_int4_export), "--summary", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "comparison.json").read_text())["rows"]
    by = {(r["export"], r["artifact"]): r for r in rows}
    base = by[(str(tiny_export), "model.onnx")]
    int4 = by[(str(tiny_int4_export), "model.onnx")]
    assert base["size_ratio"] == 1.0 and int4["size_ratio"] < 1.0  # int4 vs int8, same format
    assert int4["p50_ms_1thr"] > 0 and int4["peak_rss_mb"] > 0
    assert (tmp_path / "comparison.md").read_text().count("| model.onnx |") == 2  # one row per export


# --- bad input: one line naming problem and fix, non-zero exit, no half-written output -------------------


def _fails(args, *needles):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]  # progress lines may precede it
    assert line.startswith("error:") and "Fix:" in line and "\nTraceback" not in line, line
    for n in needles:
        assert n in line, line
    return line


def test_unknown_target(tiny_bert_dir, tmp_path):
    _fails(["export", str(tiny_bert_dir), "--target", "pager", "-o", str(tmp_path / "o")], "unknown target", "android")
    assert not (tmp_path / "o").exists()


def test_unknown_model(tmp_path):
    _fails(["export", "no-such-model", "-o", str(tmp_path / "o")], "unknown model", "all-minilm-l6-v2")


def test_missing_model_dir(tmp_path):
    _fails(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], "does not exist")


def test_dir_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    _fails(["export", str(tmp_path / "m"), "-o", str(tmp_path / "o")], "no config.json")


def test_corrupt_model_dir(tiny_bert_dir, fast_target, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bert_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    _fails(["export", str(bad), "--target", str(fast_target), "-o", str(tmp_path / "o")], "cannot load the model")
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.tmp-*"))


def test_existing_output_needs_force(tiny_bert_dir, fast_target, tmp_path):
    (tmp_path / "o").mkdir()
    _fails(["export", str(tiny_bert_dir), "--target", str(fast_target), "-o", str(tmp_path / "o")], "--force")


def test_unwritable_output(tiny_bert_dir, fast_target, tmp_path):
    (tmp_path / "file").write_text("x")
    _fails(["export", str(tiny_bert_dir), "--target", str(fast_target), "-o", str(tmp_path / "file" / "o")], "cannot write")


def test_unknown_recipe(tiny_bert_dir, tmp_path):
    _fails(["export", "all-minilm-l6-v2", "--recipe", "tiniest", "-o", str(tmp_path / "o")], "no recipe")


def test_missing_runtime(tiny_bert_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ai_edge_litert" else real(n, *a))
    _fails(["export", str(tiny_bert_dir), "--target", "android", "-o", str(tmp_path / "o")], "ai_edge_litert", ".[android]")


def test_corrupt_onnx_to_run_and_bench(tiny_export, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "in.txt").write_text("hello world\n")
    _fails(["run", str(broken), "--input", str(tmp_path / "in.txt")], "model.onnx", "re-run `edgecomp export`")
    _fails(["bench", str(broken)], "sha256", "re-run `edgecomp export`")


def test_empty_text_file(tiny_export, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    _fails(["run", str(tiny_export), "--input", str(tmp_path / "empty.txt")], "is empty")


def test_not_an_export(tmp_path):
    (tmp_path / "in.txt").write_text("hi\n")
    _fails(["run", str(tmp_path), "--input", str(tmp_path / "in.txt")], "manifest.json")


def test_cli_lists_targets_and_models():
    res = runner.invoke(app, ["targets"])
    assert res.exit_code == 0 and "android" in res.output and "cpu-x86" in res.output
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "all-minilm-l6-v2" in res.output


def test_console_script_runs_an_export(tiny_export, tiny_bert_dir, unseen_texts, tmp_path):
    """The installed `edgecomp` entry point (pip install -e .; not `python -m`) is on PATH, prints its
    commands, and runs one: `edgecomp run` on an export gives PyTorch's embeddings."""
    exe = shutil.which("edgecomp")
    assert exe, "no `edgecomp` on PATH: pip install -e ."
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert all(c in out.stdout for c in ("export", "run", "bench", "report"))
    src, dst = tmp_path / "in.txt", tmp_path / "emb.jsonl"
    src.write_text("\n".join(unseen_texts[:4]) + "\n")
    out = subprocess.run([exe, "run", str(tiny_export / "model-fp32.onnx"), "--input", str(src), "--output", str(dst)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = np.array([json.loads(ln)["embedding"] for ln in dst.read_text().splitlines()])
    ref = torch_embeddings(tiny_bert_dir, unseen_texts[:4])
    assert got.shape == ref.shape and (got * ref).sum(-1).min() > 0.9999


def test_classifier_export_and_run_names_labels(tmp_path, fast_target):
    """A local ...ForSequenceClassification folder exports through the same pipeline; `run` prints label names."""
    import torch
    from transformers import BertForSequenceClassification

    from tiny import tiny_bert_config, write_tiny_tokenizer

    d = tmp_path / "clf"
    write_tiny_tokenizer(d)
    torch.manual_seed(0)
    cfg = tiny_bert_config(num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(d)
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(d), "--target", str(fast_target), "-o", str(out), "--no-bench"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["task"] == "text-classification" and m["model"]["id2label"] == {"0": "negative", "1": "positive"}
    fp32 = next(a for a in m["artifacts"] if a["precision"] == "fp32")
    assert fp32["outputs"] == ["logits", "probabilities"]  # softmax in the graph
    (tmp_path / "in.txt").write_text("the film was a delight\na dull and tired script\n")
    res = runner.invoke(app, ["run", str(out / "model-fp32.onnx"), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    recs = [json.loads(ln) for ln in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and {r["label"] for r in recs} <= {"negative", "positive"}
    assert all(abs(sum(r["probs"]) - 1) < 1e-4 for r in recs)


def test_recipe_formats_skip_artifacts_and_move_primary():
    """A recipe that only holds its quality floor in some runtimes ships those, records the rest as skipped."""
    from edgecomp.errors import EdgecompError
    from edgecomp.models import Recipe
    from edgecomp.pipeline import recipe_artifacts
    from edgecomp.targets import load_target

    android = load_target("android")
    kept, skipped = recipe_artifacts(android, Recipe("r", options={"formats": ["onnx", "ort"], "formats_reason": "why"}))
    assert [a.format for a in kept] == ["onnx", "ort"] and [a.primary for a in kept] == [True, False]
    assert skipped == [{"path": "model.tflite", "format": "tflite", "reason": "why"}]
    assert recipe_artifacts(android, Recipe("none")) == (list(android.artifacts), [])
    with pytest.raises(EdgecompError, match="ships only coreml"):
        recipe_artifacts(android, Recipe("r", options={"formats": ["coreml"]}))


def test_recipe_table_scheme_keeps_int8_matmuls():
    """`[quantization] table = {bits = 4, block = 32}`: ONNX/ORT artifacts get 4-bit tables with the target's
    int8 MatMuls; LiteRT, which quantizes tables as the weights, refuses it in one line."""
    from edgecomp.errors import EdgecompError
    from edgecomp.models import Recipe
    from edgecomp.pipeline import recipe_scheme
    from edgecomp.quant import WeightQuant
    from edgecomp.targets import load_target

    recipe = Recipe("r", options={"quantization": {"table": WeightQuant(4, 32)}})
    arts = {a.format: a for a in load_target("android").artifacts}
    got = {f: recipe_scheme(arts[f], recipe) for f in ("onnx", "ort")}
    assert got["onnx"].precision == got["ort"].precision == "int8+int4-tables"
    assert got["onnx"].quantization == "dynamic-per-channel-int4-tables"
    assert got["onnx"].scheme.activations == "dynamic-per-tensor" and not got["onnx"].scheme.batch_invariant
    with pytest.raises(EdgecompError, match="LiteRT quantizes tables as the weights"):
        recipe_scheme(arts["tflite"], recipe)
    with pytest.raises(EdgecompError, match="sub-byte weights ship in blocks only"):
        recipe_scheme(arts["onnx"], Recipe("r", options={"quantization": {"table": WeightQuant(2)}}))
