"""Shared plumbing of the compression methods: step-config parsing, module selection, calibration data,
activation capture and the bookkeeping every step reports (params, bytes, fidelity).

Kept free of any particular method so each method module stays a config dataclass + one `apply`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import EdgecompError
from ..tasks import MODEL_INPUTS


def forward_inputs(model: nn.Module) -> tuple[str, ...]:
    """The token inputs among MODEL_INPUTS that `model.forward` accepts."""
    params = inspect.signature(model.forward).parameters
    return tuple(n for n in MODEL_INPUTS if n in params)


# --- calibration text ------------------------------------------------------------------------------
@dataclass
class Calibration:
    """Text that data-aware steps run through the model (activation-aware SVD, distillation, checks).

    The pipeline builds it from the model's tokenizer and a text file; scripts from SST-2/WikiText.
    """

    tokenizer: Any
    texts: list[str]
    max_length: int = 128
    batch_size: int = 16
    # what the model's forward takes (compress_model sets it): a tokenizer may emit more, e.g.
    # token_type_ids for a DistilBERT or ModernBERT
    input_names: tuple[str, ...] = MODEL_INPUTS

    def __post_init__(self):
        self.texts = [t for t in (s.strip() for s in self.texts) if t]
        if not self.texts:
            raise EdgecompError("the calibration text is empty", "pass a file with at least one non-empty line")

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Tokenized batches (padding only to the longest text of each batch), in a fixed order."""
        bs = batch_size or self.batch_size
        for i in range(0, len(self.texts), bs):
            enc = self.tokenizer(self.texts[i : i + bs], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            yield {k: v for k, v in enc.items() if k in self.input_names}


def require_calibration(calibration: Calibration | None, method: str) -> Calibration:
    if calibration is None:
        raise EdgecompError(f"the step {method!r} needs calibration text",
                            "pass calibration text (the pipeline builds it from the model's tokenizer), or drop the step")
    return calibration


# --- step configs ----------------------------------------------------------------------------------
def parse_config(cls: type, method: str, step: dict, index: int):
    """Step keys (minus `method`) -> the method's config dataclass; unknown keys and wrong types refused."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    keys = {k: v for k, v in step.items() if k != "method"}
    unknown = sorted(set(keys) - set(known))
    where = f"recipe step {index + 1} ({method})"
    if unknown:
        raise EdgecompError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}",
                            f"use only: {', '.join(sorted(known)) or 'no keys'}")
    hints = typing.get_type_hints(cls)
    for k, v in keys.items():
        if not _type_ok(v, hints[k]):
            raise EdgecompError(f"{where}: {k} = {v!r} has the wrong type", f"give {k} as {_type_name(hints[k])}")
    try:
        return cls(**keys)
    except EdgecompError as e:
        raise EdgecompError(f"{where}: {e.problem}", e.fix) from None


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    if hint is Any:
        return True
    return isinstance(value, hint)


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check(cond: bool, problem: str, fix: str) -> None:
    if not cond:
        raise EdgecompError(problem, fix)


# --- module selection ------------------------------------------------------------------------------
def patterns(spec: str | list[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def select_modules(model: nn.Module, spec: str | list[str] | None, kind: type, method: str,
                   exclude: str | list[str] = ()) -> list[tuple[str, nn.Module]]:
    """Submodules of type `kind` chosen by `spec`: None = every block Linear the family's adapter knows;
    otherwise globs over dotted names (`*` spans dots) and role names (`query`, `ffn-up`, ... see
    archs.ROLES), which the adapter resolves in every block. `exclude` takes the same entries."""
    from ..archs import ROLES, require_layout

    linear = kind is nn.Linear  # GPT-2's blocks are Conv1D: no Linear to select there
    def chosen(entries: list[str]) -> tuple[set[str], list[str]]:
        roles = [e for e in entries if e in ROLES]
        names = {n for n, _ in require_layout(model, method, needs_linear=linear).linears(roles)} if roles else set()
        return names, [e for e in entries if e not in ROLES]

    if spec is None:
        pats, by_name = [], {n for n, _ in require_layout(model, method, needs_linear=linear).linears()}
    else:
        by_name, pats = chosen(patterns(spec))
    excl_names, excl = chosen(patterns(exclude))
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, kind) and (n in by_name or any(fnmatch.fnmatchcase(n, p) for p in pats))
             and n not in excl_names and not any(fnmatch.fnmatchcase(n, p) for p in excl)]
    if not found:
        avail = [n for n, m in model.named_modules() if isinstance(m, kind)][:6]
        raise EdgecompError(f"the {method} step's modules {spec!r} match no {kind.__name__} in the model",
                            f"use a glob over module names such as {', '.join(avail) or '(none found)'}")
    return found


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once


# --- activations -----------------------------------------------------------------------------------
@torch.no_grad()
def visit_module_inputs(model: nn.Module, names: Sequence[str], calibration: Calibration,
                        visit: Callable[[str, torch.Tensor], None]) -> None:
    """Run the calibration text; call visit(name, x) with each named module's input on the real
    (non-padding) tokens, flattened to [tokens, features], once per batch."""
    mask: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, args):
            x = args[0]
            if x.dim() == 3 and x.shape[:2] == mask["m"].shape:
                x = x[mask["m"].bool()]
            visit(name, x.detach().reshape(-1, x.shape[-1]))
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        for batch in calibration.batches():
            mask["m"] = batch["attention_mask"]
            model(**batch)
    finally:
        for h in handles:
            h.remove()


def input_covariances(model: nn.Module, names: Sequence[str], calibration: Calibration,
                      with_ones: bool = False) -> dict[str, tuple[torch.Tensor, int]]:
    """X^T X (float64) over the real tokens entering each named module, and the token count. With
    `with_ones`, X gets a constant last column (so the Gram matrix also holds the inputs' sums)."""
    acc: dict[str, list] = {n: [None, 0] for n in names}

    def visit(name, x):
        x = x.double()
        if with_ones:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
        xtx = x.T @ x
        acc[name][0] = xtx if acc[name][0] is None else acc[name][0] + xtx
        acc[name][1] += x.shape[0]

    visit_module_inputs(model, names, calibration, visit)
    return {n: (a[0], a[1]) for n, a in acc.items()}


def last_hidden_state(model: nn.Module, batch: dict) -> torch.Tensor:
    """The encoder's (or decoder's) last hidden state [batch, seq, hidden]; a classifier's outputs are
    logits, so its hidden states are asked for."""
    out = model(**batch)
    if getattr(out, "last_hidden_state", None) is not None:
        return out.last_hidden_state
    if getattr(out, "logits", None) is not None:
        return model(**batch, output_hidden_states=True).hidden_states[-1]
    return out[0]


@torch.no_grad()
def pooled_embeddings(model: nn.Module, calibration: Calibration) -> torch.Tensor:
    """Mean-pooled, L2-normalised last hidden state: the fidelity yardstick of every step."""
    outs = []
    for batch in calibration.batches():
        h = last_hidden_state(model, batch)
        m = batch["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        outs.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(outs)


def cosine_summary(ref: torch.Tensor, got: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
    return {"cos_mean": round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 5), "n_texts": int(cos.numel())}


@dataclass
class StepReport:
    """What one step did; `to_json` is what lands in the export manifest/report."""

    method: str
    config: dict
    modules: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    fidelity: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "config": self.config,
            "modules": self.modules,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "bytes_before_fp32": 4 * self.params_before,
            "bytes_after_fp32": 4 * self.params_after,
            "fidelity": self.fidelity,
            **({"details": self.details} if self.details else {}),
        }
