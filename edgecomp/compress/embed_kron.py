"""Token table as Kronecker products (KroneckerBERT): row_i = sum_k a_{i,k} kron b_k.

E (V x d), d = d1*d2. Each row reshaped to d1 x d2 gives the stacked matrix R (V*d1 x d2); its top-k SVD
gives the shared b_k (right singular vectors, d2 long) and the per-token a_{i,k} (d1 long). This is the
Van Loan-Pitsianis nearest Kronecker product with A: V x d1 and B: 1 x d2. Compression ~ d2/k.
Lowering: Gather -> Reshape -> Mul (one term) or MatMul (k terms) -> Reshape.

Step keys: module, d2 (the shared factor length; divides d) | ratio, terms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import EdgecompError
from . import METHODS
from .base import Calibration, StepReport, check
from .embedding import direction_error, find_table, swap_table
from .layers import KroneckerEmbedding


@dataclass
class KroneckerEmbeddingConfig:
    module: str | None = None  # default: the model's input token table (embeddings.word_embeddings)
    d2: int | None = None
    ratio: float | None = None
    terms: int = 1

    def __post_init__(self):
        check((self.d2 is None) != (self.ratio is None), "kron-embedding needs exactly one of d2, ratio",
              "give d2 = 4 (row = a (d/4 long) kron b (4 long)) or ratio = 4")
        check(self.d2 is None or self.d2 >= 2, f"d2 = {self.d2} does not compress", "use d2 >= 2")
        check(self.ratio is None or self.ratio > 1, f"ratio = {self.ratio} does not compress", "use ratio > 1")
        check(self.terms >= 1, f"terms = {self.terms} is not positive", "use terms >= 1")


def pick_d2(d: int, ratio: float, terms: int) -> int:
    """The smallest divisor d2 of d whose compression d2/terms reaches the ratio."""
    for d2 in range(2, d + 1):
        if d % d2 == 0 and d2 / terms >= ratio:
            return d2
    raise ValueError


@torch.no_grad()
def apply(model: nn.Module, cfg: KroneckerEmbeddingConfig, calibration: Calibration | None) -> StepReport:
    name, table = find_table(model, cfg.module, "kron-embedding")
    v, d = table.weight.shape
    if cfg.d2 is not None:
        d2 = cfg.d2
        check(d % d2 == 0, f"d2 = {d2} does not divide the embedding width {d}",
              f"use a divisor of {d}: {', '.join(str(x) for x in range(2, d + 1) if d % x == 0)}")
    else:
        try:
            d2 = pick_d2(d, cfg.ratio, cfg.terms)
        except ValueError:
            raise EdgecompError(f"no divisor of {d} reaches ratio {cfg.ratio} with {cfg.terms} terms",
                                "use a smaller ratio or fewer terms") from None
    d1 = d // d2
    check(cfg.terms <= min(d2, v * d1), f"terms = {cfg.terms} exceeds the rank bound {min(d2, v * d1)}",
          f"use terms <= {min(d2, v * d1)}")
    check(cfg.terms < d2, f"terms = {cfg.terms} with d2 = {d2} stores at least as much as the table",
          "use terms < d2")
    e = table.weight.detach().double()
    r = e.reshape(v * d1, d2)  # row i's d1 x d2 block stacked: R[(i, j1), j2] = E[i, j1*d2 + j2]
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    k = cfg.terms
    a = (u[:, :k] * s[:k]).reshape(v, d1, k)  # a[i, j1, t]
    new = KroneckerEmbedding(v, d1, d2, k, padding_idx=table.padding_idx)
    new.kron_a.copy_(a.reshape(v, d1 * k).float())
    new.kron_b.copy_(vh[:k].float())
    rep = StepReport("kron-embedding", asdict(cfg))
    rep.fidelity["table"] = direction_error(table.weight, new.dense_weight())
    rep.details.update({"d1": d1, "d2": d2})
    swap_table(model, name, table, new, rep)
    return rep


METHODS.register("kron-embedding")((KroneckerEmbeddingConfig, apply))
