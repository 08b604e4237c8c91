"""DSTI (dense -> sparse mixture of experts with a dynamic expert count): four registered steps, in order.

- ``sparsify``: a short fine-tune that makes the FFN activations sparse (L1 on them) while distilling the
  dense model's last hidden state (MSE to a frozen copy), on the calibration text (``distill`` adds or
  swaps in a classifier's logits, KL at a temperature). Sparse activations are what lets a few experts carry
  a token: the neurons left out are the ones near zero anyway. A fine-tuned classifier may do better
  without this step (results/dsti/dsti_classifier_*.toml): moefy and the gates need no training of the model.
- ``moefy``: per block, the FFN's neurons -> ``experts`` groups of equal size by co-activation (balanced
  k-means on each neuron's |activation| over calibration tokens), and the FFN (ffn-up, ffn_activation,
  ffn-down of the family's adapter) -> ``MoEFeedForward`` (compress/moe.py) over the permuted W1 rows / W2
  columns. With every expert running it is the dense FFN exactly (only the neuron order changed).
- ``expert-gates``: per MoE layer, the gate (a linear map of the FFN input) is fitted by ridge least squares
  to each expert's output norm ||act(x W1_e^T + b1_e) W2_e^T||, on the cached inputs of the calibration text.
- ``dynamic-k``: the threshold tau per layer (expert e runs for a token when its score >= tau * the token's
  best score, the kernel's rule): a given ``threshold``, or the largest taus that keep ``budget`` of
  ``fidelity`` against the same model with every expert running, on the held-aside calibration text (the last
  ``holdout`` share, which the other steps do not train on): the mean-pooled cosine for an encoder, the share
  of unchanged predictions for a classifier. The taus and the experts' share on that text land in the step
  report (the manifest's compression block).

A ``distill`` step after dynamic-k (compress/distill.py) trains with the routing in the loop: the MoE layers
keep their taus while their blocks learn, so the skipped experts stay skipped and the attention and the experts
that run learn to make up for them (the shipped ``dsti`` recipe; the gates stay as fitted).

Exported, every MoE layer is one ``edgecomp.MoEFeedForward`` node (edgecomp/lower/moe.py): int8 experts
run by the custom-op kernel, whose cost follows the experts each token runs.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import EdgecompError
from . import METHODS
from .base import (Calibration, StepReport, check, last_hidden_state, n_params, pooled_embeddings, require_calibration,
                   set_submodule, visit_module_inputs)
from .moe import MoEFeedForward, activation_name, ffn_modules, moe_layers

HOLDOUT = 0.25  # the calibration text's last share: dynamic-k's held-aside text, unseen by the other steps


def split_calibration(cal: Calibration, holdout: float = HOLDOUT) -> tuple[Calibration, Calibration]:
    """(training part, held-aside part) of the calibration text; one text serves both when there is one."""
    n = len(cal.texts)
    cut = max(1, min(n - 1, int(round(n * (1 - holdout))))) if n > 1 else 1
    train = copy.copy(cal)
    train.texts = cal.texts[:cut]
    held = copy.copy(cal)
    held.texts = cal.texts[cut:] or cal.texts
    return train, held


def _real_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask.bool()] if x.dim() == 3 and x.shape[:2] == mask.shape else x.reshape(-1, x.shape[-1])


@torch.no_grad()
def _outputs_pass(model: nn.Module, cal: Calibration, modules: list[nn.Module], visit) -> None:
    """Run the calibration text; call visit(i, module, output, attention_mask) after modules[i] runs."""
    mask = {}
    hs = [m.register_forward_hook(lambda mod, _i, out, i=i: visit(i, mod, out, mask["m"])) for i, m in enumerate(modules)]
    try:
        for b in cal.batches():
            mask["m"] = b["attention_mask"]
            model(**b)
    finally:
        for h in hs:
            h.remove()


# --------------------------------------------------------------------------------------------------
# sparsify
DISTILL_TARGETS = ("auto", "hidden", "logits", "hidden+logits")


@dataclass
class SparsifyConfig:
    steps: int = 100
    lr: float = 1e-4
    l1: float = 0.2  # weight of mean |FFN activation| against the distillation MSE (relative to the target's power)
    batch_size: int = 16
    zero: float = 0.01  # |activation| below this counts as zero in the report
    # what the fine-tune keeps of the dense model: "hidden" (the last hidden state, every token), "logits"
    # (a classifier's decision: KL of the softened class distributions), "hidden+logits", or "auto" (logits
    # too when the model has a classification head)
    distill: str = "hidden"
    temperature: float = 2.0  # softens the logits' distributions for the KL term

    def __post_init__(self):
        check(self.distill in DISTILL_TARGETS, f"distill = {self.distill!r} is not one of {', '.join(DISTILL_TARGETS)}",
              'use distill = "auto"')
        check(self.temperature > 0, f"temperature = {self.temperature} is not positive", "use e.g. temperature = 2.0")
        check(self.steps >= 1, f"steps = {self.steps} is below 1", "use steps >= 1, e.g. 100")
        check(self.lr > 0, f"lr = {self.lr} is not positive", "use e.g. lr = 5e-5")
        check(self.l1 >= 0, f"l1 = {self.l1} is negative", "use l1 >= 0, e.g. 0.05")
        check(self.batch_size >= 1, f"batch_size = {self.batch_size} is below 1", "use e.g. batch_size = 16")


def _activation_modules(model: nn.Module, method: str) -> list[nn.Module]:
    _, blocks = ffn_modules(model, method)
    return [blk.get_submodule(act) for blk, _, act, _ in blocks]


def activation_sparsity(model: nn.Module, cal: Calibration, zero: float, method: str = "sparsify") -> float:
    """Share of FFN activations with |a| < ``zero`` over the real calibration tokens, all blocks."""
    acts = _activation_modules(model, method)
    counts = [0, 0]

    def visit(_i, _m, out, mask):
        a = _real_tokens(out, mask)
        counts[0] += int((a.abs() < zero).sum())
        counts[1] += a.numel()

    _outputs_pass(model, cal, acts, visit)
    return counts[0] / max(counts[1], 1)


@torch.no_grad()
def _has_class_head(model: nn.Module, batch: dict) -> bool:
    """A sequence classifier's logits are one row per text; a causal LM's or a token classifier's, one per token."""
    logits = getattr(model(**batch), "logits", None)
    return logits is not None and logits.dim() == 2


