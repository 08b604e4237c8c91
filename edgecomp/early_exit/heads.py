"""Exit heads: a small classifier after every transformer layer but the last (the model's own classifier
is the last exit, so "never exit early" is exactly the original model).

Two kinds, registered by name:
- ``plain``: head i sees the pooled state of layer i.
- ``ztw`` (Zero Time Waste, Wołczyk et al. 2021): cascade — head i also sees the layer-normalised,
  gradient-stopped logits of head i-1 — and geometric ensembling — exit i predicts
  q_i = Σ_{j≤i} exp(w_ij)·log softmax(z_j) + b_i with learned weights and a per-class bias.

Training keeps the backbone frozen and runs on cached pooled states (``ExitFeatures``), so it takes
seconds to minutes on a CPU: heads first (cross-entropy over all heads, optionally mixed with the final
classifier's probabilities), then, for ``ztw``, the ensemble weights on rows the heads did not see.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EdgecompError
from ..registry import Registry

HEAD_KINDS: Registry[type] = Registry("exit-head kind")


@dataclass(frozen=True)
class HeadsConfig:
    kind: str = "plain"  # plain | ztw
    pooling: str = "mean"  # mean | cls: what a head reads from its layer's hidden states
    hidden: int = 128  # width of the head's hidden layer (0: a linear head)
    distill: float = 0.5  # weight of the final classifier's probabilities vs the gold label in the loss
    epochs: int = 30  # measured on held-aside sentences: 10 epochs left the heads undertrained (+0.7 points at layer 1 from 30)
    lr: float = 2e-3
    batch_size: int = 256
    ensemble_epochs: int = 30
    ensemble_fraction: float = 0.2  # rows held out from head training to fit the ztw ensemble
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict | None) -> "HeadsConfig":
        d = dict(d or {})
        if "heads" in d and "kind" not in d:
            d["kind"] = d.pop("heads")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# --- pooled hidden states, cached --------------------------------------------------------------------
@dataclass
class ExitFeatures:
    pooled: np.ndarray  # [N, L, H] float32: the pooled state after each layer 1..L
    final_logits: np.ndarray  # [N, C]: the model's own classifier
    labels: np.ndarray  # [N]


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def model_fingerprint(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def extract_features(model, tokenizer, texts: list[str], labels: list[int], pooling: str, max_length: int = 128,
                     batch_size: int = 64, cache: Path | None = None) -> ExitFeatures:
    """Run the frozen backbone once over ``texts``; keep each layer's pooled state and the final logits."""
    if cache is not None and cache.exists():
        z = np.load(cache)
        return ExitFeatures(z["pooled"], z["final_logits"], z["labels"])
    order = np.argsort([len(t) for t in texts])  # similar lengths per batch: little padding
    L, H = model.config.num_hidden_layers, model.config.hidden_size
    pooled = np.zeros((len(texts), L, H), np.float32)
    final = np.zeros((len(texts), model.config.num_labels), np.float32)
    with torch.inference_mode():
        for b in range(0, len(texts), batch_size):
            idx = order[b : b + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            for layer in range(L):
                pooled[idx, layer] = pool_hidden(out.hidden_states[layer + 1], enc["attention_mask"], pooling).numpy()
            final[idx] = out.logits.numpy()
    feats = ExitFeatures(pooled, final, np.asarray(labels, np.int64))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.stem}.tmp-{os.getpid()}.npz")
        np.savez(tmp, pooled=pooled, final_logits=final, labels=feats.labels)
        os.replace(tmp, cache)
    return feats


# --- the heads -----------------------------------------------------------------------------------------
def _mlp(d_in: int, hidden: int, n_classes: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(d_in, n_classes)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, n_classes))


