"""LoRA-XS slots in the .tflite (edgecomp/adapt/litert.py) on a tiny random BERT: one android export with a trained
adapter, then the LiteRT runner with the adapter active against the adapted PyTorch model, without it against the
base, `edgecomp run --adapter` on the .tflite, the native probe on the slot inputs, one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_adapt import RANK, _fails, _ok, bert_dir, data  # noqa: F401  (module fixtures)

from tiny import ROOT


@pytest.fixture(scope="module")
def android_fast(tmp_path_factory) -> Path:
    """The android target with two seq buckets and only the xnnpack check (the aarch64 guest is slow)."""
    src = (ROOT / "edgecomp" / "data" / "targets" / "android.toml").read_text()
    fast = (src.replace('name = "android"', 'name = "android-fast"')
            .replace('checks = ["arm64", "ort-mobile", "xnnpack"]', 'checks = ["xnnpack"]')
            .replace("seq_buckets = [16, 32, 64, 128]", "seq_buckets = [16, 32]"))
    assert fast.count("android-fast") == 1 and "[16, 32]" in fast and '"arm64"' not in fast
    p = tmp_path_factory.mktemp("targets") / "android-fast.toml"
    p.write_text(fast)
    return p


@pytest.fixture(scope="module")
def adapter(bert_dir, data, one_torch_thread) -> Path:  # noqa: F811
    out = data["dir"] / "sentiment"
    _ok(["adapt", bert_dir, "--data", data["cls"], "--task", "classification", "--rank", RANK, "--steps", 12,
         "--lr", 0.01, "-o", out])
    return out


@pytest.fixture(scope="module")
def export_dir(bert_dir, android_fast, adapter, data) -> Path:  # noqa: F811
    out = data["dir"] / "android"
    _ok(["export", bert_dir, "--target", android_fast, "--no-bench", "--texts", data["texts"], "-o", out,
         "--adapter", adapter])
    return out


@pytest.fixture(scope="module")
def strong(export_dir, adapter, tmp_path_factory):
    """The trained adapter with R scaled up 30x (file + adapter folder): 12 training steps move the model little,
    and the comparison must fail if the .tflite dropped or mis-wired an R."""
    import onnxruntime as ort
    from safetensors.torch import load_file, save_file

    from edgecomp.adapt.onnx import write_onnx_adapter

    d = tmp_path_factory.mktemp("strong")
    fmt = ort.AdapterFormat.read_adapter(str(export_dir / "adapters" / "sentiment.onnx_adapter"))
    params = {k: np.array(v.numpy()) * (30.0 if k.endswith(".lora_r") else 1.0) for k, v in fmt.get_parameters().items()}
    del fmt
    write_onnx_adapter(d / "strong.onnx_adapter", params)
    folder = d / "strong"
    folder.mkdir()
    for f in adapter.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    tensors = load_file(folder / "adapter.safetensors")
    save_file({k: (v * 30.0 if k.endswith(".lora_r") else v).contiguous() for k, v in tensors.items()},
              folder / "adapter.safetensors")
    assert any(k.endswith(".lora_r") for k in tensors)
    return d / "strong.onnx_adapter", folder


def _pooled(out, feeds):
    m = feeds["attention_mask"][..., None].astype(np.float32)
    return (out["last_hidden_state"] * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _texts(unseen_texts):
    return unseen_texts[40:56]  # not the calibration texts; the 32-token bucket truncates the longer ones


def test_tflite_with_the_adapter_is_the_adapted_model(export_dir, bert_dir, strong, unseen_texts):  # noqa: F811
    from edgecomp.runtime import open_artifact

    file, folder = strong
    runner = open_artifact(export_dir / "model.tflite", threads=1)
    assert sorted(runner.input_names) == ["attention_mask", "input_ids", "token_type_ids"]  # the slots are fed inside
    # truncated at the export's max_length (its largest bucket)
    feeds, hidden, logits = _torch_adapted_at(bert_dir, folder, _texts(unseen_texts), 32)
    base = _pooled({"last_hidden_state": _torch_base(bert_dir, feeds)}, feeds)
    ref = _pooled({"last_hidden_state": hidden}, feeds)
    moved = np.linalg.norm(ref - base)  # what the adapter changes; the artifact's error must be a small part of it

    plain = runner.run(feeds)
    assert _cos(_pooled(plain, feeds), base).min() > 0.995  # no adapter: the base model
    assert np.linalg.norm(_pooled(plain, feeds) - base) < 0.1 * moved
    assert plain["adapter_logits"].shape == (len(feeds["input_ids"]), 1) and not plain["adapter_logits"].any()

    runner.activate_adapter(file)
    got = runner.run(feeds)
    assert _cos(_pooled(got, feeds), ref).min() > 0.995  # int8 weights (B^T, A^T too), float R
    assert np.linalg.norm(_pooled(got, feeds) - ref) < 0.1 * moved
    assert got["adapter_logits"].shape == logits.shape == (len(feeds["input_ids"]), 2)  # cropped to its labels
    np.testing.assert_allclose(got["adapter_logits"], logits, atol=0.05 * np.abs(logits).max())
    assert (got["adapter_logits"].argmax(-1) == logits.argmax(-1)).mean() >= 0.9


def _torch_adapted_at(bert_dir, folder, texts, max_length):  # noqa: F811  (a path, not the fixture)
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgecomp.adapt.config import AdaptConfig
    from edgecomp.adapt.modules import attach, load_module_state
    from edgecomp.adapt.store import read_adapter
    from edgecomp.adapt.train import mean_pool

    s = read_adapter(folder)
    model = AutoModel.from_pretrained(bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(bert_dir)
    attach(model, AdaptConfig(method="lora-xs", rank=s.rank, roles=s.roles))
    load_module_state(model, s.module_state())
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
        logits = s.head()(mean_pool(hidden, enc["attention_mask"])).numpy()
    return {k: v.numpy() for k, v in enc.items()}, hidden.numpy(), logits


def _torch_base(bert_dir, feeds):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()


def test_manifest_lists_the_tflite_slots_and_fidelity(export_dir):
    m = json.loads((export_dir / "manifest.json").read_text())
    block = m["adapters"]
    assert "not_carried" not in block
    slots = block["slots"]
    assert slots["artifacts"] == ["model.onnx", "model.ort", "model.tflite"]
    mapping = slots["litert_inputs"]
    assert len(mapping) == slots["modules"] + 2 and mapping["adapter_head.weight"] == "adapter_head_weight"
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=str(export_dir / "model.tflite")).get_signature_list()
    assert sorted(signatures) == ["seq16", "seq32"]
    for s in signatures.values():  # every bucket takes every slot
        assert set(mapping.values()) <= set(s["inputs"]) and "adapter_logits" in s["outputs"]
    tflite = next(r for r in m["artifacts"] if r["path"] == "model.tflite")
    assert tflite["metrics"]["fidelity"]["cos_min"] > 0.995  # zero slots: the base model
    fid = block["adapters"][0]["fidelity"]["model.tflite"]
    assert fid["cos_min"] > 0.995 and fid["label_agreement"] >= 0.9, fid


def test_run_with_an_adapter_on_the_tflite(export_dir, data):  # noqa: F811
    from typer.testing import CliRunner

    from edgecomp.cli import app

    for target in (export_dir / "model.tflite", export_dir):  # the folder's primary is the .tflite
        res = CliRunner().invoke(app, ["run", str(target), "--adapter", "sentiment", "-i", str(data["texts"])])
        assert res.exit_code == 0, res.output
        recs = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
        assert len(recs) == 12 and all(r["label"] in ("long", "short") for r in recs)
        assert all(len(r["probabilities"]) == 2 and abs(sum(r["probabilities"]) - 1) < 1e-4 for r in recs)


def test_native_probe_feeds_zero_slots(export_dir):
    """The probe writes every signature input; with the slots zero its outputs are the runner's."""
    res = subprocess.run([sys.executable, "-m", "edgecomp.bench.native", str(export_dir / "model.tflite"),
                          "--seq-len", "16", "--runs", "2"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    block = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1])
    assert block["signature"] == "seq16" and block["runtime"] == "litert"


