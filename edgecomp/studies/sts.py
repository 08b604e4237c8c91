"""STS Benchmark for the encoder studies (``shared_data_dir()/sts``; the data README's protocol), over the
metric and reader of `edgecomp eval` (edgecomp.evaluate), with the studies' own embedders (mean pooling +
L2, edgecomp.studies.sst2_embeddings): each distinct sentence is embedded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..evaluate.data import read_sts_pairs
from ..evaluate.metrics import sts_spearman as _sts_spearman
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
    pairs = read_sts_pairs(path or shared_data_dir() / "sts" / f"sts-{split}.tsv")
    return StsPairs([t.strip() for t in pairs.sentence1], [t.strip() for t in pairs.sentence2], np.asarray(pairs.scores))


def sts_spearman(embed, pairs: StsPairs) -> float:
    """Spearman x100 of cos(embed(a), embed(b)) against the scores; ``embed``: texts -> embedding rows."""
    sentences = pairs.sentences
    emb = embed(sentences)
    row = {t: i for i, t in enumerate(sentences)}
    return round(_sts_spearman(emb[[row[t] for t in pairs.first]], emb[[row[t] for t in pairs.second]], pairs.scores), 2)
