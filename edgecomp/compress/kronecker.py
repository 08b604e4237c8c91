"""Sums of Kronecker products for Linear layers (KroneckerBERT, KnGPT2): W ~ sum_k A_k kron B_k.

Initialised from the pretrained weight by Van Loan-Pitsianis: rearrange W (m1*m2 x n1*n2) into
R (m1*n1 x m2*n2) with R[(i1,j1), (i2,j2)] = W[i1*m2+i2, j1*n2+j2]; the top-k singular triplets give
A_k = sqrt(s_k) u_k (m1 x n1) and B_k = sqrt(s_k) v_k (m2 x n2), the best k-term approximation in
Frobenius norm. Factor shapes are given (`a_shape = [m1, n1]`) or chosen from a ratio: among divisor
pairs, the shapes whose affordable number of terms keeps the most energy of W (cached per weight shape).

Step keys: modules, exclude, a_shape, terms | ratio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import EdgecompError
from . import METHODS
from .base import Calibration, StepReport, check, n_params, select_modules, set_submodule
from .layers import KroneckerLinear


@dataclass
class KroneckerConfig:
    modules: str | list | None = None  # None: every block Linear of the family's adapter (archs/)
    exclude: str | list = field(default_factory=list)
    a_shape: list | None = None  # [m1, n1]; B is then [out/m1, in/n1]
    terms: int | None = None
    ratio: float | None = None  # dense params / Kronecker params

    def __post_init__(self):
        check((self.terms is None) != (self.ratio is None), "kronecker needs exactly one of terms, ratio",
              "give ratio = 4 (shapes and terms chosen automatically) or a_shape = [m1, n1] with terms = k")
        check(self.ratio is None or self.ratio > 1, f"ratio = {self.ratio} does not compress", "use ratio > 1")
        check(self.terms is None or self.terms >= 1, f"terms = {self.terms} is not positive", "use terms >= 1")
        check(self.terms is None or self.a_shape is not None, "terms needs a_shape",
              "add a_shape = [m1, n1], or give ratio instead of terms")
        check(self.a_shape is None or (len(self.a_shape) == 2 and all(isinstance(x, int) and x >= 1 for x in self.a_shape)),
              f"a_shape = {self.a_shape} is not two positive integers", "use a_shape = [m1, n1], e.g. [16, 32]")


def rearrange(w: torch.Tensor, m1: int, n1: int) -> torch.Tensor:
    """W (m1*m2 x n1*n2) -> R (m1*n1 x m2*n2), the Van Loan-Pitsianis rearrangement."""
    m, n = w.shape
    m2, n2 = m // m1, n // n1
    return w.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def divisors(x: int) -> list[int]:
    return [d for d in range(1, x + 1) if x % d == 0]


def max_terms(m: int, n: int, m1: int, n1: int, ratio: float) -> int:
    m2, n2 = m // m1, n // n1
    k = int(m * n / (ratio * (m1 * n1 + m2 * n2)))
    return min(k, m1 * n1, m2 * n2)


def auto_shape(w: torch.Tensor, ratio: float) -> tuple[int, int, int, float]:
    """(m1, n1, terms, kept energy) maximising the energy the affordable terms keep, among shapes whose
    two MatMuls each cost at most the dense one."""
    m, n = w.shape
    total = float((w.double() ** 2).sum())
    best = None
    for m1 in divisors(m):
        for n1 in divisors(n):
            if m1 * n1 in (1, m * n):  # one factor would be a scalar: that is just a scaled W
                continue
            if (n1 == 1 and m1 == m) or (m1 == 1 and n1 == n):
                # A m x 1 with B 1 x n (or the mirror) is exactly a rank-k SVD pair: not a Kronecker shape
                continue
            k = min(max_terms(m, n, m1, n1, ratio), m1, n // n1)
            # k <= m1 and k <= n2 keep each of the two MatMuls at or below the dense FLOPs (k/m1, k/n2 of
            # them) and the [.., n1, k*m2] intermediate near the input size; unbounded k picks shapes
            # like A 1x384 whose intermediate is 384x larger than the activation
            if k < 1:
                continue
            s = torch.linalg.svdvals(rearrange(w.float(), m1, n1))
            kept = float((s[:k].double() ** 2).sum()) / max(total, 1e-30)
            if best is None or kept > best[3]:
                best = (m1, n1, k, kept)
    if best is None:
        raise EdgecompError(f"no Kronecker factor shapes of a {m}x{n} weight reach ratio {ratio}",
                            "use a smaller ratio")
    return best


@torch.no_grad()
def factorize(w: torch.Tensor, m1: int, n1: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k Van Loan-Pitsianis factors: A [k, m1, n1], B [k, m2, n2]."""
    m, n = w.shape
    m2, n2 = m // m1, n // n1
    u, s, vh = torch.linalg.svd(rearrange(w.double(), m1, n1), full_matrices=False)
    root = s[:k].sqrt()
    a = (u[:, :k] * root).T.reshape(k, m1, n1)
    b = (vh[:k] * root[:, None]).reshape(k, m2, n2)
    return a.float(), b.float()


@torch.no_grad()
def apply(model: nn.Module, cfg: KroneckerConfig, calibration: Calibration | None) -> StepReport:
    targets = select_modules(model, cfg.modules, nn.Linear, "kronecker", cfg.exclude)
    rep = StepReport("kronecker", asdict(cfg))
    shape_cache: dict[tuple[int, int], tuple[int, int, int, float]] = {}
    per_module = {}
    for name, lin in targets:
        w = lin.weight.detach()
        m, n = w.shape
        if cfg.a_shape is not None:
            m1, n1 = cfg.a_shape
            check(m % m1 == 0 and n % n1 == 0,
                  f"a_shape = [{m1}, {n1}] does not divide the {m}x{n} weight of {name}",
                  f"use m1 from the divisors of {m} ({', '.join(map(str, divisors(m)))}) and n1 from those of {n}")
            k = cfg.terms if cfg.terms is not None else max_terms(m, n, m1, n1, cfg.ratio)
            bound = min(m1 * n1, (m // m1) * (n // n1))
            check(1 <= k <= bound, f"{k} Kronecker terms with a_shape [{m1}, {n1}] are impossible for {name}",
                  f"use 1 <= terms <= {bound} (or a smaller ratio)")
        else:
            if (m, n) not in shape_cache:  # the same shapes serve every layer of this shape
                shape_cache[(m, n)] = auto_shape(w, cfg.ratio)
            m1, n1, k, _ = shape_cache[(m, n)]
        a, b = factorize(w, m1, n1, k)
        new = KroneckerLinear(m1, m // m1, n1, n // n1, k, bias=lin.bias is not None)
        ka, kb = KroneckerLinear.pack(a, b)
        new.kron_a.copy_(ka)
        new.kron_b.copy_(kb)
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
        per_module[name] = {"a_shape": [m1, n1], "b_shape": [m // m1, n // n1], "terms": k,
                            "rel_weight_error": round(float((w - new.dense_weight()).norm() / w.norm()), 5)}
        rep.params_before += n_params(lin)
        rep.params_after += n_params(new)
        set_submodule(model, name, new)
        rep.modules.append(name)
    rep.details["per_module"] = per_module
    return rep


METHODS.register("kronecker")((KroneckerConfig, apply))