def test_wrong_adapters_are_one_line(export_dir, data, tmp_path):  # noqa: F811
    import onnxruntime as ort

    from edgecomp.adapt.onnx import write_onnx_adapter

    fmt = ort.AdapterFormat.read_adapter(str(export_dir / "adapters" / "sentiment.onnx_adapter"))
    params = {k: np.array(v.numpy()) for k, v in fmt.get_parameters().items()}
    del fmt
    r = next(k for k in params if k.endswith(".lora_r"))
    write_onnx_adapter(tmp_path / "rank.onnx_adapter", {**params, r: np.zeros((RANK + 1, RANK + 1), np.float32)})
    write_onnx_adapter(tmp_path / "wide.onnx_adapter", {**params, "adapter_head.weight": np.zeros((64, 20), np.float32),
                                                        "adapter_head.bias": np.zeros(20, np.float32)})
    write_onnx_adapter(tmp_path / "other.onnx_adapter", {**params, "pooler.dense.lora_r": np.zeros((RANK, RANK), np.float32)})
    run = ["run", export_dir / "model.tflite", "-i", data["texts"], "-o", tmp_path / "out.jsonl", "--adapter"]
    _fails([*run, tmp_path / "rank.onnx_adapter"], r, f"[{RANK + 1}, {RANK + 1}]", f"[{RANK}, {RANK}]")
    _fails([*run, tmp_path / "wide.onnx_adapter"], "up to 16 labels", "re-export")
    _fails([*run, tmp_path / "other.onnx_adapter"], "pooler.dense.lora_r", "no slot")
    _fails([*run, data["texts"]], "not an ONNX Runtime adapter file")
    assert not (tmp_path / "out.jsonl").exists()
