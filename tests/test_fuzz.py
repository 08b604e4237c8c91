"""Fuzzing what a user hands in (hypothesis): random bytes and truncations of every format edgecomp reads.

For every case: exit 2, one ``error:`` line, no traceback, nothing written, the input untouched.
- artifacts (.onnx, .ort, .tflite) and manifest.json inside an export folder, for ``run`` and ``bench``;
- the same artifacts with the manifest re-stamped to the damaged file's sha256, so the runtime itself meets
  it (in a subprocess: a native crash would be a finding, not a lost test run);
- config.json, tokenizer.json and model.safetensors of a model folder, for ``export``;
- text files in other encodings, for ``run --input`` and ``export --texts``.
Bounded: a few dozen examples per format, no deadline per example; the module takes about two minutes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgecomp.cli import app

from test_safety import tree

cli = CliRunner()
FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def android_target(tmp_path_factory) -> Path:
    """The android target with one short TFLite bucket and no device checks: every format in seconds."""
    from edgecomp.paths import targets_dir

    src = (targets_dir() / "android.toml").read_text()
    src = (src.replace("seq_buckets = [16, 32, 64, 128]", "seq_buckets = [16]")
              .replace('checks = ["arm64", "ort-mobile", "xnnpack"]', "checks = []")
              .replace('name = "android"', 'name = "android-fuzz"'))
    p = tmp_path_factory.mktemp("targets") / "android-fuzz.toml"
    p.write_text(src)
    return p


@pytest.fixture(scope="module")
def export_dir(tiny_bert_dir, android_target, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "export"
    res = cli.invoke(app, ["export", str(tiny_bert_dir), "-t", str(android_target), "-o", str(out), "--no-bench"])
    assert res.exit_code == 0, res.output
    assert {"model.onnx", "model.ort", "model.tflite"} <= set(tree(out))
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("texts") / "in.txt"
    p.write_text("the cat sat on the mat\nhello world\n")
    return p


def one_error_line(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output[-2000:], repr(res.exception))
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # not an uncaught exception
    lines = [ln for ln in res.output.splitlines() if ln.strip() and not ln.lstrip()[:1].isdigit()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Fix:" in lines[0], res.output
    return lines[0]


def damaged(original: bytes, data):
    """Random bytes, a truncation of the real file, or the real file with a few bytes overwritten."""
    kind = data.draw(st.sampled_from(["random", "truncated", "overwritten"]))
    if kind == "random":
        return data.draw(st.binary(max_size=2048))
    if kind == "truncated":
        return original[: data.draw(st.integers(0, len(original) - 1))]
    b = bytearray(original)
    for _ in range(data.draw(st.integers(1, 16))):
        b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    return bytes(b) if bytes(b) != original else original[:-1]


@pytest.fixture
def scratch(tmp_path):
    """A fresh folder per hypothesis example (function-scoped fixtures are shared across examples)."""
    n = [0]

    def make() -> Path:
        n[0] += 1
        d = tmp_path / f"case{n[0]}"
        d.mkdir()
        return d

    return make


@pytest.mark.parametrize("name", ["model.onnx", "model.ort", "model.tflite", "manifest.json"])
@FUZZ
@given(data=st.data())
def test_damaged_export_file(name, data, export_dir, text_file, scratch):
    case = scratch()
    d = shutil.copytree(export_dir, case / "x")
    (d / name).write_bytes(damaged((export_dir / name).read_bytes(), data))
    before = tree(case)
    if name == "manifest.json" and still_a_manifest(d):
        return  # a byte inside a figure changed: still a valid export, nothing to refuse
    target = d / name if name != "manifest.json" else d
    one_error_line(cli.invoke(app, ["run", str(target), "-i", str(text_file), "-o", str(case / "out.jsonl")]))
    assert tree(case) == before
    if name == "manifest.json":
        one_error_line(cli.invoke(app, ["report", str(d)]))
        assert tree(case) == before


def still_a_manifest(d: Path) -> bool:
    from edgecomp.errors import EdgecompError
    from edgecomp.infer import locate

    try:
        locate(d)
        return True
    except EdgecompError:
        return False


@pytest.mark.parametrize("name", ["model.onnx", "model.ort", "model.tflite"])
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_artifact_reaches_the_runtime(name, data, export_dir, text_file, scratch):
    """The manifest re-stamped to the damaged bytes: the runtime's own loader and run meet them. A damaged
    file may still be a valid model (overwritten weights), then it runs; it never crashes or prints a traceback."""
    case = scratch()
    d = shutil.copytree(export_dir, case / "x")
    blob = damaged((export_dir / name).read_bytes(), data)
    (d / name).write_bytes(blob)
    m = json.loads((d / "manifest.json").read_text())
    for rec in m["artifacts"]:
        if rec["path"] == name:
            rec["sha256"], rec["size_bytes"] = hashlib.sha256(blob).hexdigest(), len(blob)
    (d / "manifest.json").write_text(json.dumps(m))
    before = tree(case)
    res = subprocess.run([sys.executable, "-m", "edgecomp", "run", str(d / name), "-i", str(text_file), "-o",
                          str(case / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert res.returncode in (0, 2), (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr
    if res.returncode == 2:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "Fix:" in errors[0], res.stderr
        assert tree(case) == before
    else:
        assert len((case / "out.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
@FUZZ
@given(data=st.data())
def test_damaged_model_folder(name, data, tiny_bert_dir, android_target, scratch):
    case = scratch()
    model = shutil.copytree(tiny_bert_dir, case / "model")
    blob = damaged((tiny_bert_dir / name).read_bytes(), data)
    if name == "model.safetensors" and len(blob) == (tiny_bert_dir / name).stat().st_size:
        blob = blob[:-1]  # same length with other weights is a valid model, not a damaged file
    if name == "config.json":
        try:  # still a valid config (a byte inside a number changed): not a damaged file either
            if json.loads(blob).get("model_type") == "bert":
                blob = blob[: len(blob) // 2]
        except Exception:
            pass
    (model / name).write_bytes(blob)
    before = tree(case)
    res = cli.invoke(app, ["export", str(model), "-t", str(android_target), "-o", str(case / "out"), "--no-bench"])
    if name == "tokenizer.json" and res.exit_code == 0:
        return  # transformers fell back to vocab.txt: a valid export of the same model
    one_error_line(res)
    assert tree(case) == before


ENCODINGS = ["utf-16", "utf-32", "latin-1", "cp1252"]


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.text(alphabet=st.characters(min_codepoint=0xC0, max_codepoint=0xFF), min_size=1, max_size=40))
def test_text_in_another_encoding(encoding, text, export_dir, tiny_bert_dir, android_target, scratch):
    case = scratch()
    blob = f"caf\u00e9 {text}\nline two\n".encode(encoding)  # "é " (or a BOM) is never UTF-8
    with pytest.raises(UnicodeDecodeError):
        blob.decode("utf-8")
    (case / "in.txt").write_bytes(blob)
    before = tree(case)
    line = one_error_line(cli.invoke(app, ["run", str(export_dir), "-i", str(case / "in.txt"), "-o", str(case / "o.jsonl")]))
    assert "not UTF-8" in line or "NUL bytes" in line
    line = one_error_line(cli.invoke(app, ["export", str(tiny_bert_dir), "-t", str(android_target), "--texts",
                                           str(case / "in.txt"), "-o", str(case / "out")]))
    assert tree(case) == before
