"""Activation smoothing (SmoothQuant, Xiao et al. 2023) for runtimes that quantize activations per tensor.

ONNX Runtime's dynamic int8 quantizes each MatMul input with ONE uint8 range per tensor. In MiniLM a few
channels reach 20-30 while 99.9% of values stay below 3-8 (inputs of the intermediate and FFN-output
dense layers), so per-tensor ranges waste most of the 256 levels; that, not the weights, is where int8's
error comes from (PyTorch simulation of ORT's int8 on 100 held-out SST-2 sentences: int8 weights alone keep
cos 0.9995, int8 activations alone drop it to 0.993, as ORT's int8 artifact does).
Smoothing divides input channel j by s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha) and multiplies the
weight's column j by s_j: the same function in fp32, flatter activations, slightly rougher weights
(quantized per output channel, which absorbs part of it).

BERT is post-LayerNorm (the LayerNorm output is also the residual), so the 1/s cannot be folded into the
LayerNorm as in pre-LN decoders; it is an explicit Mul before the MatMul (SmoothedLinear). Linears that read
the same tensor (query, key, value) share one scale module, so ORT quantizes that input once, as it does
without smoothing (tested: as many DynamicQuantizeLinear nodes as the unsmoothed graph). A one-off probe on
a Cortex-A76 (qemu, MiniLM int8) put one Mul per Linear at +7.7 M instructions per inference (+3.5%),
shared scales at +3.5 M (results/arm64/study_int8.md: 224.4 M vs 220.9 M).

The Linears and their shared inputs come from the family's adapter (archs/); `modules` / `exclude` take
globs or role names (e.g. exclude = ["attention-output"]).

Step keys: modules, exclude, alpha (0.85 on MiniLM; in the same simulation alpha 0.5 gave cos 0.983,
0.75 gave 0.998, 0.85 gave 0.998: near 0.5 the outlier columns' growth hurts the per-output-channel weight
scales more than the flatter activations help).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..archs import layout_of
from . import METHODS
from .base import (Calibration, StepReport, check, require_calibration, select_modules, set_submodule,
                   visit_module_inputs)
from .layers import SmoothedLinear


@dataclass
class SmoothConfig:
    modules: str | list | None = None  # None: every block Linear of the family's adapter (archs/)
    exclude: str | list = field(default_factory=list)
    alpha: float = 0.85

    def __post_init__(self):
        check(0 <= self.alpha <= 1, f"alpha = {self.alpha} is outside [0, 1]", "use e.g. alpha = 0.85")


def input_absmax(model: nn.Module, names: list[str], calibration: Calibration) -> dict[str, torch.Tensor]:
    """Per-channel max |x| of each named module's input over the real (non-padding) calibration tokens."""
    out: dict[str, torch.Tensor] = {}

    def visit(name, x):
        a = x.abs().amax(0)
        out[name] = a if name not in out else torch.maximum(out[name], a)

    visit_module_inputs(model, names, calibration, visit)
    return out


@torch.no_grad()
def shared_input_groups(model: nn.Module, names: list[str], batch: dict) -> list[list[str]]:
    """The named modules grouped by the tensor they read (BERT: query, key and value read one), from one batch."""
    seen: dict[int, tuple[torch.Tensor, list[str]]] = {}  # keeps each input alive, so ids stay unique

    def hook(name):
        def fn(_mod, args):
            seen.setdefault(id(args[0]), (args[0], []))[1].append(name)
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
    grouped = []
    for _, g in seen.values():  # a module applied at several depths sees several inputs: keep its first group
        g = [n for n in dict.fromkeys(g) if not any(n in h for h in grouped)]
        if g:
            grouped.append(g)
    return grouped + [[n] for n in names if not any(n in g for g in grouped)]


def apply(model: nn.Module, cfg: SmoothConfig, calibration: Calibration | None) -> StepReport:
    targets = dict((n, m) for n, m in select_modules(model, cfg.modules, nn.Linear, "smooth", cfg.exclude)
                   if not isinstance(m, SmoothedLinear))
    cal = require_calibration(calibration, "smooth")
    rep = StepReport("smooth", asdict(cfg))
    amax = input_absmax(model, list(targets), cal)
    layout = layout_of(model)
    # the adapter says which Linears read one tensor; a family without one is probed on one batch
    groups = (layout.shared_input_groups(list(targets)) if layout is not None
              else shared_input_groups(model, list(targets), next(cal.batches())))
    per_module = {}
    for group in groups:
        for name in group:
            check(name in amax, f"no calibration tokens reached {name}", "pass more calibration text")
        a = amax[group[0]].clamp_min(1e-5)
        w = torch.stack([targets[n].weight.detach().abs().amax(0) for n in group]).amax(0).clamp_min(1e-5)
        # the activation is multiplied by `scale` = 1/s; one scale module per shared input
        s = (a ** cfg.alpha / w ** (1 - cfg.alpha)).clamp(1e-2, 1e2)
        shared = None
        for name in group:
            new = SmoothedLinear(targets[name], 1.0 / s)
            if shared is None:
                shared = new.input_scale
            new.input_scale = shared
            set_submodule(model, name, new)
            per_module[name] = {"input_absmax_before": round(float(a.max()), 3),
                                "input_absmax_after": round(float((a / s).max()), 3),
                                "shares_scale_with": [n for n in group if n != name]}
            rep.modules.append(name)
    rep.params_before = rep.params_after = sum(p.numel() for p in model.parameters())
    rep.details["per_module"] = per_module
    return rep


METHODS.register("smooth")((SmoothConfig, apply))
