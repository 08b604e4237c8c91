"""What the three token-embedding methods share: finding the table, validating its latent size,
swapping the module in while keeping a tied output head tied (one table in the artifact, not two)."""

from __future__ import annotations

import torch
from torch import nn

from ..archs import layout_of
from ..errors import EdgecompError
from .base import StepReport, n_params, set_submodule
from .layers import TiedOutputHead


def input_table_name(model: nn.Module) -> str | None:
    """Dotted path of the model's token table (get_input_embeddings), e.g. bert.embeddings.word_embeddings."""
    get_in = getattr(model, "get_input_embeddings", None)
    table = get_in() if get_in else None
    return next((n for n, m in model.named_modules() if m is table), None) if table is not None else None


def find_table(model: nn.Module, name: str | None, method: str) -> tuple[str, nn.Embedding]:
    """(path, table): `name`, or by default the model's input token table (where its family's adapter
    says, else where get_input_embeddings finds it)."""
    layout = layout_of(model)
    name = name or (layout.token_table_path if layout is not None else input_table_name(model))
    if not name:
        raise EdgecompError(f"the {method} step found no token table in this model",
                            "set module = \"...\" to the nn.Embedding to compress")
    try:
        table = model.get_submodule(name)
    except AttributeError:
        table = None
    if not isinstance(table, nn.Embedding):
        known = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
        raise EdgecompError(f"the {method} step's module {name!r} is not an nn.Embedding in this model",
                            f"set module to one of: {', '.join(known) or '(no embedding found)'}")
    return name, table


def tied_head(model: nn.Module, table: nn.Embedding) -> tuple[str, nn.Module] | None:
    """The output projection that shares the table's weight tensor, if any (e.g. GPT-style LM heads)."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if get_out else None
    if head is None or getattr(head, "weight", None) is not table.weight:
        return None
    for n, m in model.named_modules():
        if m is head:
            return n, head
    return None


def swap_table(model: nn.Module, name: str, table: nn.Embedding, new: nn.Module, rep: StepReport) -> None:
    tied = tied_head(model, table)
    set_submodule(model, name, new)
    rep.modules.append(name)
    rep.params_before += n_params(table)
    rep.params_after += n_params(new)
    if tied is not None:
        head_name, head = tied
        set_submodule(model, head_name, TiedOutputHead(new, getattr(head, "bias", None)))
        rep.modules.append(head_name)
        rep.details["tied_output_head"] = head_name


@torch.no_grad()
def direction_error(e: torch.Tensor, e_hat: torch.Tensor) -> dict:
    """Row cosine and relative Frobenius error of a reconstructed table (the per-step weight fidelity)."""
    live = e.norm(dim=-1) > 0  # padding rows are all-zero: their direction is undefined
    e, e_hat = e[live], e_hat[live]
    cos = nn.functional.cosine_similarity(e, e_hat, dim=-1)
    return {"row_cos_mean": round(float(cos.mean()), 5), "row_cos_min": round(float(cos.min()), 5),
            "rel_weight_error": round(float((e - e_hat).norm() / e.norm()), 5)}