def _distill_targets(model: nn.Module, cfg: SparsifyConfig, batch: dict) -> tuple[bool, bool]:
    """(hidden, logits): which of the dense model's outputs the fine-tune keeps."""
    if cfg.distill != "auto":
        return "hidden" in cfg.distill, "logits" in cfg.distill
    return True, _has_class_head(model, batch)


def _forward(model: nn.Module, batch: dict, logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(last hidden state, logits or None) in one forward pass."""
    if not logits:
        return last_hidden_state(model, batch), None
    out = model(**batch, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def sparsify(model: nn.Module, cfg: SparsifyConfig, calibration: Calibration | None) -> StepReport:
    cal, _ = split_calibration(require_calibration(calibration, "sparsify"))
    acts = _activation_modules(model, "sparsify")
    rep = StepReport("sparsify", asdict(cfg), params_before=n_params(model), params_after=n_params(model))
    before = activation_sparsity(model, cal, cfg.zero)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    batches = list(cal.batches(cfg.batch_size))
    keep_hidden, keep_logits = _distill_targets(model, cfg, batches[0])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    store: list[torch.Tensor] = []
    mask = {}
    hs = [a.register_forward_hook(lambda _m, _i, out: store.append(_real_tokens(out, mask["m"]))) for a in acts]
    T = cfg.temperature
    # eval mode while training: dropout would add noise the distillation then chases (and the MSE would
    # not start at zero); the gradients are the same either way
    losses = []
    try:
        for step in range(cfg.steps):
            b = batches[step % len(batches)]
            mask["m"] = b["attention_mask"]
            m = b["attention_mask"].unsqueeze(-1).float()
            with torch.no_grad():
                want, want_logits = _forward(teacher, b, keep_logits)
            store.clear()
            got, got_logits = _forward(model, b, keep_logits)
            mse = (((got - want) ** 2) * m).sum() / (m.sum() * got.shape[-1])
            l1 = torch.stack([a.abs().mean() for a in store]).mean()
            loss = cfg.l1 * l1
            if keep_hidden:
                loss = loss + mse / want.pow(2).mean().clamp_min(1e-12)
            kl = torch.zeros(())
            if keep_logits:
                # T^2 keeps the gradient's scale independent of the temperature (Hinton et al., 2015)
                kl = torch.nn.functional.kl_div(torch.log_softmax(got_logits / T, -1), torch.log_softmax(want_logits / T, -1),
                                                log_target=True, reduction="batchmean") * T * T
                loss = loss + kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append((float(mse.detach()), float(l1.detach()), float(kl.detach())))
    finally:
        for h in hs:
            h.remove()
        model.eval()
    rep.details = {"activation_sparsity_before": round(before, 4),
                   "activation_sparsity_after": round(activation_sparsity(model, cal, cfg.zero), 4),
                   "distilled": "+".join(k for k, on in (("hidden", keep_hidden), ("logits", keep_logits)) if on),
                   "mse_first_last": [round(losses[0][0], 6), round(losses[-1][0], 6)],
                   "l1_first_last": [round(losses[0][1], 5), round(losses[-1][1], 5)],
                   "train_texts": len(cal.texts)}
    if keep_logits:
        rep.details["kl_first_last"] = [round(losses[0][2], 6), round(losses[-1][2], 6)]
    rep.modules = [f"{type(a).__name__}" for a in acts[:1]]
    return rep


# --------------------------------------------------------------------------------------------------
# moefy
@dataclass
class MoefyConfig:
    experts: int = 16
    iterations: int = 15  # balanced k-means rounds
    max_tokens: int = 4096  # calibration tokens per neuron's activation pattern
    seed: int = 0

    def __post_init__(self):
        check(self.experts >= 2, f"experts = {self.experts} is below 2", "use e.g. experts = 16")
        check(self.iterations >= 1, f"iterations = {self.iterations} is below 1", "use e.g. iterations = 15")
        check(self.max_tokens >= 1, f"max_tokens = {self.max_tokens} is below 1", "use e.g. max_tokens = 4096")


def balanced_kmeans(x: torch.Tensor, k: int, iterations: int, seed: int = 0) -> torch.Tensor:
    """Labels [n] of ``x`` [n, f] into ``k`` clusters of exactly n/k points each: k-means whose assignment
    step fills clusters in order of the points' best-vs-second-best distance margin up to capacity."""
    n = x.shape[0]
    cap = n // k
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.normalize(x.double(), dim=1)
    centers = x[torch.randperm(n, generator=g)[:k]].clone()
    labels = torch.arange(n) // cap
    for _ in range(iterations):
        d = torch.cdist(x, centers)  # [n, k]
        best2 = d.topk(2, dim=1, largest=False).values
        order = torch.argsort(best2[:, 1] - best2[:, 0], descending=True)  # most decided first
        pref = torch.argsort(d, dim=1)
        fill = torch.zeros(k, dtype=torch.long)
        new = torch.empty(n, dtype=torch.long)
        for i in order.tolist():
            for c in pref[i].tolist():
                if fill[c] < cap:
                    new[i] = c
                    fill[c] += 1
                    break
        if torch.equal(new, labels):
            break
        labels = new
        for c in range(k):
            centers[c] = nn.functional.normalize(x[labels == c].mean(0), dim=0)
    return labels


@torch.no_grad()
def moefy(model: nn.Module, cfg: MoefyConfig, calibration: Calibration | None) -> StepReport:
    cal, _ = split_calibration(require_calibration(calibration, "moefy"))
    layout, blocks = ffn_modules(model, "moefy")
    rep = StepReport("moefy", asdict(cfg))
    per_block = {}
    for j, (blk, up_name, act_name, down_name) in enumerate(blocks):
        up, act, down = blk.get_submodule(up_name), blk.get_submodule(act_name), blk.get_submodule(down_name)
        if not isinstance(up, nn.Linear) or not isinstance(down, nn.Linear):
            raise EdgecompError(f"moefy: {layout.block_paths[j]}.{up_name} is no longer a plain Linear",
                                "run moefy before any step that replaces the feed-forward layers")
        width, hidden = up.out_features, up.in_features
        if width % cfg.experts:
            raise EdgecompError(f"moefy: experts = {cfg.experts} does not divide the FFN width {width}",
                                f"use a divisor of {width}, e.g. experts = {_divisor_near(width, cfg.experts)}")
        activation = activation_name(act)
        if activation is None:
            raise EdgecompError(f"moefy: the FFN activation {type(act).__name__} has no MoE kernel",
                                "use a model whose FFN activation is GELU (erf or tanh) or ReLU")
        rows: list[torch.Tensor] = []
        mask = {}

        def hook(_m, _i, out):
            rows.append(_real_tokens(out, mask["m"]).abs().float())

        h = act.register_forward_hook(hook)
        try:
            for b in cal.batches():
                mask["m"] = b["attention_mask"]
                model(**b)
        finally:
            h.remove()
        a = torch.cat(rows)[: cfg.max_tokens]  # [tokens, width]
        labels = balanced_kmeans(a.T, cfg.experts, cfg.iterations, cfg.seed + j)
        order = torch.argsort(labels * width + torch.arange(width))  # expert by expert, neuron order kept inside
        d = width // cfg.experts
        w1 = up.weight[order].reshape(cfg.experts, d, hidden)
        b1 = (up.bias[order] if up.bias is not None else torch.zeros(width)).reshape(cfg.experts, d)
        w2 = down.weight[:, order].reshape(hidden, cfg.experts, d).permute(1, 0, 2)
        b2 = down.bias if down.bias is not None else torch.zeros(hidden)
        before = n_params(up) + n_params(down)
        moe = MoEFeedForward(w1, b1, w2, b2, activation, 0.0).to(up.weight.dtype)
        set_submodule(blk, up_name, moe)
        set_submodule(blk, act_name, nn.Identity())
        set_submodule(blk, down_name, nn.Identity())
        rep.params_before += before
        rep.params_after += n_params(moe)
        per_block[layout.block_paths[j]] = {"width": width, "experts": cfg.experts, "expert_size": d,
                                            "activation": activation, "tokens": int(a.shape[0])}
        rep.modules.append(f"{layout.block_paths[j]}.{up_name}")
    rep.details["per_block"] = per_block
    return rep


def _divisor_near(width: int, want: int) -> int:
    return min((e for e in range(2, width + 1) if width % e == 0), key=lambda e: (abs(e - want), e))


# --------------------------------------------------------------------------------------------------
# expert-gates
@dataclass
class ExpertGatesConfig:
    ridge: float = 1e-3  # added to the input covariance diagonal, relative to its mean
    max_tokens: int = 8192

    def __post_init__(self):
        check(self.ridge >= 0, f"ridge = {self.ridge} is negative", "use ridge >= 0, e.g. 0.001")
        check(self.max_tokens >= 1, f"max_tokens = {self.max_tokens} is below 1", "use e.g. max_tokens = 8192")


def _require_moe(model: nn.Module, method: str) -> list[tuple[str, MoEFeedForward]]:
    layers = moe_layers(model)
    if not layers:
        raise EdgecompError(f"{method}: the model has no MoE feed-forward layers", "run a moefy step before it")
    return layers


def moe_inputs(model: nn.Module, cal: Calibration, max_tokens: int) -> dict[str, torch.Tensor]:
    """Each MoE layer's input on the real calibration tokens (every expert running), up to max_tokens."""
    layers = _require_moe(model, "expert-gates")
    saved = [m.threshold for _, m in layers]
    for _, m in layers:
        m.threshold = 0.0
    got: dict[str, list] = {n: [] for n, _ in layers}
    try:  # the shared calibration pass over the layers' inputs (real tokens, [tokens, features])
        visit_module_inputs(model, list(got), cal, lambda n, x: got[n].append(x))
    finally:
        for (_, m), t in zip(layers, saved):
            m.threshold = t
    return {n: torch.cat(v)[:max_tokens] for n, v in got.items()}


@torch.no_grad()
def expert_gates(model: nn.Module, cfg: ExpertGatesConfig, calibration: Calibration | None) -> StepReport:
    cal, held = split_calibration(require_calibration(calibration, "expert-gates"))
    layers = _require_moe(model, "expert-gates")
    rep = StepReport("expert-gates", asdict(cfg))
    inputs = moe_inputs(model, cal, cfg.max_tokens)
    held_inputs = moe_inputs(model, held, cfg.max_tokens)
    per_layer = {}
    for name, m in layers:
        x = inputs[name].double()
        y = m.expert_outputs(x.to(m.w1.dtype)).norm(dim=-1).double()  # [T, E]
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
        g = xa.T @ xa
        g += cfg.ridge * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype)
        sol = torch.linalg.solve(g, xa.T @ y)  # [H+1, E]
        m.gate.weight.copy_(sol[:-1].T.to(m.gate.weight.dtype))
        m.gate.bias.copy_(sol[-1].to(m.gate.bias.dtype))
        # how well the gate ranks the experts on held-aside tokens: the true top expert's rank agreement
        xh = held_inputs[name]
        true = m.expert_outputs(xh).norm(dim=-1)
        pred = m.scores(xh)
        top_hit = float((pred.argmax(-1) == true.argmax(-1)).float().mean())
        rel_err = float(((pred - true).norm() / true.norm().clamp_min(1e-12)))
        per_layer[name] = {"tokens": int(x.shape[0]), "held_top1_agreement": round(top_hit, 4),
                           "held_rel_error": round(rel_err, 4)}
        rep.modules.append(f"{name}.gate")
    rep.params_before = rep.params_after = n_params(model)
    rep.details["per_layer"] = per_layer
    return rep


