"""STS Benchmark for the encoder studies: Spearman's rank correlation (x100) between the cosine of each
pair's two sentence embeddings and the human score (``shared_data_dir()/sts``; the data README's protocol).

A stand-in until the `edgecomp eval` STS metric lands (branch evalfit): the same protocol, the studies' own
embedders (mean pooling + L2, edgecomp.studies.sst2_embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import shared_data_dir


@dataclass
class StsPairs:
    first: list[str]
    second: list[str]
    scores: np.ndarray

    @property
    def sentences(self) -> list[str]:
        """Each distinct sentence once (embedded once, looked up per pair)."""
        return list(dict.fromkeys([*self.first, *self.second]))


def read_sts(split: str = "dev", path: Path | None = None) -> StsPairs:
    path = path or shared_data_dir() / "sts" / f"sts-{split}.tsv"
    a, b, s = [], [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            s.append(float(cols[4]))
            a.append(cols[5].strip())
            b.append(cols[6].strip())
    return StsPairs(a, b, np.asarray(s))


def sts_spearman(embed, pairs: StsPairs) -> float:
    """Spearman x100 of cos(embed(a), embed(b)) against the scores; ``embed``: texts -> L2-normalized rows."""
    from scipy.stats import spearmanr

    sentences = pairs.sentences
    emb = embed(sentences)
    row = {t: i for i, t in enumerate(sentences)}
    ea, eb = emb[[row[t] for t in pairs.first]], emb[[row[t] for t in pairs.second]]
    cos = (ea * eb).sum(1) / np.maximum(np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1), 1e-12)
    return round(100 * float(spearmanr(cos, pairs.scores).statistic), 2)
