"""The adapted Linears and how they are put on (and taken off) a model, found by archs roles.

LoRA-XS: with W = U S V^T (the pretrained weight, out x in), A = U_r S_r (out x r) and B = V_r^T (r x in) are
frozen and only R (r x r, zero at the start) trains:  y = W x + A R^T B x, lowered row-wise as
``x @ B^T @ R @ A^T`` (R is stored in the orientation the graph multiplies by). A task costs r^2 numbers
per module whatever the model's width. The SVD's sign freedom is fixed (each left singular vector's largest
entry positive), so A and B recomputed from the same weights are the same: the base artifact carries them
once and an adapter is R alone.

Plain LoRA (for comparison): y = W x + (alpha/r) U D x with D (r x in) random and U (out x r) zero, both
trained.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from ..archs.base import Layout, require_layout
from ..errors import EdgecompError
from .config import AdaptConfig


@torch.no_grad()
def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A = U_r S_r [out, r], B = V_r^T [r, in]) of ``weight`` in float32, signs made canonical."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    idx = u.abs().argmax(0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1])])
    sign[sign == 0] = 1
    u, vh = u * sign, vh * sign[:, None]
    return (u * s).float().contiguous(), vh.float().contiguous()


class LoraXSLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        a, b = svd_factors(base.weight, rank)
        self.register_buffer("lora_a_t", a.T.contiguous())  # [r, out]
        self.register_buffer("lora_b_t", b.T.contiguous())  # [in, r]
        self.lora_r = nn.Parameter(torch.zeros(rank, rank))

    def forward(self, x):
        return self.base(x) + ((x @ self.lora_b_t) @ self.lora_r) @ self.lora_a_t

    def trainable(self) -> dict[str, nn.Parameter]:
        return {"lora_r": self.lora_r}


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, generator=None):
        super().__init__()
        self.base = base
        self.scale = (alpha if alpha is not None else 2.0 * rank) / rank
        down = torch.empty(rank, base.in_features)
        bound = 1 / math.sqrt(base.in_features)  # nn.Linear's kaiming-uniform bound
        down.uniform_(-bound, bound, generator=generator)
        self.lora_down = nn.Parameter(down)
        self.lora_up = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_down.T) @ self.lora_up.T * self.scale

    def trainable(self) -> dict[str, nn.Parameter]:
        return {"lora_down": self.lora_down, "lora_up": self.lora_up}


ADAPTED = (LoraXSLinear, LoraLinear)


def layout_for(model: nn.Module) -> Layout:
    return require_layout(model, "adapt", decoder_ok=False, needs_linear=True)


def role_linears(model: nn.Module, roles) -> list[tuple[str, nn.Linear]]:
    """(path, Linear) of every block's Linear in ``roles``, through the family's archs adapter; a role the
    family does not have, or that a compression step replaced, is a one-line refusal."""
    layout = layout_for(model)
    have = set(layout.adapter.roles)
    missing = [r for r in roles if r not in have]
    if missing:
        raise EdgecompError(f"the {layout.family} architecture has no {', '.join(missing)} Linear",
                            f"choose roles from: {', '.join(layout.adapter.roles)}")
    found = layout.linears(roles)
    wrong = [n for n, m in found if not isinstance(m, nn.Linear) or isinstance(m, ADAPTED)]
    if wrong:
        raise EdgecompError(f"{wrong[0]} is not a plain Linear (a compression step replaced it, or it is adapted already)",
                            "put adapters on an uncompressed base, or drop that role")
    if not found:
        raise EdgecompError(f"no Linear of roles {', '.join(roles)} found", "check the roles")
    return found


def check_rank(model: nn.Module, cfg: AdaptConfig) -> None:
    if not cfg.uses_modules:
        return
    for name, lin in role_linears(model, cfg.roles):
        limit = min(lin.in_features, lin.out_features)
        if cfg.rank > limit:
            raise EdgecompError(f"rank {cfg.rank} exceeds min(out, in) = {limit} of {name}", f"use --rank {limit} or less")


def attach(model: nn.Module, cfg: AdaptConfig) -> list[str]:
    """Replace each role Linear by its adapted module (in place); the paths adapted, block by block."""
    check_rank(model, cfg)
    if not cfg.uses_modules:
        return []
    gen = torch.Generator().manual_seed(cfg.seed)
    names = []
    for name, lin in role_linears(model, cfg.roles):
        new = LoraXSLinear(lin, cfg.rank) if cfg.method == "lora-xs" else LoraLinear(lin, cfg.rank, cfg.alpha, gen)
        _set(model, name, new)
        names.append(name)
    return names


def detach(model: nn.Module) -> None:
    """Put the base Linears back (the adapter's tensors are dropped)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, ADAPTED):
            _set(model, name, mod.base)


def adapted(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTED)}


def module_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' trainable tensors, ``<module path>.<tensor>``."""
    return {f"{n}.{k}": p.detach().clone() for n, m in adapted(model).items() for k, p in m.trainable().items()}


@torch.no_grad()
def load_module_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    mods = adapted(model)
    for key, value in state.items():
        name, tensor = key.rsplit(".", 1)
        if name not in mods or tensor not in mods[name].trainable():
            raise EdgecompError(f"the adapter holds {key}, which this model's adapters do not have",
                                "use the adapter with the base and roles it was trained on")
        mods[name].trainable()[tensor].copy_(value)


def fingerprint(model: nn.Module, roles) -> str:
    """sha256 over the role Linears' weights: which base an adapter's frozen factors come from."""
    h = hashlib.sha256()
    for name, lin in role_linears(model, roles):
        h.update(name.encode())
        h.update(lin.weight.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
