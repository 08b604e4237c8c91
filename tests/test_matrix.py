"""Every encoder family x target x generic recipe, as a user brings a model (a ``save_pretrained`` folder),
all through the CLI: ``edgecomp export DIR --target T --recipe R`` verifies every artifact against PyTorch
(or refuses in one line where the recipe's method does not apply to the family), ``edgecomp run`` on each
artifact matches PyTorch, and ``edgecomp bench`` / ``report`` work on the export from another folder.

Targets are the shipped cpu-x86 / arm64 / android with a short benchmark and a tolerance a random-init tiny
model holds at int4 (this test asserts its own floors on `run`'s outputs); arm64 without the qemu check.
The default set covers every family, every target and every recipe (base and classifier); the rest of the
matrix is ``slow`` (``pytest -m slow tests/test_matrix.py``). The decoder families have their own matrix in
tests/test_decoders.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecomp.cli import app
from tiny import TINY_ENCODERS, save_tiny_encoder

runner = CliRunner()
FAMILIES = sorted(TINY_ENCODERS)
TARGETS = ("cpu-x86", "arm64", "android")
RECIPES = ("none", "int4", "small", "fast")
ROOT = Path(__file__).resolve().parent.parent


# The default set: each family once, every target three times, every recipe at least twice (one of them the
# one-line refusal), classifiers and base models both.
DEFAULT = {
    ("albert", False, "cpu-x86", "fast"), ("bert", True, "android", "fast"), ("deberta-v2", False, "arm64", "small"),
    ("distilbert", False, "android", "int4"), ("electra", True, "cpu-x86", "small"),
    ("modernbert", False, "arm64", "fast"), ("mpnet", True, "android", "none"), ("roberta", False, "cpu-x86", "int4"),
    ("xlm-roberta", True, "arm64", "none"),
}
MATRIX = [pytest.param(f, c, t, r, id=f"{f}{'-clf' if c else ''}-{t}-{r}",
                       marks=() if (f, c, t, r) in DEFAULT else pytest.mark.slow)
          for f in FAMILIES for c in (False, True) for t in TARGETS for r in RECIPES]
TEXTS = ["the model runs on the phone and the answer is short .",
         "a small model can still write a long sentence about the weather today",
         "it was a good film", "the weather is bad"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, one_torch_thread) -> Path:
    d = tmp_path_factory.mktemp("matrix")
    (d / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    # calibration / distillation text: the built-in sentences (the tiny tokenizer's vocabulary)
    from edgecomp.texts import default_texts

    (d / "calib.txt").write_text("\n".join(default_texts()[:48]) + "\n")
    return d


@pytest.fixture(scope="module")
def targets(workdir) -> dict[str, Path]:
    out = {}
    for name in TARGETS:
        src = (ROOT / "edgecomp" / "data" / "targets" / f"{name}.toml").read_text()
        src = (src.replace("warmup = 5", "warmup = 1").replace("runs = 30", "runs = 3")
               .replace("cos_mean = 0.99", "cos_mean = 0.5").replace("cos_min = 0.95", "cos_min = 0.3"))
        p = workdir / f"{name}.toml"
        p.write_text(src)
        out[name] = p
    return out


@pytest.fixture(autouse=True)
def no_qemu(monkeypatch, tmp_path):
    """The arm64 check records that the emulation environment is absent instead of running qemu."""
    from edgecomp.bench import arm64

    monkeypatch.setattr(arm64, "ARM64_ENV", tmp_path / "no-arm64-env")


def _model(family: str, classifier: bool, workdir: Path) -> Path:
    d = workdir / f"src-{family}{'-clf' if classifier else ''}"
    if not d.exists():
        save_tiny_encoder(family, d, classifier)
    return d


def _torch_outputs(model_dir: Path, classifier: bool, texts: list[str]) -> np.ndarray:
    """PyTorch's answer: class probabilities, or mean-pooled L2-normalized embeddings."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    auto = AutoModelForSequenceClassification if classifier else AutoModel
    model = auto.from_pretrained(model_dir, attn_implementation="eager").eval()
    rows = []
    for t in texts:  # one text at a time: the artifacts of per-tensor activation schemes run so too
        enc = tok([t], truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        if classifier:
            rows.append(torch.softmax(out.logits, -1)[0].numpy())
        else:
            h, m = out.last_hidden_state, enc["attention_mask"][..., None].float()
            rows.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)[0].numpy())
    return np.stack(rows)


