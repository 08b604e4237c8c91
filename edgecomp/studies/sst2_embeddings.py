"""The sentence-embedding protocol of the encoder studies (scripts/study_compression.py, study_arm_int8.py).

Texts come from SST-2 (``shared_data_dir()/sst2``): held-out dev sentences (>= 10 words) for embedding
cosine against the PyTorch fp32 model, train sentences for calibration, and a logistic-regression probe
(trained on train phrases, scored on dev phrases). Embeddings are mean-pooled and L2-normalized, the
sentence-transformers recipe of all-MiniLM-L6-v2 (edgecomp.tasks.feature_extraction.pool).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..early_exit.data import read_labelled_tsv
from ..paths import shared_data_dir
from ..tasks import torch_inputs
from ..tasks.feature_extraction import cosine_rows, pool

MAX_LENGTH = 128


@dataclass
class StudyTexts:
    held: list[str]  # dev sentences: embedding cosine vs PyTorch fp32
    calibration: list[str]  # train sentences: activation statistics, distillation
    probe_train: list[tuple[str, int]]
    probe_dev: list[tuple[str, int]]


def study_texts(quick: bool) -> StudyTexts:
    """The fixed, seeded split every study uses (calibration text never overlaps what is measured)."""
    d = shared_data_dir() / "sst2"
    train_set, dev_set = read_labelled_tsv(d / "train.tsv"), read_labelled_tsv(d / "dev.tsv")
    train = [(t.strip(), y) for t, y in zip(train_set.texts, train_set.labels)]
    dev = [(t.strip(), y) for t, y in zip(dev_set.texts, dev_set.labels)]
    rng = np.random.default_rng(0)
    long_dev = [s for s, _ in dev if len(s.split()) >= 10]
    held = long_dev[: 100 if quick else 300]
    long_train = [s for s, _ in train if len(s.split()) >= 10]
    cal = [long_train[i] for i in rng.permutation(len(long_train))[: 512 if quick else 2048]]  # 64 overfits (measured)
    # probe: full sentences/phrases of >= 4 words (single words say little about an encoder)
    cal_set = set(cal)
    tr = [x for x in train if len(x[0].split()) >= 4 and x[0] not in cal_set]
    tr = [tr[i] for i in rng.permutation(len(tr))[: 800 if quick else 3000]]
    dv = [x for x in dev if len(x[0].split()) >= 4]
    dv = [dv[i] for i in rng.permutation(len(dv))[: 500 if quick else 1500]]
    return StudyTexts(held, cal, tr, dv)


def batches(tokenizer, texts: list[str], batch_size: int = 32):
    """Numpy feeds of ``batch_size`` texts, padded to the longest, truncated at MAX_LENGTH tokens."""
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=MAX_LENGTH,
                        return_tensors="np")
        yield {k: v.astype(np.int64) for k, v in enc.items()}


def embed_torch(model, tokenizer, texts: list[str], batch_size: int = 32) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for b in batches(tokenizer, texts, batch_size):
            hidden = model(**torch_inputs(b)).last_hidden_state.numpy()
            out.append(pool(hidden, b["attention_mask"], "mean", True))
    return np.concatenate(out)


def embed_artifact(runner, tokenizer, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Embeddings from an artifact opened with edgecomp.runtime.open_artifact (feeds it declares only)."""
    out = []
    for b in batches(tokenizer, texts, batch_size):
        hidden = runner.run({k: v for k, v in b.items() if k in runner.input_names})["last_hidden_state"]
        out.append(pool(hidden, b["attention_mask"], "mean", True))
    return np.concatenate(out)


def cos_stats(ref: np.ndarray, got: np.ndarray) -> dict:
    c = cosine_rows(ref, got)
    return {"cos_mean": round(float(c.mean()), 4), "cos_min": round(float(c.min()), 4)}


def fit_probe(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=2.0).fit(x, y)


def probe_accuracy(probe, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy in percent, rounded as the studies report it."""
    return round(100 * float(probe.score(x, y)), 2)


def measure(embed, held_ref: np.ndarray, texts: StudyTexts, probe_fp32, probe: bool = True) -> dict:
    """Cosine on the held-out texts, drop-in probe accuracy (the fp32 model's probe applied to these
    embeddings) and retrained-probe accuracy (a probe fit on these embeddings) for one embedder."""
    stats = cos_stats(held_ref, embed(texts.held))
    if not probe:
        return {**stats, "probe_fp32": None, "probe_retrained": None}
    tr_emb, dv_emb = embed([s for s, _ in texts.probe_train]), embed([s for s, _ in texts.probe_dev])
    ytr, ydv = np.array([y for _, y in texts.probe_train]), np.array([y for _, y in texts.probe_dev])
    return {**stats, "probe_fp32": probe_accuracy(probe_fp32, dv_emb, ydv),
            "probe_retrained": probe_accuracy(fit_probe(tr_emb, ytr), dv_emb, ydv)}
