"""An export folder is a sentence-transformers model (ONNX backend): it loads and gives the PyTorch model's
normalized embeddings; the graph pools as the model's Pooling config says. (Optimum's ORTModel* loading the
same folder: tests/test_pipeline.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgecomp.cli import app

st = pytest.importorskip("sentence_transformers")
runner = CliRunner()


def _export(src: Path, target: Path, out: Path, texts: Path) -> dict:
    res = runner.invoke(app, ["export", str(src), "--target", str(target), "-o", str(out), "--no-bench",
                              "--texts", str(texts)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "manifest.json").read_text())


def torch_sentence_embeddings(model_dir: Path, texts: list[str], pooling: str) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    if pooling == "cls":
        e = h[:, 0]
    else:
        m = enc["attention_mask"][..., None].float()
        e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1).numpy()


@pytest.fixture(scope="module")
def exports(tiny_bert_dir, fast_target, few_texts, tmp_path_factory) -> dict:
    """The tiny BERT as it is (mean pooling) and as a sentence-transformers folder that pools the CLS token."""
    root = tmp_path_factory.mktemp("st")
    cls_src = root / "cls-src"
    shutil.copytree(tiny_bert_dir, cls_src)
    (cls_src / "1_Pooling").mkdir()
    (cls_src / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    return {pooling: (src, root / pooling, _export(src, fast_target, root / pooling, few_texts))
            for pooling, src in (("mean", tiny_bert_dir), ("cls", cls_src))}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("artifact", ["model-fp32.onnx", "model.onnx"])
def test_sentence_transformers_onnx_backend_matches_pytorch(exports, unseen_texts, pooling, artifact):
    src, out, manifest = exports[pooling]
    record = next(a for a in manifest["artifacts"] if a["path"] == artifact)
    kwargs = {} if artifact == "model.onnx" else {"model_kwargs": {"file_name": artifact}}
    assert manifest["loads_with"]["sentence-transformers"][artifact] == (
        'SentenceTransformer(OUT, backend="onnx"'
        + ("" if not kwargs else f', model_kwargs={{"file_name": "{artifact}"}}') + ")")
    model = st.SentenceTransformer(str(out), backend="onnx", device="cpu", **kwargs)
    got = model.encode(unseen_texts, normalize_embeddings=False, batch_size=8)
    assert np.allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)  # the folder's Normalize module
    cos = (got * torch_sentence_embeddings(src, unseen_texts, pooling)).sum(-1)
    if record["precision"] == "fp32":
        assert cos.min() >= 0.9999
    else:  # int8: the fidelity its export measured (other texts and batches: a little slack)
        fid = record["metrics"]["fidelity"]
        assert cos.mean() >= fid["cos_mean"] - 0.01 and cos.min() >= min(fid["cos_min"] - 0.02, 0.95)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_graph_sentence_embedding_follows_the_pooling_config(exports, unseen_texts, pooling):
    """The artifact's own sentence_embedding output (what an app reads) is the model's pooling + L2 norm."""
    from edgecomp.runtime import open_artifact

    from tiny import IO_NAMES

    src, out, _ = exports[pooling]
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(src)(unseen_texts[:8], padding=True, return_tensors="np")
    got = open_artifact(out / "model-fp32.onnx", threads=1).run({k: enc[k] for k in IO_NAMES})["sentence_embedding"]
    assert (got * torch_sentence_embeddings(src, unseen_texts[:8], pooling)).sum(-1).min() >= 0.9999

