"""Token table by truncated SVD: E (V x d) ~ (U_l S_l) (V_l^T); Gather on V x l, then MatMul l x d.

Step keys: module (default embeddings.word_embeddings), latent_dim | ratio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import METHODS
from .base import Calibration, StepReport, check
from .embedding import direction_error, find_table, swap_table
from .layers import FactorizedEmbedding


@dataclass
class SVDEmbeddingConfig:
    module: str | None = None  # default: the model's input token table (embeddings.word_embeddings)
    latent_dim: int | None = None
    ratio: float | None = None  # table params / (V*l + l*d)

    def __post_init__(self):
        check((self.latent_dim is None) != (self.ratio is None),
              "svd-embedding needs exactly one of latent_dim, ratio", "give latent_dim = 96 or ratio = 4")
        check(self.latent_dim is None or self.latent_dim >= 1, f"latent_dim = {self.latent_dim} is not positive",
              "use latent_dim >= 1")
        check(self.ratio is None or self.ratio > 1, f"ratio = {self.ratio} does not compress", "use ratio > 1")


def latent_dim_for(latent_dim: int | None, ratio: float | None, v: int, d: int, extra_per_l: int = 0) -> int:
    """l from the config; refuse l >= d (the factorisation would be larger than the table)."""
    ell = latent_dim if latent_dim is not None else max(1, int(v * d / (ratio * (v + d + extra_per_l))))
    check(ell < d, f"latent_dim {ell} is not below the embedding width {d}",
          f"use latent_dim < {d} (or a larger ratio)")
    return ell


@torch.no_grad()
def svd_factors(e: torch.Tensor, ell: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
    return (u[:, :ell] * s[:ell]).float(), vh[:ell].float()


@torch.no_grad()
def apply(model: nn.Module, cfg: SVDEmbeddingConfig, calibration: Calibration | None) -> StepReport:
    name, table = find_table(model, cfg.module, "svd-embedding")
    v, d = table.weight.shape
    ell = latent_dim_for(cfg.latent_dim, cfg.ratio, v, d)
    z, p = svd_factors(table.weight.detach(), ell)
    new = FactorizedEmbedding(v, ell, d, bias=False, padding_idx=table.padding_idx)
    new.latent.copy_(z)
    new.decoder.copy_(p)
    rep = StepReport("svd-embedding", asdict(cfg))
    rep.fidelity["table"] = direction_error(table.weight, new.dense_weight())
    rep.details["latent_dim"] = ell
    swap_table(model, name, table, new, rep)
    return rep


METHODS.register("svd-embedding")((SVDEmbeddingConfig, apply))