# --------------------------------------------------------------------------------------------------
# dynamic-k
TAU_GRID = [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9]


FIDELITY = ("auto", "pooled-cosine", "logits-agreement")


@dataclass
class DynamicKConfig:
    threshold: float | None = None  # one tau for every layer (no search)
    thresholds: list = field(default_factory=list)  # one tau per MoE layer (no search)
    budget: float = 0.99  # else: the fidelity vs every expert running that the search keeps
    # what the budget measures on the held-aside text: "pooled-cosine" (mean-pooled last hidden state, the
    # embedding a sentence encoder ships), "logits-agreement" (share of texts whose predicted class stays,
    # what a classifier's user sees), or "auto" (logits-agreement when the model has a classification head)
    fidelity: str = "auto"
    # or a compute budget: the highest-fidelity taus whose mean expert share on the held-aside text is at most
    # this (greedy: each round raises the one layer's tau that loses the least fidelity per share saved)
    max_share: float | None = None
    per_layer: bool = True  # the search refines each layer's tau after the common one
    grid: list = field(default_factory=lambda: list(TAU_GRID))

    def __post_init__(self):
        check(self.fidelity in FIDELITY, f"fidelity = {self.fidelity!r} is not one of {', '.join(FIDELITY)}",
              'use fidelity = "auto"')
        taus = ([self.threshold] if self.threshold is not None else []) + list(self.thresholds) + list(self.grid)
        for t in taus:
            check(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0,
                  f"threshold {t!r} is outside [0, 1]", "use a tau in [0, 1] (0 runs every expert)")
        check(self.threshold is None or not self.thresholds, "give threshold or thresholds, not both",
              "one tau for all layers (threshold) or one per layer (thresholds)")
        check(self.max_share is None or 0.0 < self.max_share <= 1.0, f"max_share = {self.max_share} is outside (0, 1]",
              "use a share of the experts, e.g. max_share = 0.45")
        check(self.max_share is None or (self.threshold is None and not self.thresholds),
              "give max_share or threshold(s), not both", "a fixed tau or a compute budget for the search")
        check(0.0 < self.budget <= 1.0, f"budget = {self.budget} is outside (0, 1]", "use a cosine, e.g. budget = 0.99")
        check(bool(self.grid), "grid is empty", "list the taus the search tries, e.g. grid = [0.1, 0.2, 0.3]")


