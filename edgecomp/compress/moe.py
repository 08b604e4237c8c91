"""``MoEFeedForward``: a transformer block's feed-forward layer as a mixture of experts with a dynamic expert
count per token, the PyTorch side of ``edgecomp.MoEFeedForward`` (edgecomp/kernels; the same contract).

Experts are equal-size groups of the FFN's neurons (moefy chooses the groups, so the dense FFN is exactly
the sum of its experts); the gate is a small linear predictor of each expert's output norm from the FFN
input (``scores = relu(x G^T + g)``, trained by expert-gates); expert e runs for token t when
``scores[t, e] >= threshold * max_e scores[t, :]`` (the top expert always runs; threshold 0 is dense).

It replaces the FFN's up Linear (the adapter's ffn-up role) and makes the activation (``ffn_activation``)
and the down Linear (ffn-down) identities, so the block's residual + norm around them are untouched. In
eager PyTorch the unselected experts are computed and zeroed (exactly the contract, on any runtime); under
``torch.onnx.export`` the layer lowers to one ``edgecomp.MoEFeedForward`` node over float weights
(edgecomp/lower/moe.py turns it into int8 experts for quantized artifacts and adds the standard-op fallback).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import EdgecompError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


def activation_name(module: nn.Module) -> str | None:
    """The contract's name of an FFN activation module (transformers' or torch's), None when it has none."""
    name = type(module).__name__
    if isinstance(module, nn.ReLU) or name == "ReLU":
        return "relu"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if name in ("GELUActivation",):
        return "gelu"
    if name in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation", "GELUTanhActivation"):
        return "gelu_tanh"
    return None


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(x)
    return nn.functional.gelu(x, approximate="tanh" if activation == "gelu_tanh" else "none")


class _MoEOp(torch.autograd.Function):
    """The kernel's contract as one ONNX node at export time (eager: the same computation, dense + mask)."""

    @staticmethod
    def forward(ctx, x, scores, w1, s1, b1, w2, s2, b2, threshold: float, activation: str):
        return moe_forward(x, scores, w1 * s1[..., None], b1, w2 * s2[..., None], b2, threshold, activation)

    @staticmethod
    def symbolic(g, x, scores, w1, s1, b1, w2, s2, b2, threshold, activation):
        out = g.op("edgecomp::MoEFeedForward", x, scores, w1, s1, b1, w2, s2, b2,
                   threshold_f=float(threshold), activation_s=activation)
        out.setType(x.type())
        return out


def selection(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """[..., E] bool: which experts run for each token (the contract's rule, float32 as the kernel)."""
    return scores >= torch.tensor(threshold, dtype=scores.dtype) * scores.amax(-1, keepdim=True)


def fake_int8_rows(t: torch.Tensor) -> torch.Tensor:
    """The kernel's symmetric int8 per row of the last axis (scale max|row| / 127, round half to even, an
    all-zero row stays zero), straight through: the forward sees the rounding, the gradient passes as is."""
    scale = t.detach().abs().amax(-1, keepdim=True) / 127
    q = torch.round(t / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(-127, 127) * scale
    return t + (q - t).detach()


def moe_forward(x, scores, w1, b1, w2, b2, threshold: float, activation: str, int8: bool = False) -> torch.Tensor:
    """Y = B2 + sum over selected experts of act(x W1_e^T + B1_e) W2_e^T, computed densely then masked.
    ``int8``: with the int8 kernel's rounding (weights per row, X per token, hidden per token and expert)."""
    q = fake_int8_rows if int8 else (lambda t: t)
    pre = torch.einsum("...h,edh->...ed", q(x), q(w1)) + b1
    hid = activate(pre, activation) * selection(scores, threshold).to(x.dtype)[..., None]
    return torch.einsum("...ed,ehd->...h", q(hid), q(w2)) + b2


class MoEFeedForward(nn.Module):
    """x [..., H] -> y [..., H]: the FFN (up, activation, down) as E experts of D neurons plus a gate."""

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                 activation: str = "gelu", threshold: float = 0.0):
        super().__init__()
        e, d, h = w1.shape
        if activation not in ACTIVATIONS:
            raise EdgecompError(f"the FFN activation {activation!r} has no MoE kernel", f"use one of {', '.join(ACTIVATIONS)}")
        self.experts, self.expert_size, self.hidden = e, d, h
        self.activation = activation
        self.threshold = float(threshold)
        self.w1 = nn.Parameter(w1.detach().clone())  # [E, D, H]
        self.b1 = nn.Parameter(b1.detach().clone())  # [E, D]
        self.w2 = nn.Parameter(w2.detach().clone())  # [E, H, D]
        self.b2 = nn.Parameter(b2.detach().clone())  # [H]
        # the contract's per-row weight scales; ones for float weights (lower/moe.py writes int8 + scales)
        self.register_buffer("s1", torch.ones(e, d), persistent=False)
        self.register_buffer("s2", torch.ones(e, h), persistent=False)
        self.gate = nn.Linear(h, e)
        with torch.no_grad():  # untrained: every expert scores alike, so any threshold runs all of them
            self.gate.weight.zero_()
            self.gate.bias.fill_(1.0)
        self.last_selection: torch.Tensor | None = None  # [..., E] of the last forward (MAC counting)
        # eager forward with the int8 kernel's rounding (quant-aware distillation sets it while it trains)
        self.fake_int8 = False

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.gate(x))

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """[..., E, H]: each expert's contribution (without B2), the gates' training target's source."""
        hid = activate(torch.einsum("...h,edh->...ed", x, self.w1) + self.b1, self.activation)
        return torch.einsum("...ed,ehd->...eh", hid, self.w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.scores(x)
        if torch.onnx.is_in_onnx_export():
            return _MoEOp.apply(x, scores, self.w1, self.s1, self.b1, self.w2, self.s2, self.b2,
                                self.threshold, self.activation)
        self.last_selection = selection(scores, self.threshold).detach()
        return moe_forward(x, scores, self.w1, self.b1, self.w2, self.b2, self.threshold, self.activation,
                           int8=self.fake_int8)

    def extra_repr(self) -> str:
        return (f"experts={self.experts}, expert_size={self.expert_size}, hidden={self.hidden}, "
                f"activation={self.activation}, threshold={self.threshold}")


def ffn_modules(model: nn.Module, method: str):
    """Per block: (block, up path, activation path, down path) from the family's adapter."""
    from ..archs import require_layout

    layout = require_layout(model, method, needs_linear=True)
    a = layout.adapter
    if "ffn-up" not in a.roles or "ffn-down" not in a.roles or a.ffn_activation is None or "ffn-gate" in a.roles \
            or a.ffn_halves != 1:
        raise EdgecompError(f"{method}: the {a.family} adapter has no plain up -> activation -> down feed-forward layer",
                            "use a BERT-style encoder (its adapter names ffn-up, ffn-down and ffn_activation)")
    return layout, [(blk, a.roles["ffn-up"], a.ffn_activation, a.roles["ffn-down"]) for blk in layout.blocks]


def moe_layers(model: nn.Module) -> list[tuple[str, MoEFeedForward]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoEFeedForward)]


def set_threshold(model: nn.Module, threshold: float | list[float]) -> None:
    layers = moe_layers(model)
    taus = threshold if isinstance(threshold, (list, tuple)) else [threshold] * len(layers)
    for (_, m), t in zip(layers, taus):
        m.threshold = float(t)
