"""Training on CPU with the backbone frozen (but for `full`), and the task quality of an adapted model.

classification: the mean-pooled token states -> a linear head, cross-entropy.
sts: cosine of the two sentences' mean-pooled states against the gold score / 5, mean squared error.
The model stays in eval mode (no dropout): runs are deterministic for a seed and train exactly the
function the exported graph computes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import EdgecompError
from ..evaluate.data import Labelled, StsPairs, read_labelled, read_sts_pairs
from .config import AdaptConfig
from .modules import adapted, attach


def read_task_data(path, task: str, what: str = "--data"):
    """Labelled rows (classification: text<TAB>label) or scored pairs (sts); one-line errors on bad files."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise EdgecompError(f"{what} file {p} does not exist",
                            "pass a TSV: text<TAB>label (classification) or sentence1<TAB>sentence2<TAB>score (sts)")
    data = read_labelled(p) if task == "classification" else read_sts_pairs(p)
    if task == "classification" and len(set(data.labels)) < 2:
        raise EdgecompError(f"{p} holds a single label ({data.labels[0]!r})", "give examples of at least two labels")
    return data


def label_names(data: Labelled) -> list[str]:
    """Labels in a stable order: numerically when every label is a number (0, 1, ... as SST-2 writes them)."""
    names = set(data.labels)
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)


class Encoder:
    """``embed(texts) -> [N, hidden]``: the model's mean-pooled last hidden state (what heads read)."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 128):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.names = set(tokenizer.model_input_names)

    def feeds(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in self.names}

    def embed(self, texts: list[str]) -> torch.Tensor:
        f = self.feeds(texts)
        return mean_pool(self.model(**f).last_hidden_state, f["attention_mask"])


@dataclass
class TrainResult:
    modules: list[str]
    trainable_params: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        k = max(1, len(self.losses) // 10)
        return {"trainable_params": self.trainable_params, "steps": len(self.losses), "seconds": round(self.seconds, 1),
                "loss_first": _mean(self.losses[:k]), "loss_last": _mean(self.losses[-k:])}


def _mean(xs):
    return round(float(np.mean(xs)), 5) if xs else None


def make_head(hidden: int, n_labels: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(hidden, n_labels)


def train(model: nn.Module, tokenizer, cfg: AdaptConfig, data, labels: list[str] | None = None,
          progress: Callable[[int, int, float], None] | None = None) -> tuple[nn.Linear | None, TrainResult]:
    """Put cfg's adapters on ``model`` (in place) and train them (and the head) for cfg.steps steps."""
    torch.manual_seed(cfg.seed)
    for p in model.parameters():
        p.requires_grad_(cfg.method == "full")
    modules = attach(model, cfg)
    model.eval()
    params = [p for m in adapted(model).values() for p in m.trainable().values()]
    if cfg.method == "full":
        params = [p for p in model.parameters() if p.requires_grad]
    head = None
    if cfg.task == "classification":
        labels = labels or label_names(data)
        head = make_head(model.config.hidden_size, len(labels), cfg.seed)
    groups = [{"params": params, "lr": cfg.learning_rate}] if params else []
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": cfg.head_lr})
    result = TrainResult(modules, sum(p.numel() for g in groups for p in g["params"]))
    if not groups or cfg.steps == 0:
        return head, result
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    enc = Encoder(model, tokenizer, cfg.max_length)
    n = len(data)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos = torch.randperm(n, generator=gen), 0
    targets = None
    if cfg.task == "classification":
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted({lab for lab in data.labels if lab not in index})
        if unknown:
            raise EdgecompError(f"labels {unknown[:3]} are not among the adapter's {labels}", "train with every label")
        targets = torch.tensor([index[lab] for lab in data.labels])
    t0 = time.time()
    for step in range(cfg.steps):
        if pos + cfg.batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + cfg.batch].tolist()
        pos += cfg.batch
        if cfg.task == "classification":
            logits = head(enc.embed([data.texts[i] for i in idx]))
            loss = nn.functional.cross_entropy(logits, targets[idx])
        else:
            e = enc.embed([data.sentence1[i] for i in idx] + [data.sentence2[i] for i in idx])
            cos = nn.functional.cosine_similarity(e[: len(idx)], e[len(idx):])
            gold = torch.tensor([data.scores[i] / 5.0 for i in idx], dtype=cos.dtype)
            loss = nn.functional.mse_loss(cos, gold)
        opt.zero_grad()
        loss.backward()
        opt.step()
        result.losses.append(loss.item())
        if progress:
            progress(step + 1, cfg.steps, result.losses[-1])
    result.seconds = time.time() - t0
    for p in model.parameters():
        p.requires_grad_(False)
    return head, result


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer, task: str, data, head: nn.Linear | None = None,
             labels: list[str] | None = None, batch: int = 64, max_length: int = 128) -> dict:
    """accuracy x100 (classification) or Spearman x100 of cosine vs gold (sts)."""
    from ..evaluate.metrics import spearman_x100

    model.eval()
    enc = Encoder(model, tokenizer, max_length)

    def embed_all(texts):
        return torch.cat([enc.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])

    if task == "classification":
        if head is None:
            raise EdgecompError("a classification adapter has no head", "train it with --task classification")
        pred = head(embed_all(data.texts)).argmax(-1).numpy()
        gold = np.array([labels.index(lab) if lab in labels else -1 for lab in data.labels])
        return {"metric": "accuracy", "value": round(100.0 * float((pred == gold).mean()), 2), "n": len(data)}
    a, b = embed_all(data.sentence1), embed_all(data.sentence2)
    cos = nn.functional.cosine_similarity(a, b).numpy()
    return {"metric": "spearman", "value": round(float(spearman_x100(cos, data.scores)), 2), "n": len(data)}


def subset(data, n: int | None, seed: int = 0):
    """The first ``n`` rows of a fixed shuffle (all rows when n is None or larger)."""
    if n is None or n >= len(data):
        return data
    idx = np.random.default_rng(seed).permutation(len(data))[:n]
    if isinstance(data, Labelled):
        return Labelled([data.texts[i] for i in idx], [data.labels[i] for i in idx])
    return StsPairs([data.sentence1[i] for i in idx], [data.sentence2[i] for i in idx], [data.scores[i] for i in idx])