def expert_share(model: nn.Module, cal: Calibration) -> list[float]:
    """Per MoE layer: the mean share of experts each real token runs on ``cal``."""
    layers = _require_moe(model, "dynamic-k")
    acc = [[0.0, 0] for _ in layers]

    def visit(i, mod, _out, mask):
        sel = _real_tokens(mod.last_selection, mask).float()
        acc[i][0] += float(sel.sum())
        acc[i][1] += sel.numel()

    _outputs_pass(model, cal, [m for _, m in layers], visit)
    return [round(a / max(k, 1), 4) for a, k in acc]


def ffn_macs_per_token(model: nn.Module, cal: Calibration) -> dict:
    """FFN multiply-adds per real token, summed over blocks: MoE layers at the experts they run (+ the
    gate), against their dense width."""
    layers = _require_moe(model, "dynamic-k")
    share = expert_share(model, cal)
    macs = dense = 0
    for (_, m), s in zip(layers, share):
        full = 2 * m.experts * m.expert_size * m.hidden
        dense += full
        macs += s * full + m.experts * m.hidden
    return {"ffn_macs_per_token": int(round(macs)), "dense_ffn_macs_per_token": dense,
            "ratio": round(macs / dense, 4), "expert_share": share}


def _predictions(model: nn.Module, cal: Calibration) -> torch.Tensor:
    return torch.cat([model(**b).logits.argmax(-1) for b in cal.batches()])


