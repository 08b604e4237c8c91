"""The classifier split into stage modules, one transformer layer each, for a graph per stage.

stage 0     (input_ids, attention_mask[, token_type_ids]) -> embeddings -> layer 1 -> exit 1
stage i     (prev_hidden_state, attention_mask[, prev_exit_state]) -> layer i+1 -> exit i+1
last stage  (prev_hidden_state, attention_mask)                     -> layer L -> the model's own pooler + classifier

Every stage returns ``logits`` (its exit's prediction); all but the last also return ``hidden_state``
for the next stage, and with ``ztw`` heads ``exit_state`` (the log-probabilities of the heads so far,
[B, i, C]). A stage holds only its own layer's weights, so nothing is duplicated across stage files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EdgecompError
from .heads import ExitHeads, pool_hidden
from .names import carry

SUPPORTED = ("bert",)  # architectures whose embeddings/layers/pooler we know how to split


@dataclass(frozen=True)
class StageIO:
    index: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def check_supported(model) -> None:
    mt = getattr(model.config, "model_type", "?")
    if mt not in SUPPORTED or not hasattr(model, "classifier"):
        raise EdgecompError(
            f"early exits support {', '.join(SUPPORTED)} sequence classifiers, not {mt!r} ({type(model).__name__})",
            "export without --early-exit, or use a BertForSequenceClassification model",
        )


def uses_token_type_ids(model) -> bool:
    return (getattr(model.config, "type_vocab_size", 0) or 0) > 0


def stage_io(model, heads: ExitHeads) -> list[StageIO]:
    L = model.config.num_hidden_layers
    ztw = heads.kind == "ztw"
    out = []
    for i in range(L):
        last = i == L - 1
        if i == 0:
            inputs = ("input_ids", "attention_mask") + (("token_type_ids",) if uses_token_type_ids(model) else ())
        else:
            inputs = ("prev_hidden_state", "attention_mask") + (("prev_exit_state",) if ztw and not last else ())
        if last:
            outputs = ("logits",)
        else:
            next_takes_state = ztw and i + 1 < L - 1
            outputs = ("hidden_state", "logits") + (("exit_state",) if next_takes_state else ())
        out.append(StageIO(i, inputs, outputs))
    return out


def additive_mask(attention_mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[B, S] 0/1 -> [B, 1, 1, S] additive (0 keep, very negative drop): what BERT layers expect."""
    m = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


class Stage(nn.Module):
    def __init__(self, model, heads: ExitHeads, io: StageIO):
        super().__init__()
        check_supported(model)
        self.io = io
        self.index = io.index
        self.last = io.index == model.config.num_hidden_layers - 1
        base = model.base_model
        self.embeddings = base.embeddings if io.index == 0 else None
        self.layer = base.encoder.layer[io.index]
        if self.last:
            self.pooler, self.dropout, self.classifier = base.pooler, model.dropout, model.classifier
        else:
            self.heads = heads  # shared module; only head `index` is traced into this stage's graph
        self.kind = heads.kind

    def forward(self, *args):
        feeds = dict(zip(self.io.inputs, args))
        mask = feeds["attention_mask"]
        if self.index == 0:
            tt = feeds.get("token_type_ids")
            if tt is None:
                tt = torch.zeros_like(feeds["input_ids"])
            hidden = self.embeddings(input_ids=feeds["input_ids"], token_type_ids=tt)
        else:
            hidden = feeds["prev_hidden_state"]
        hidden = self.layer(hidden, attention_mask=additive_mask(mask, hidden.dtype))[0]
        if self.last:
            return (self.classifier(self.dropout(self.pooler(hidden))),)
        pooled = pool_hidden(hidden, mask, self.heads.pooling)
        logits, state = self.heads.exit(self.index, pooled, feeds.get("prev_exit_state"))
        out = {"hidden_state": hidden, "logits": logits, "exit_state": state}
        return tuple(out[k] for k in self.io.outputs)


def build_stages(model, heads: ExitHeads) -> list[Stage]:
    model.eval()
    heads.eval()
    return [Stage(model, heads, io).eval() for io in stage_io(model, heads)]


class DepthModel(nn.Module):
    """The static sub-model: layers 1..k and exit k chained from the stages, as one graph."""

    def __init__(self, stages: list[Stage], depth: int):
        super().__init__()
        self.stages = nn.ModuleList(stages[:depth])
        self.input_names = stages[0].io.inputs

    def forward(self, *args):
        feeds = dict(zip(self.input_names, args))
        for st in self.stages:
            out = dict(zip(st.io.outputs, st(*(feeds[k] for k in st.io.inputs))))
            feeds.update(carry(out))
        return out["logits"]


def run_stages_torch(stages: list[Stage], feeds: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Every stage on every row (no exits): the PyTorch reference for each stage's outputs."""
    outs, cur = [], dict(feeds)
    with torch.inference_mode():
        for st in stages:
            out = dict(zip(st.io.outputs, st(*(cur[k] for k in st.io.inputs))))
            outs.append(out)
            cur.update(carry(out))
    return outs