# A method that needs per-block training cannot train ALBERT's one shared block per layer: one-line refusal.
REFUSES = {("albert", "small"): "does not support the 'albert' architecture",
           ("albert", "fast"): "does not support the 'albert' architecture"}


@pytest.mark.parametrize("family,classifier,target,recipe", MATRIX)
def test_export_run_bench_report(family, classifier, target, recipe, workdir, targets, tmp_path, monkeypatch):
    src = _model(family, classifier, workdir)
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(src), "--target", str(targets[target]), "--recipe", recipe,
                              "-o", str(out), "--no-bench", "--texts", str(workdir / "calib.txt")])
    if (family, recipe) in REFUSES:
        assert res.exit_code == 2, res.output
        line = res.output.strip().splitlines()[-1]
        assert REFUSES[family, recipe] in line and "it supports:" in line
        assert not out.exists()  # nothing half-written
        return
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["task"] == ("text-classification" if classifier else "feature-extraction")
    assert m["recipe"]["name"] == recipe
    formats = sorted(a["format"] for a in m["artifacts"])
    skipped = {s["format"] for s in m.get("skipped_artifacts", [])}
    if target == "android":  # small / fast ship ONNX Runtime only, and say why the .tflite is not there
        assert formats == (["onnx", "ort"] if recipe in ("small", "fast") else ["onnx", "ort", "tflite"])
        assert skipped == ({"tflite"} if recipe in ("small", "fast") else set())
    for a in m["artifacts"]:  # every artifact was verified against the uncompressed PyTorch model
        f = a["metrics"]["fidelity"]
        assert f and f["n_texts"] > 0
        # the post-processing is in every format's graph; `run` below reads it, so it is compared with PyTorch
        assert ("probabilities" if classifier else "sentence_embedding") in a["outputs"], a["path"]
        if recipe in ("int4", "small") and a["precision"] != "fp32":
            assert a["precision"] == "int4"

    ref = _torch_outputs(src, classifier, TEXTS)
    for a in m["artifacts"]:
        dst = tmp_path / f"run-{a['path']}.jsonl"
        res = runner.invoke(app, ["run", str(out / a["path"]), "--input", str(workdir / "texts.txt"), "-o", str(dst),
                                  "--batch-size", "2"])
        assert res.exit_code == 0, res.output
        recs = [json.loads(ln) for ln in dst.read_text().splitlines()]
        assert [r["index"] for r in recs] == list(range(len(TEXTS)))
        exact = a["precision"] == "fp32" and recipe in ("none", "int4")
        if classifier:
            got = np.array([r["probs"] for r in recs])
            assert got.shape == ref.shape
            # quantized / distilled classifiers: probabilities within 0.1 (random-init heads sit near 0.5)
            assert np.abs(got - ref).max() < (1e-3 if exact else 0.1)
        else:
            got = np.array([r["embedding"] for r in recs])
            assert got.shape == ref.shape
            cos = (got * ref).sum(-1)
            assert cos.min() > (0.9999 if exact else 0.8)

    before = {a["path"]: a["sha256"] for a in m["artifacts"]}
    monkeypatch.chdir(workdir)  # not the export's folder, nor its parent
    res = runner.invoke(app, ["bench", str(out)])
    assert res.exit_code == 0, res.output
    after = json.loads((out / "manifest.json").read_text())
    assert {a["path"]: a["sha256"] for a in after["artifacts"]} == before
    for a in after["artifacts"]:
        assert a["metrics"]["latency_ms"]["p50"] > 0
    (out / "report.md").unlink()
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.md").exists() and recipe in (out / "report.md").read_text()