def _one_step_up(taus: list[float], grid: list[float], only: int | None = None):
    """Each layer's taus with that layer (or only layer ``only``) one grid step higher, where it can go."""
    for i in range(len(taus)) if only is None else (only,):
        up = [t for t in grid if t > taus[i]]
        if up:
            yield [*taus[:i], up[0], *taus[i + 1:]]


def _taus_for_share(model, layers, held: Calibration, cfg: DynamicKConfig, set_taus) -> list[float]:
    """Raise one layer's tau per round, the one losing the least fidelity per unit of expert share saved,
    until the mean share on the held-aside text is at most ``cfg.max_share`` (or every tau is at the grid's top)."""
    n = len(layers)
    grid = sorted(set(float(t) for t in cfg.grid) | {0.0})
    taus = [0.0] * n
    set_taus(taus)
    fidelity = _Fidelity(cfg.fidelity, model, held)

    fid, share = fidelity.with_share(layers)
    while share > cfg.max_share:
        best = None
        for trial in _one_step_up(taus, grid):
            set_taus(trial)
            f, s = fidelity.with_share(layers)
            cost = (fid - f) / max(share - s, 1e-6)
            if best is None or cost < best[0]:
                best = (cost, trial, s, f)
        if best is None:
            break
        _, taus, share, fid = best
    set_taus(taus)
    return taus


