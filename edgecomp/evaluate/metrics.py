"""Task metrics as small pure functions over numpy arrays (no model, no runtime): what `edgecomp eval` and
`edgecomp fit` report, and what other code may reuse."""

from __future__ import annotations

import math

import numpy as np


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, H] embedding matrices (normalized or not)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def spearman_x100(predicted, gold) -> float:
    """Spearman's rank correlation x100 (ties get average ranks, as scipy.stats.spearmanr)."""
    from scipy.stats import spearmanr

    rho = spearmanr(np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)).statistic
    return float(rho) * 100.0


def sts_spearman(emb1: np.ndarray, emb2: np.ndarray, scores) -> float:
    """The STS Benchmark score: Spearman x100 between the pairs' embedding cosine and the human scores."""
    return spearman_x100(cosine_pairs(emb1, emb2), scores)


def accuracy_x100(predicted, gold) -> float:
    predicted, gold = list(predicted), list(gold)
    return 100.0 * sum(p == g for p, g in zip(predicted, gold)) / max(len(gold), 1)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean NLL per scored token)."""
    return math.exp(nll_sum / tokens) if tokens else float("nan")


def retrieval_scores(query_emb: np.ndarray, doc_emb: np.ndarray, query_ids: list[str], doc_ids: list[str],
                     qrels: dict[str, set[str]], k: int = 5) -> dict[str, float]:
    """recall@k (share of a query's relevant documents in its top k, averaged over queries) and MRR@k
    (reciprocal rank of the first relevant document in the top k), x100, ranking by cosine."""
    q = np.asarray(query_emb, dtype=np.float64)
    d = np.asarray(doc_emb, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    d = d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    sims = q @ d.T
    recalls, rrs = [], []
    for i, qid in enumerate(query_ids):
        relevant = qrels.get(qid)
        if not relevant:
            continue
        # stable order on ties: the corpus order decides, so the figure does not depend on the sort algorithm
        top = [doc_ids[j] for j in np.argsort(-sims[i], kind="stable")[:k]]
        recalls.append(len(relevant & set(top)) / len(relevant))
        rrs.append(next((1.0 / (r + 1) for r, doc in enumerate(top) if doc in relevant), 0.0))
    return {f"recall@{k}": 100.0 * float(np.mean(recalls)), f"mrr@{k}": 100.0 * float(np.mean(rrs))}


def drop(reference: float, value: float, higher_is_better: bool = True) -> float:
    """How much worse than the reference, in the metric's unit (positive = worse)."""
    return (reference - value) if higher_is_better else (value - reference)
