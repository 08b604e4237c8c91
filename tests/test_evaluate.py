"""`edgecomp eval` through the CLI: the STS Spearman it records for the PyTorch fp32 model and every artifact
equals a plain computation written here (transformers + mean pooling + scipy; artifact embeddings from
`edgecomp run`, i.e. what an app gets), and bad input is one line, exit 2. The real-MiniLM twin is in
tests/test_e2e_minilm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
STS_DEV = SHARED_DATA / "sts" / "sts-dev.tsv"
N_PAIRS = 120  # a subset of the 1,500 STS dev pairs: enough for a rank correlation, seconds on a tiny model


def edgecomp(*args, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "edgecomp", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def refused(args, *needles) -> str:
    """Refusals in-process (typer's runner: no interpreter start per case); the figures above go through a
    fresh `python -m edgecomp`."""
    from typer.testing import CliRunner

    from edgecomp.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    err = res.output.strip()
    assert res.exit_code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def sts_subset(tmp: Path, n: int = N_PAIRS) -> tuple[Path, list[str], list[str], list[float]]:
    if not STS_DEV.exists():
        pytest.skip(f"shared STS data not found at {STS_DEV}")
    rows = [ln.split("\t") for ln in STS_DEV.read_text(encoding="utf-8").splitlines()[:n]]
    p = tmp / "sts-subset.tsv"
    p.write_text("\n".join("\t".join(r) for r in rows) + "\n", encoding="utf-8")
    return p, [r[5] for r in rows], [r[6] for r in rows], [float(r[4]) for r in rows]


def torch_sts(model_dir: Path, s1: list[str], s2: list[str], gold: list[float], max_length: int) -> float:
    """STS Spearman x100 by hand: transformers, mean pooling over real tokens, L2 norm, scipy."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()

    def embed(texts):
        out = []
        for i in range(0, len(texts), 32):
            enc = tok(texts[i:i + 32], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                h = model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
        return np.concatenate(out)

    a, b = embed(s1), embed(s2)
    return 100 * spearmanr((a * b).sum(-1), gold).statistic


def run_sts(artifact: Path, s1, s2, gold, tmp: Path) -> float:
    """The artifact's embeddings as `edgecomp run` writes them, cosine, scipy."""
    src = tmp / "sentences.txt"
    src.write_text("\n".join(s1 + s2) + "\n", encoding="utf-8")
    dst = tmp / f"{artifact.name}.jsonl"
    res = edgecomp("run", artifact, "--input", src, "--output", dst)
    assert res.returncode == 0, res.stderr
    emb = np.array([json.loads(ln)["embedding"] for ln in dst.read_text().splitlines()])
    a, b = emb[: len(s1)], emb[len(s1):]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return 100 * spearmanr(cos, gold).statistic


def check_sts_figures(export: Path, model_dir: Path, tmp: Path, n: int) -> dict:
    data, s1, s2, gold = sts_subset(tmp, n)
    res = edgecomp("eval", export, "--task", "sts", "--data", data)
    assert res.returncode == 0, res.stderr
    m = json.loads((export / "manifest.json").read_text())
    ev = m["task_eval"]["sts"]
    assert ev["metric"] == "spearman" and ev["n"] == n and ev["data"] == str(data.resolve())
    max_length = min(a["max_length"] for a in m["artifacts"])
    ref = torch_sts(model_dir, s1, s2, gold, max_length)
    assert ev["reference"]["name"] == "pytorch-fp32"
    assert ev["reference"]["value"] == pytest.approx(ref, abs=0.01)
    for a in m["artifacts"]:
        t = a["metrics"]["task"]["sts"]
        mine = run_sts(export / a["path"], s1, s2, gold, tmp)
        assert t["metric"] == "spearman"
        assert t["value"] == pytest.approx(mine, abs=0.02), a["path"]  # `run` rounds embeddings to 7 digits
        assert t["drop"] == pytest.approx(ev["reference"]["value"] - t["value"], abs=1e-3)
    assert "spearman" in res.stdout and "pytorch-fp32" in res.stdout
    return m


@pytest.fixture(scope="module")
def tiny_export(tiny_bert_dir, fast_target, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "tiny"
    res = edgecomp("export", tiny_bert_dir, "--target", fast_target, "-o", out, "--no-bench")
    assert res.returncode == 0, res.stderr
    return out


def test_sts_matches_plain_pytorch_and_scipy(tiny_export, tiny_bert_dir, tmp_path):
    m = check_sts_figures(tiny_export, tiny_bert_dir, tmp_path, N_PAIRS)
    # the manifest is still one `edgecomp run` / `--force` accept: files and hashes untouched
    assert (tiny_export / "manifest.json").name not in m["files"]
    assert all((tiny_export / f).exists() for f in m["files"])


def test_builtin_default_and_retrieval(tiny_export):
    from typer.testing import CliRunner

    from edgecomp.cli import app

    res = CliRunner().invoke(app, ["eval", str(tiny_export)])  # feature-extraction -> sts on the built-in pairs
    assert res.exit_code == 0, res.output
    m = json.loads((tiny_export / "manifest.json").read_text())
    assert m["task_eval"]["sts"]["data"] == "builtin:sts-pairs" and m["task_eval"]["sts"]["n"] >= 40
    res = CliRunner().invoke(app, ["eval", str(tiny_export), "--task", "retrieval"])
    assert res.exit_code == 0, res.output
    m = json.loads((tiny_export / "manifest.json").read_text())
    r = m["task_eval"]["retrieval"]
    assert r["metric"] == "recall@5" and 0 <= r["reference"]["value"] <= 100 and "mrr@5" in r["reference"]
    assert "sts" in m["task_eval"]  # an earlier task's figures stay
    for a in m["artifacts"]:
        assert set(a["metrics"]["task"]) == {"sts", "retrieval"}


def test_classification_accuracy_matches_pytorch_and_run(tmp_path, fast_target):
    """A tiny classifier: the accuracy `eval` records for PyTorch is transformers' argmax by hand, each
    artifact's is `edgecomp run`'s labels against the gold ones; gold labels may be indices or names."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tiny import save_tiny_encoder

    src = save_tiny_encoder("bert", tmp_path / "clf", classifier=True)
    out = tmp_path / "clf-out"
    res = edgecomp("export", src, "--target", fast_target, "-o", out, "--no-bench")
    assert res.returncode == 0, res.stderr
    texts = [ln for ln in (REPO / "edgecomp" / "data" / "sentences.txt").read_text().splitlines() if ln.strip()][:40]
    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        pred = model(**tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")).logits.argmax(-1)
    pred = pred.tolist()
    # gold: the model's own label on 3 of 4 rows, the other label on every 4th, so accuracy is 75% for PyTorch
    gold = [p if i % 4 else 1 - p for i, p in enumerate(pred)]
    names = {0: "LABEL_0", 1: "label_1"}  # id2label names match case-insensitively
    data = tmp_path / "labelled.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{t}\t{names[g] if i % 2 else g}\n" for i, (t, g) in
                                                enumerate(zip(texts, gold))), encoding="utf-8")
    res = edgecomp("eval", out, "--task", "classification", "--data", data)
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "manifest.json").read_text())
    ev = m["task_eval"]["classification"]
    assert ev["metric"] == "accuracy" and ev["n"] == len(texts)
    assert ev["reference"]["value"] == pytest.approx(75.0)
    src_txt = tmp_path / "texts.txt"
    src_txt.write_text("\n".join(texts) + "\n", encoding="utf-8")
    for a in m["artifacts"]:
        dst = tmp_path / f"{a['path']}.jsonl"
        r = edgecomp("run", out / a["path"], "--input", src_txt, "--output", dst)
        assert r.returncode == 0, r.stderr
        got = [int(json.loads(ln)["label"].split("_")[-1]) for ln in dst.read_text().splitlines()]
        want = 100 * np.mean([g == p for g, p in zip(gold, got)])
        t = a["metrics"]["task"]["classification"]
        assert t["value"] == pytest.approx(want), a["path"]
        assert t["drop"] == pytest.approx(75.0 - want, abs=1e-6)
    bad = tmp_path / "bad-labels.tsv"
    bad.write_text("text\tlabel\nsome text\tneutral\n", encoding="utf-8")
    refused(("eval", out, "--task", "classification", "--data", bad), "'neutral'", "LABEL_0")


def test_bad_input_is_one_line(tiny_export, tmp_path):
    refused(("eval", tiny_export, "--data", tmp_path / "nope.tsv"), "does not exist")
    bad = tmp_path / "bad.tsv"
    bad.write_text("one\ttwo\n", encoding="utf-8")
    refused(("eval", tiny_export, "--data", bad), "line 1", "2 tab-separated columns")
    scoreless = tmp_path / "scoreless.tsv"
    scoreless.write_text("a\tb\t1\nc\td\thigh\n", encoding="utf-8")
    refused(("eval", tiny_export, "--data", scoreless), "line 2", "not a number")
    refused(("eval", tiny_export, "--task", "classification"), "does not fit a feature-extraction export")
    refused(("eval", tiny_export, "--task", "perplexity"), "does not fit")
    refused(("eval", tiny_export, "--task", "bleu"), "unknown evaluation task")
    refused(("eval", tmp_path, "--task", "sts"), "manifest.json")


def test_metric_functions():
    from edgecomp.evaluate import metrics

    assert metrics.spearman_x100([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(100)
    assert metrics.accuracy_x100([0, 1, 1], [0, 1, 0]) == pytest.approx(200 / 3)
    assert metrics.perplexity(np.log(4) * 10, 10) == pytest.approx(4)
    q = np.eye(2)
    d = np.array([[0.0, 1.0], [1.0, 0.0], [0.7, 0.7]])
    s = metrics.retrieval_scores(q, d, ["a", "b"], ["x", "y", "z"], {"a": {"y"}, "b": {"z"}}, k=1)
    assert s == {"recall@1": 50.0, "mrr@1": 50.0}
    assert metrics.drop(82.03, 81.77) == pytest.approx(0.26) and metrics.drop(10, 12, higher_is_better=False) == 2