class _Fidelity:
    """The budget's yardstick on the held-aside text, against the same model with every expert running."""

    def __init__(self, kind: str, model: nn.Module, held: Calibration):
        head = _has_class_head(model, next(held.batches()))
        self.kind = kind if kind != "auto" else ("logits-agreement" if head else "pooled-cosine")
        if self.kind == "logits-agreement" and not head:
            raise EdgecompError("dynamic-k: fidelity = \"logits-agreement\" needs a classification head, and this model has none",
                                'use fidelity = "auto" (the mean-pooled cosine for an encoder)')
        self.model, self.held = model, held
        self.ref = self._outputs()

    def _outputs(self) -> torch.Tensor:
        return _predictions(self.model, self.held) if self.kind == "logits-agreement" else pooled_embeddings(self.model, self.held)

    def _score(self, got: torch.Tensor) -> float:
        if self.kind == "logits-agreement":
            return float((got == self.ref).float().mean())
        return float(nn.functional.cosine_similarity(self.ref, got, dim=-1).mean())

    def __call__(self) -> float:
        return self._score(self._outputs())

    def with_share(self, layers) -> tuple[float, float]:
        """(fidelity, mean expert share over the layers' real tokens) from one pass over the held-aside text."""
        acc = [0.0, 0]
        mask = {}

        def count(mod, _i, _out):
            sel = _real_tokens(mod.last_selection, mask["m"]).float()
            acc[0] += float(sel.sum())
            acc[1] += sel.numel()

        hs = [self.model.register_forward_pre_hook(lambda _m, _a, kw: mask.update(m=kw["attention_mask"]), with_kwargs=True)]
        hs += [m.register_forward_hook(count) for _, m in layers]
        try:
            fid = self()
        finally:
            for h in hs:
                h.remove()
        return fid, acc[0] / max(acc[1], 1)


