"""Low-rank pairs: W (out x in) ~ U_r S_r V_r^T, lowered as two MatMuls (x @ V') @ U'.

Plain mode minimises the weight error. Activation-aware mode (`activation_aware = true`) minimises the
error of the layer's *output* on calibration activations: with the input covariance C = L L^T
(Cholesky), the best rank-r W' for E||x W^T - x W'^T||^2 is the truncated SVD of W L, mapped back by
L^{-1} (whitening). Ranks come from `rank`, `energy` (share of the squared singular values kept; in
aware mode that is the share of the layer's output energy on the calibration text) or `ratio`
(dense params / pair params), per module or allocated globally across the selected modules.

Step keys: modules, exclude, rank | energy | ratio, activation_aware, allocation, damping.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import METHODS
from .base import Calibration, StepReport, check, input_covariances, n_params, require_calibration, select_modules, set_submodule
from .layers import LowRankLinear


@dataclass
class LowRankConfig:
    modules: str | list | None = None  # None: every block Linear of the family's adapter (archs/)
    exclude: str | list = field(default_factory=list)
    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    activation_aware: bool = False
    allocation: str = "uniform"  # "global": one params budget over all selected modules (needs ratio)
    damping: float = 0.01  # added to the covariance diagonal, relative to its mean: keeps L invertible

    def __post_init__(self):
        given = [k for k in ("rank", "energy", "ratio") if getattr(self, k) is not None]
        check(len(given) == 1, f"low-rank needs exactly one of rank, energy, ratio (got {given or 'none'})",
              "give one of rank = 64, energy = 0.9 or ratio = 2")
        check(self.rank is None or self.rank >= 1, f"rank = {self.rank} is not positive", "use rank >= 1")
        check(self.energy is None or 0 < self.energy <= 1, f"energy = {self.energy} is outside (0, 1]",
              "use a share of singular-value energy such as 0.9")
        check(self.ratio is None or self.ratio > 1, f"ratio = {self.ratio} does not compress",
              "use a compression ratio above 1, e.g. ratio = 2")
        check(self.allocation in ("uniform", "global"), f"allocation = {self.allocation!r} is unknown",
              "use allocation = \"uniform\" or \"global\"")
        check(self.allocation == "uniform" or self.ratio is not None, "allocation = \"global\" needs a ratio",
              "add ratio = 2 (the budget over all selected modules)")
        check(self.damping >= 0, f"damping = {self.damping} is negative", "use damping >= 0, e.g. 0.01")


def whitening(cov: torch.Tensor, n_tokens: int, damping: float) -> torch.Tensor:
    """Lower-triangular L with L L^T = C/N + damping*mean(diag)*I (float64)."""
    c = cov / max(n_tokens, 1)
    c = c + damping * c.diagonal().mean().clamp_min(1e-12) * torch.eye(c.shape[0], dtype=c.dtype)
    return torch.linalg.cholesky(c)


def rank_for(cfg: LowRankConfig, s: torch.Tensor, m: int, n: int, name: str) -> int:
    if cfg.rank is not None:
        check(cfg.rank <= min(m, n), f"rank {cfg.rank} exceeds min(out, in) = {min(m, n)} of {name}",
              f"use rank <= {min(m, n)}")
        return cfg.rank
    if cfg.energy is not None:
        e = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp_min(1e-30)
        return int(torch.searchsorted(e, torch.tensor(cfg.energy, dtype=e.dtype) - 1e-12)) + 1
    return max(1, int(m * n / (cfg.ratio * (m + n))))


def global_ranks(spectra: dict[str, tuple[torch.Tensor, int, int]], ratio: float) -> dict[str, int]:
    """Spend one params budget where it buys the most normalised energy per parameter."""
    budget = sum(m * n for _, m, n in spectra.values()) / ratio
    gains = []
    for name, (s, m, n) in spectra.items():
        e = (s.double() ** 2) / (s.double() ** 2).sum().clamp_min(1e-30)
        gains += [(float(g) / (m + n), name, m + n) for g in e]
    gains.sort(key=lambda t: -t[0])
    ranks = {name: 0 for name in spectra}
    spent = 0
    for _, name, cost in gains:  # spectra are sorted, so each module's ranks are taken in order
        if spent + cost > budget:
            continue
        ranks[name] += 1
        spent += cost
    return {k: max(v, 1) for k, v in ranks.items()}


@torch.no_grad()
def apply(model: nn.Module, cfg: LowRankConfig, calibration: Calibration | None) -> StepReport:
    targets = select_modules(model, cfg.modules, nn.Linear, "lowrank", cfg.exclude)
    rep = StepReport("lowrank", asdict(cfg))
    covs = {}
    if cfg.activation_aware:
        covs = input_covariances(model, [n for n, _ in targets], require_calibration(calibration, "lowrank"))

    decomps = {}
    for name, lin in targets:
        w = lin.weight.detach().double()  # [out, in]
        m, n = w.shape
        if cfg.rank is not None:
            rank_for(cfg, torch.ones(1), m, n, name)  # refuse impossible ranks before any work
        if cfg.activation_aware:
            cov, count = covs[name]
            check(count > 0, f"no calibration tokens reached {name}", "pass more calibration text")
            chol = whitening(cov, count, cfg.damping)
            u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
            # W' = U S (Vh L^{-1}); x W'^T = x (L^{-T} Vh^T) S U^T
            right = torch.linalg.solve_triangular(chol.T, vh.T, upper=True)  # L^{-T} Vh^T  [in, k]
        else:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            right = vh.T
        decomps[name] = (u, s, right)

    if cfg.allocation == "global":
        ranks = global_ranks({n: (d[1], *dict(targets)[n].weight.shape) for n, d in decomps.items()}, cfg.ratio)
    else:
        ranks = {name: rank_for(cfg, decomps[name][1], *lin.weight.shape, name) for name, lin in targets}

    per_module = {}
    for name, lin in targets:
        u, s, right = decomps[name]
        m, n = lin.weight.shape
        r = ranks[name]
        before = n_params(lin)
        rep.params_before += before
        if r * (m + n) >= m * n:  # a pair this wide is larger than the dense weight: keep it dense
            rep.params_after += before
            per_module[name] = {"rank": None, "kept_dense": True}
            continue
        root = s[:r].sqrt()  # split S evenly: both factors get similar ranges, which int8 likes
        new = LowRankLinear(n, m, r, bias=lin.bias is not None)
        with torch.no_grad():
            new.lowrank_v.copy_((right[:, :r] * root).float())
            new.lowrank_u.copy_((root[:, None] * u[:, :r].T).float())
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        w = lin.weight.detach().double()
        dw = w - new.dense_weight().double()
        info = {"rank": r, "rel_weight_error": round(float(dw.norm() / w.norm()), 5)}
        if cfg.activation_aware:
            cov, count = covs[name]
            info["rel_output_error"] = round(float(
                (torch.trace(dw @ cov @ dw.T) / torch.trace(w @ cov @ w.T).clamp_min(1e-30)).sqrt()), 5)
        per_module[name] = info
        set_submodule(model, name, new)
        rep.modules.append(name)
        rep.params_after += n_params(new)
    rep.details["per_module"] = per_module
    return rep


METHODS.register("lowrank")((LowRankConfig, apply))
