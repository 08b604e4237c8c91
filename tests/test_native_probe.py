"""The native probe (edgecomp/bench/native/probe.c): built with the system compiler, run on a tiny android
export's .onnx/.ort/.tflite, its outputs equal the Python runners' and PyTorch's, its memory figures are
sane, the export and `edgecomp bench` record them; under qemu (marker arm64) the aarch64 build does the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgecomp import cbuild
from edgecomp.bench import native
from edgecomp.bench.arm64 import SETUP_HINT, env_present
from edgecomp.bench.native import arm64_native_block, build_probe, native_block, read_tensors, write_tensors
from edgecomp.cli import app
from edgecomp.errors import EdgecompError
from tiny import ROOT

runner = CliRunner()
ARTIFACTS = ["model.onnx", "model.ort", "model.tflite"]


@pytest.fixture(scope="module")
def android_fast(tmp_path_factory) -> Path:
    """The android target without the qemu check and with a short benchmark (seconds, not minutes)."""
    src = (ROOT / "edgecomp" / "data" / "targets" / "android.toml").read_text()
    src = (src.replace('checks = ["arm64", "ort-mobile", "xnnpack"]', "checks = []")
           .replace("warmup = 5", "warmup = 1").replace("runs = 30", "runs = 3").replace("threads = [1, 2]", "threads = [1]")
           .replace("seq_len = 128", "seq_len = 16").replace("seq_buckets = [16, 32, 64, 128]", "seq_buckets = [16, 32]"))
    p = tmp_path_factory.mktemp("targets") / "android-fast.toml"
    p.write_text(src.replace('name = "android"', 'name = "android-fast"'))
    return p


@pytest.fixture(scope="module")
def export(tiny_bert_dir, android_fast, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("native") / "out"
    res = runner.invoke(app, ["export", str(tiny_bert_dir), "--target", str(android_fast), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def feeds(tiny_bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    enc = tok(["the probe runs without python", "a second, longer sentence for the batch of one"][:1],
              padding="max_length", max_length=16, truncation=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


@pytest.fixture(scope="module")
def torch_outputs(tiny_bert_dir, feeds):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()


def _cos_min(a, b):
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def test_tensor_file_round_trip(tmp_path):
    t = {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.linspace(0, 1, 5, dtype=np.float32),
         "c": np.array([[7]], dtype=np.int32)}
    write_tensors(tmp_path / "t.bin", t)
    back = read_tensors(tmp_path / "t.bin")
    assert list(back) == list(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and np.array_equal(back[k], t[k])


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_probe_matches_python_runner_and_pytorch(export, feeds, torch_outputs, artifact):
    from edgecomp.runtime import open_artifact

    path = export / artifact
    f = feeds
    signature = None
    if artifact.endswith(".tflite"):
        signature = "seq16"
    block, outputs = native_block(path, f, runs=3, signature=signature)
    python = open_artifact(path, threads=1).run(feeds)["last_hidden_state"]
    got = outputs["last_hidden_state"]
    assert got.shape == python.shape == torch_outputs.shape
    # same runtime, same kernels, same inputs: the probe runs what the runner runs
    assert np.abs(got - python).max() < 1e-4
    # and it is as close to PyTorch as the int8 artifact is (the export's tolerance is cos_min 0.95)
    assert _cos_min(got, torch_outputs) > 0.95

    rss = block["rss_mb"]
    assert block["peak_rss_mb"] >= max(rss.values()) - 0.2 and rss["loaded"] > rss["start"] > 0
    assert rss["first_run"] >= rss["loaded"] - 0.5
    assert block["anon_mb"] > 0 and block["file_mb"] > 0
    assert 0 < block["latency_ms"]["p50"] <= block["latency_ms"]["p90"]
    assert block["load_ms"] > 0 and block["threads"] == 1 and block["seq_len"] == 16
    assert block["runtime"] == ("litert" if artifact.endswith(".tflite") else "onnxruntime")
    # no interpreter: well under what a Python process with the runtime imported pays before loading
    assert block["peak_rss_mb"] < 45


def test_export_records_native_metrics(export):
    manifest = json.loads((export / "manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["model.tflite", "model.onnx", "model.ort"]
    for a in manifest["artifacts"]:
        n = a["metrics"]["native"]
        assert "skipped" not in n, n
        assert a["session_options"] == n["session_options"]
        assert n["parity_vs_python"]["cos_min"] >= native.PARITY_COS_MIN
        # the Python process pays the interpreter on top of the same runtime and model
        assert n["peak_rss_mb"] < a["metrics"]["peak_rss_mb"]
        assert n["seq_len"] == 16
    report = (export / "report.md").read_text()
    assert "## Native memory" in report and "native peak RSS MB" in report


def test_bench_refills_native_metrics(export):
    manifest = json.loads((export / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        a["metrics"].pop("native")
    (export / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["bench", str(export)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((export / "manifest.json").read_text())
    assert all(a["metrics"]["native"]["peak_rss_mb"] > 0 for a in manifest["artifacts"])


def test_ort_bytes_directly_needs_the_buffer_alive(export, feeds):
    """Why session.use_ort_model_bytes_directly crashed from Python: ORT keeps pointers into the model
    bytes, so the buffer must outlive the session; freed right after session creation, the run fails."""
    path = export / "model.ort"
    direct = {"load": "mmap", "session.use_ort_model_bytes_directly": "1",
              "session.use_ort_model_bytes_for_initializers": "1"}
    block, out = native_block(path, feeds, runs=2, options=direct)
    base, ref = native_block(path, feeds, runs=2, options={})
    assert np.array_equal(out["last_hidden_state"], ref["last_hidden_state"])
    assert block["session_options"] == direct
    with pytest.raises(EdgecompError, match="native probe failed"):
        native_block(path, feeds, runs=2, options={**direct, "keep_bytes": "0"})


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_session_options_leave_outputs_unchanged(export, feeds, artifact):
    """The options each format runs with (runtime/options.py) change memory, never outputs: the probe with
    them equals the probe without them, and the Python runner (which applies them too) equals both."""
    from edgecomp.runtime import open_artifact
    from edgecomp.runtime.options import session_options

    path = export / artifact
    f = {k: v.astype(np.int32) for k, v in feeds.items()} if artifact.endswith(".tflite") else feeds
    sig = "seq16" if artifact.endswith(".tflite") else None
    with_opts, a = native_block(path, f, runs=1, options=session_options(path), signature=sig)
    bare = {"weight_cache": "none"} if artifact.endswith(".tflite") else {}
    _, b = native_block(path, f, runs=1, options=bare, signature=sig)
    python = open_artifact(path, threads=1).run(feeds)["last_hidden_state"]
    assert with_opts["session_options"] == session_options(path)
    assert np.array_equal(a["last_hidden_state"], b["last_hidden_state"])
    assert np.abs(a["last_hidden_state"] - python).max() < 1e-4


def test_unknown_option_is_one_line(export, feeds):
    with pytest.raises(EdgecompError, match="does not apply"):
        native_block(export / "model.tflite", {k: v.astype(np.int32) for k, v in feeds.items()}, runs=1,
                     options={"arena": "0"}, signature="seq16")


def test_missing_compiler_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "CACHE", tmp_path)
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: None)
    with pytest.raises(EdgecompError) as e:
        build_probe()
    assert "no C compiler" in e.value.problem and "apt-get install" in e.value.fix
    assert "\n" not in str(e.value)


def test_missing_compiler_skips_instead_of_failing_the_bench(monkeypatch, tmp_path, export, feeds):
    monkeypatch.setattr(native, "CACHE", tmp_path)
    monkeypatch.setattr(cbuild.shutil, "which", lambda name: None)
    block = native.measure_native(export / "model.onnx", {"inputs": list(feeds)}, feeds, {})
    assert "no C compiler" in block["skipped"]


needs_env = pytest.mark.skipif(not env_present(), reason=f"no aarch64 environment: {SETUP_HINT}")


@pytest.mark.arm64
@needs_env
@pytest.mark.parametrize("artifact", ["model.onnx", "model.tflite"])
def test_arm64_probe_guest_memory_and_instructions(export, feeds, torch_outputs, artifact):
    from edgecomp.runtime import open_artifact

    path = export / artifact
    f = {k: v.astype(np.int32) for k, v in feeds.items()} if artifact.endswith(".tflite") else feeds
    block, outputs = arm64_native_block(path, f, runs=2, signature="seq16" if artifact.endswith(".tflite") else None)
    x86 = open_artifact(path, threads=1).run(feeds)["last_hidden_state"]
    got = outputs["last_hidden_state"]
    assert got.shape == x86.shape
    assert _cos_min(got, x86) > 0.98 and _cos_min(got, torch_outputs) > 0.95
    assert block["peak_rss_mb"] >= block["rss_mb"]["loaded"] > block["rss_mb"]["start"] > 0
    assert block["anon_mb"] > 0 and block["file_mb"] > 0
    assert block["instructions_per_inference"] > 0 and block["emulated"] is True
    assert "latency_ms" not in block  # emulated time is not ARM latency


@pytest.mark.arm64
@needs_env
def test_arm64_check_records_native_block(export, feeds):
    """The `arm64` device check (what android exports run) adds `arm64.native` beside the Python guest block."""
    from edgecomp.bench.checks import run_checks

    manifest = json.loads((export / "manifest.json").read_text())
    rec = next(a for a in manifest["artifacts"] if a["path"] == "model.ort")
    run_checks(["arm64"], export / "model.ort", rec, feeds, "cortex-a76")
    n = rec["arm64"]["native"]
    assert rec["arm64"]["parity_ok"] and n["cos_min_vs_x86"] > 0.98
    assert n["session_options"] == rec["session_options"]
    assert 0 < n["peak_rss_mb"] < rec["arm64"]["guest_peak_rss_mb"]  # no interpreter in the guest either
    assert n["instructions_per_inference"] > 0