@torch.no_grad()
def dynamic_k(model: nn.Module, cfg: DynamicKConfig, calibration: Calibration | None) -> StepReport:
    layers = _require_moe(model, "dynamic-k")
    rep = StepReport("dynamic-k", asdict(cfg))
    rep.params_before = rep.params_after = n_params(model)
    n = len(layers)
    if cfg.thresholds and len(cfg.thresholds) != n:
        raise EdgecompError(f"dynamic-k: {len(cfg.thresholds)} thresholds for {n} MoE layers", f"give {n} taus, one per layer")

    def set_taus(taus):
        for (_, m), t in zip(layers, taus):
            m.threshold = float(t)

    held = split_calibration(calibration)[1] if calibration is not None else None
    if cfg.threshold is not None or cfg.thresholds:
        taus = list(cfg.thresholds) or [cfg.threshold] * n
        chosen = "given"
    elif cfg.max_share is not None:
        held = require_calibration(held, "dynamic-k")
        taus, chosen = _taus_for_share(model, layers, held, cfg, set_taus), "search (max_share)"
    else:
        held = require_calibration(held, "dynamic-k")
        set_taus([0.0] * n)
        fidelity = _Fidelity(cfg.fidelity, model, held)
        grid = sorted(set(float(t) for t in cfg.grid) | {0.0})
        # the common tau: the largest grid value that keeps the budget
        best = 0.0
        for t in grid:
            set_taus([t] * n)
            if fidelity() >= cfg.budget:
                best = t
            else:
                break
        taus = [best] * n
        if cfg.per_layer:  # then each layer one grid step higher while the budget holds, round robin
            moved = True
            while moved:
                moved = False
                for i in range(n):
                    trial = next((t for t in _one_step_up(taus, grid, only=i)), None)
                    if trial is None:
                        continue
                    set_taus(trial)
                    if fidelity() >= cfg.budget:
                        taus, moved = trial, True
        chosen = "search"
    set_taus(taus)
    rep.details = {"thresholds": [round(float(t), 4) for t in taus], "chosen_by": chosen,
                   "layers": [name for name, _ in layers]}
    if held is not None:
        set_taus([0.0] * n)
        fidelity = _Fidelity(cfg.fidelity, model, held)
        cosine = fidelity if fidelity.kind == "pooled-cosine" else _Fidelity("pooled-cosine", model, held)
        set_taus(taus)
        held_fidelity = fidelity()
        rep.details.update({"held_texts": len(held.texts), "fidelity": fidelity.kind, "held_fidelity": round(held_fidelity, 5),
                            "held_cos_vs_all_experts": round(held_fidelity if cosine is fidelity else cosine(), 5),
                            **ffn_macs_per_token(model, held)})
    rep.modules = [name for name, _ in layers]
    return rep


METHODS.register("sparsify")((SparsifyConfig, sparsify))
METHODS.register("moefy")((MoefyConfig, moefy))
METHODS.register("expert-gates")((ExpertGatesConfig, expert_gates))
METHODS.register("dynamic-k")((DynamicKConfig, dynamic_k))
