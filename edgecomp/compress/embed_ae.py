"""Token table by a direction-loss autoencoder ("Direction is what you need", Balazy et al. 2021).

Rows of E are the samples. Linear encoder d -> l (with bias), linear decoder l -> d with bias; trained on
    loss = direction_weight * mean(1 - cos(e_hat, e)) + magnitude_weight * mean(|e_hat - e|^alpha),
alpha annealed from alpha_start to alpha_end. Starts from the (mean-centred) SVD solution, so it can
only move away from SVD where the direction loss says so. Stores Z = enc(E) [V, l] and the decoder;
lowers to Gather -> MatMul -> Add. `refine_latents` extra steps then optimise Z itself (free latents).

Step keys: module, latent_dim | ratio, steps, batch_rows, lr, direction_weight, magnitude_weight,
alpha_start, alpha_end, refine_latents, seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import METHODS
from .base import Calibration, StepReport, check
from .embed_svd import latent_dim_for
from .embedding import direction_error, find_table, swap_table
from .layers import FactorizedEmbedding


@dataclass
class AEEmbeddingConfig:
    module: str | None = None  # default: the model's input token table (embeddings.word_embeddings)
    latent_dim: int | None = None
    ratio: float | None = None
    steps: int = 300
    batch_rows: int = 4096
    lr: float = 1e-2
    direction_weight: float = 1.0
    magnitude_weight: float = 0.1
    alpha_start: float = 1.0
    alpha_end: float = 0.1
    refine_latents: int = 0
    seed: int = 0

    def __post_init__(self):
        check((self.latent_dim is None) != (self.ratio is None),
              "ae-embedding needs exactly one of latent_dim, ratio", "give latent_dim = 96 or ratio = 4")
        check(self.latent_dim is None or self.latent_dim >= 1, f"latent_dim = {self.latent_dim} is not positive",
              "use latent_dim >= 1")
        check(self.ratio is None or self.ratio > 1, f"ratio = {self.ratio} does not compress", "use ratio > 1")
        check(self.steps >= 0 and self.refine_latents >= 0 and self.batch_rows >= 1,
              "steps, refine_latents and batch_rows must be non-negative", "use e.g. steps = 600")
        check(self.lr > 0 and self.direction_weight >= 0 and self.magnitude_weight >= 0,
              "lr must be positive and the loss weights non-negative", "use e.g. lr = 0.002")
        check(0 < self.alpha_end <= 2 and 0 < self.alpha_start <= 2, "alpha must be in (0, 2]",
              "use alpha_start = 1.0, alpha_end = 0.1")


def direction_loss(e_hat, e, cfg: AEEmbeddingConfig, alpha: float) -> torch.Tensor:
    cos = nn.functional.cosine_similarity(e_hat, e, dim=-1)
    mag = ((e_hat - e).abs() + 1e-6).pow(alpha).mean()  # eps: the gradient of |x|^a blows up at 0 for a < 1
    return cfg.direction_weight * (1 - cos).mean() + cfg.magnitude_weight * mag


def train_autoencoder(e: torch.Tensor, ell: int, cfg: AEEmbeddingConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns Z [V, l], decoder [l, d], decoder bias [d]."""
    gen = torch.Generator().manual_seed(cfg.seed)
    mu = e.mean(0)
    _, _, vh = torch.linalg.svd(e - mu, full_matrices=False)
    basis = vh[:ell].float()  # [l, d]
    enc_w = nn.Parameter(basis.T.clone())  # e -> (e - mu) @ basis^T: the SVD solution as the start
    enc_b = nn.Parameter(-(mu @ basis.T))
    dec_w = nn.Parameter(basis.clone())
    dec_b = nn.Parameter(mu.clone())
    opt = torch.optim.Adam([enc_w, enc_b, dec_w, dec_b], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    v = e.shape[0]
    for step in range(cfg.steps):
        alpha = cfg.alpha_start + (cfg.alpha_end - cfg.alpha_start) * step / max(cfg.steps - 1, 1)
        idx = torch.randint(0, v, (min(cfg.batch_rows, v),), generator=gen)
        rows = e[idx]
        loss = direction_loss((rows @ enc_w + enc_b) @ dec_w + dec_b, rows, cfg, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        z = e @ enc_w + enc_b
    if cfg.refine_latents:
        z = nn.Parameter(z.clone())
        opt = torch.optim.Adam([z, dec_w, dec_b], lr=cfg.lr / 2)
        for step in range(cfg.refine_latents):
            idx = torch.randint(0, v, (min(cfg.batch_rows, v),), generator=gen)
            loss = direction_loss(z[idx] @ dec_w + dec_b, e[idx], cfg, cfg.alpha_end)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return z.detach(), dec_w.detach(), dec_b.detach()


def apply(model: nn.Module, cfg: AEEmbeddingConfig, calibration: Calibration | None) -> StepReport:
    name, table = find_table(model, cfg.module, "ae-embedding")
    v, d = table.weight.shape
    ell = latent_dim_for(cfg.latent_dim, cfg.ratio, v, d)
    e = table.weight.detach().float()
    with torch.enable_grad():
        z, dec_w, dec_b = train_autoencoder(e, ell, cfg)
    new = FactorizedEmbedding(v, ell, d, bias=True, padding_idx=table.padding_idx)
    with torch.no_grad():
        new.latent.copy_(z)
        new.decoder.copy_(dec_w)
        new.decoder_bias.copy_(dec_b)
        rep = StepReport("ae-embedding", asdict(cfg))
        rep.fidelity["table"] = direction_error(e, new.dense_weight())
    rep.details["latent_dim"] = ell
    swap_table(model, name, table, new, rep)
    return rep


METHODS.register("ae-embedding")((AEEmbeddingConfig, apply))