class ExitHeads(nn.Module):
    """Heads for layers 1..L-1 (``n_exits`` = L-1). ``exit(i, pooled, state) -> (prediction, state)``:
    ``state`` carries what later exits need from earlier ones (None for plain heads)."""

    kind = "base"

    def __init__(self, n_exits: int, hidden_size: int, n_classes: int, cfg: HeadsConfig):
        super().__init__()
        self.n_exits, self.n_classes, self.pooling = n_exits, n_classes, cfg.pooling
        self.cfg = cfg

    def exit(self, i: int, pooled: torch.Tensor, state):
        raise NotImplementedError

    def all_exits(self, pooled: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(head logits z_i, exit predictions q_i) for i < n_exits, from pooled [N, >=n_exits, H]."""
        raise NotImplementedError


@HEAD_KINDS.register("plain")
class PlainHeads(ExitHeads):
    kind = "plain"

    def __init__(self, n_exits, hidden_size, n_classes, cfg):
        super().__init__(n_exits, hidden_size, n_classes, cfg)
        self.heads = nn.ModuleList(_mlp(hidden_size, cfg.hidden, n_classes) for _ in range(n_exits))

    def exit(self, i, pooled, state):
        return self.heads[i](pooled), None

    def all_exits(self, pooled):
        z = [self.heads[i](pooled[:, i]) for i in range(self.n_exits)]
        return z, z


@HEAD_KINDS.register("ztw")
class ZTWHeads(ExitHeads):
    kind = "ztw"

    def __init__(self, n_exits, hidden_size, n_classes, cfg):
        super().__init__(n_exits, hidden_size, n_classes, cfg)
        self.heads = nn.ModuleList(
            _mlp(hidden_size + (n_classes if i else 0), cfg.hidden, n_classes) for i in range(n_exits)
        )
        # w[i, j] for j <= i; exp(w) >= 0. Start as "trust your own head": w_ii = 0, earlier heads e^-3.
        w = torch.full((n_exits, n_exits), -3.0)
        w.diagonal().zero_()
        self.ens_w = nn.Parameter(w)
        self.ens_b = nn.Parameter(torch.zeros(n_exits, n_classes))

    def head_logits(self, i, pooled, prev_logprobs):
        if i == 0:
            return self.heads[0](pooled)
        # LayerNorm(log softmax z) == LayerNorm(z): the cascade input is recovered from the ensemble state.
        prev = F.layer_norm(prev_logprobs.detach(), (self.n_classes,))
        return self.heads[i](torch.cat([pooled, prev], -1))

    def ensemble(self, i, logprobs_stack):
        w = torch.exp(self.ens_w[i, : i + 1])  # [i+1]
        return (logprobs_stack * w[None, :, None]).sum(1) + self.ens_b[i]

    def exit(self, i, pooled, state):
        """state: log-probabilities of heads 0..i-1, [N, i, C] (None at i = 0)."""
        z = self.head_logits(i, pooled, None if state is None else state[:, -1])
        logp = F.log_softmax(z, -1).unsqueeze(1)
        stack = logp if state is None else torch.cat([state, logp], 1)
        return self.ensemble(i, stack), stack

    def all_exits(self, pooled):
        zs, qs, state = [], [], None
        for i in range(self.n_exits):
            z = self.head_logits(i, pooled[:, i], None if state is None else state[:, -1])
            logp = F.log_softmax(z, -1).unsqueeze(1)
            state = logp if state is None else torch.cat([state, logp], 1)
            zs.append(z)
            qs.append(self.ensemble(i, state))
        return zs, qs


def _soft_ce(logits, labels, teacher_probs, distill: float):
    ce = F.cross_entropy(logits, labels)
    if distill <= 0:
        return ce
    kd = -(teacher_probs * F.log_softmax(logits, -1)).sum(-1).mean()
    return (1 - distill) * ce + distill * kd


def train_heads(feats: ExitFeatures, cfg: HeadsConfig, log=None) -> ExitHeads:
    """Fit the heads on cached features (backbone frozen); for ztw then the ensemble on held-out rows."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    N, L, H = feats.pooled.shape
    C = feats.final_logits.shape[1]
    if L < 2:
        raise EdgecompError("the model has a single layer: there is nothing to exit early from",
                            "export without --early-exit")
    heads = HEAD_KINDS.get(cfg.kind)(L - 1, H, C, cfg)
    pooled = torch.from_numpy(np.ascontiguousarray(feats.pooled[:, : L - 1], dtype=np.float32))
    labels = torch.from_numpy(feats.labels)
    teacher = torch.softmax(torch.from_numpy(feats.final_logits), -1)
    perm = rng.permutation(N)
    n_ens = int(N * cfg.ensemble_fraction) if cfg.kind == "ztw" else 0
    head_rows, ens_rows = perm[n_ens:], perm[:n_ens]

    head_params = [p for n, p in heads.named_parameters() if not n.startswith("ens_")]
    opt = torch.optim.AdamW(head_params, lr=cfg.lr, weight_decay=1e-2)
    steps = cfg.epochs * -(-len(head_rows) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    heads.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(head_rows)
        for b in range(0, len(order), cfg.batch_size):
            idx = torch.from_numpy(order[b : b + cfg.batch_size])
            zs, _ = heads.all_exits(pooled[idx])
            loss = sum(_soft_ce(z, labels[idx], teacher[idx], cfg.distill) for z in zs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if log:
            log(f"  exit heads ({cfg.kind}) epoch {epoch + 1}/{cfg.epochs}: loss {loss.item() / len(zs):.3f}")
    heads.eval()
    if cfg.kind == "ztw" and n_ens:
        for n, p in heads.named_parameters():
            p.requires_grad_(n.startswith("ens_"))
        opt = torch.optim.Adam([heads.ens_w, heads.ens_b], lr=1e-2)
        idx = torch.from_numpy(ens_rows)
        for _ in range(cfg.ensemble_epochs):
            for b in range(0, len(idx), cfg.batch_size):
                j = idx[b : b + cfg.batch_size]
                _, qs = heads.all_exits(pooled[j])
                loss = sum(F.cross_entropy(q, labels[j]) for q in qs)
                opt.zero_grad()
                loss.backward()
                opt.step()
        heads.requires_grad_(False)
    return heads.eval()


@torch.inference_mode()
def exit_probabilities(heads: ExitHeads, feats: ExitFeatures) -> np.ndarray:
    """[N, L, C] probabilities of every exit (the last one is the model's own classifier)."""
    pooled = torch.from_numpy(np.ascontiguousarray(feats.pooled, dtype=np.float32))
    _, qs = heads.all_exits(pooled)
    probs = [torch.softmax(q, -1) for q in qs] + [torch.softmax(torch.from_numpy(feats.final_logits), -1)]
    return torch.stack(probs, 1).numpy()


def save_heads(heads: ExitHeads, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"config": asdict(heads.cfg), "n_exits": heads.n_exits, "n_classes": heads.n_classes,
                "hidden_size": _hidden_size(heads), "state": heads.state_dict()}, tmp)
    os.replace(tmp, path)


def load_heads(path: Path) -> ExitHeads:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = HeadsConfig(**blob["config"])
    heads = HEAD_KINDS.get(cfg.kind)(blob["n_exits"], blob["hidden_size"], blob["n_classes"], cfg)
    heads.load_state_dict(blob["state"])
    return heads.eval()


def _hidden_size(heads: ExitHeads) -> int:
    first = heads.heads[0]
    lin = first if isinstance(first, nn.Linear) else first[0]
    return lin.in_features


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr)
