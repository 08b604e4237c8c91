"""Autoencoder weight compression shared across layers ("Revisiting Offline Compression").

Rows of a weight are the samples. The rows of one module type (e.g. every layer's attention.self.query,
`joint = true`) are encoded by a small linear encoder to l-dim latents, and decoded by ONE linear decoder
(with bias) shared by all those layers; the loss is the direction loss (1 - cos), because each row's norm
is kept separately (folded into a per-row scale). `joint = false` trains one decoder per module instead
(the paper's per-layer baseline). Stored form: latents Z [out, l] per layer + the shared decoder [l+1, in].

Lowering (`lowering`):
- "matmul" (b): y = (x @ [D^T | b]) @ (g * [Z | 1])^T: the shared decoder stays a MatMul in the graph,
  so both the file and the runtime hold only the compressed form (runtime memory gain).
- "decode" (a): the graph rebuilds W = g * (Z D + b) from initializers before the MatMul: a runtime
  folds that at load (storage gain only). Simplifiers fold it too: the pipeline must skip constant
  folding for these initializers (see `details.keep_unfolded` in the step report).

Step keys: modules, exclude, latent_dim | ratio, joint, lowering, steps, lr, batch_rows, seed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import METHODS
from .base import Calibration, StepReport, check, n_params, select_modules, set_submodule
from .layers import SharedDecoderLinear


@dataclass
class WeightAEConfig:
    modules: str | list | None = None  # None: every block Linear of the family's adapter (archs/)
    exclude: str | list = field(default_factory=list)
    latent_dim: int | None = None
    ratio: float | None = None  # dense params of a group / its compressed params
    joint: bool = True
    lowering: str = "matmul"
    steps: int = 300
    lr: float = 1e-2
    batch_rows: int = 2048
    seed: int = 0

    def __post_init__(self):
        check((self.latent_dim is None) != (self.ratio is None), "ae-weights needs exactly one of latent_dim, ratio",
              "give latent_dim = 64 or ratio = 2")
        check(self.latent_dim is None or self.latent_dim >= 1, f"latent_dim = {self.latent_dim} is not positive",
              "use latent_dim >= 1")
        check(self.ratio is None or self.ratio > 1, f"ratio = {self.ratio} does not compress", "use ratio > 1")
        check(self.lowering in ("matmul", "decode"), f"lowering = {self.lowering!r} is unknown",
              'use "matmul" (decoder kept as MatMuls) or "decode" (decoded at load)')
        check(self.steps >= 0 and self.lr > 0 and self.batch_rows >= 1, "steps, lr, batch_rows must be positive",
              "use e.g. steps = 300, lr = 0.01")


def group_key(name: str) -> str:
    """encoder.layer.3.attention.self.query -> encoder.layer.*.attention.self.query (the module type)."""
    return re.sub(r"\.\d+\.", ".*.", name)


def train_shared_decoder(rows: torch.Tensor, ell: int, cfg: WeightAEConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-norm rows [R, n] -> latents [R, l], decoder [l, n], decoder bias [n] (direction loss)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    mu = rows.mean(0)
    _, _, vh = torch.linalg.svd(rows - mu, full_matrices=False)
    basis = vh[:ell]
    enc_w, enc_b = nn.Parameter(basis.T.clone()), nn.Parameter(-(mu @ basis.T))
    dec_w, dec_b = nn.Parameter(basis.clone()), nn.Parameter(mu.clone())
    opt = torch.optim.Adam([enc_w, enc_b, dec_w, dec_b], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    with torch.enable_grad():
        for _ in range(cfg.steps):
            x = rows[torch.randint(0, rows.shape[0], (min(cfg.batch_rows, rows.shape[0]),), generator=gen)]
            loss = (1 - nn.functional.cosine_similarity((x @ enc_w + enc_b) @ dec_w + dec_b, x, dim=-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return (rows @ enc_w + enc_b).detach(), dec_w.detach(), dec_b.detach()


def latent_for(cfg: WeightAEConfig, n_layers: int, m: int, n: int, key: str) -> int:
    if cfg.latent_dim is not None:
        ell = cfg.latent_dim
    else:  # L*m*n / ratio = L*m*(l+1) + n*(l+1) (joint) or L*(m+n)*(l+1) (per layer)
        shared = n if cfg.joint else n_layers * n
        ell = int(n_layers * m * n / (cfg.ratio * (n_layers * m + shared))) - 1
    # the decoder spans the rows of every layer it serves: joint latents may exceed one layer's rank
    bound = min((n_layers if cfg.joint else 1) * m, n)
    check(1 <= ell < bound, f"latent_dim {ell} is impossible for the {m}x{n} weights of {key}",
          f"use 1 <= latent_dim < {bound} (or a smaller ratio)")
    return ell


@torch.no_grad()
def apply(model: nn.Module, cfg: WeightAEConfig, calibration: Calibration | None) -> StepReport:
    targets = select_modules(model, cfg.modules, nn.Linear, "ae-weights", cfg.exclude)
    groups: dict[str, list[tuple[str, nn.Linear]]] = {}
    for name, lin in targets:
        groups.setdefault(group_key(name) if cfg.joint else name, []).append((name, lin))
    rep = StepReport("ae-weights", asdict(cfg))
    per_group, keep = {}, []
    for key, members in groups.items():
        shapes = {tuple(lin.weight.shape) for _, lin in members}
        check(len(shapes) == 1, f"the layers of {key} have different shapes {sorted(shapes)}",
              "use joint = false or narrower modules globs")
        m, n = shapes.pop()
        ell = latent_for(cfg, len(members), m, n, key)
        w = torch.cat([lin.weight.detach() for _, lin in members])  # [L*m, n]
        norms = w.norm(dim=1).clamp_min(1e-12)
        z, dec_w, dec_b = train_shared_decoder(w / norms[:, None], ell, cfg)
        decoded = z @ dec_w + dec_b
        scale = norms / decoded.norm(dim=1).clamp_min(1e-12)  # keep each row's norm
        decoder_t = nn.Parameter(torch.cat([dec_w.T, dec_b[:, None]], 1).contiguous())  # [n, l+1], shared
        errs = []
        for i, (name, lin) in enumerate(members):
            sl = slice(i * m, (i + 1) * m)
            new = SharedDecoderLinear(decoder_t, z[sl], scale[sl], lin.bias, cfg.lowering)
            errs.append(float((lin.weight - new.dense_weight()).norm() / lin.weight.norm()))
            rep.params_before += n_params(lin)
            set_submodule(model, name, new)
            rep.modules.append(name)
            if cfg.lowering == "decode":
                keep += [f"{name}.ae_latent", f"{name}.ae_row_scale"]
        keep.append(f"{members[0][0]}.ae_decoder_t")
        rep.params_after += decoder_t.numel() + sum(
            p.numel() for name, _ in members for pn, p in model.get_submodule(name).named_parameters()
            if pn != "ae_decoder_t")
        per_group[key] = {"layers": len(members), "latent_dim": ell,
                          "rel_weight_error_mean": round(sum(errs) / len(errs), 5)}
    rep.details["per_group"] = per_group
    if cfg.lowering == "decode":
        rep.details["keep_unfolded"] = keep
    return rep


METHODS.register("ae-weights")((WeightAEConfig, apply))
