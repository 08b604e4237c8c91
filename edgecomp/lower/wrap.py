"""What converters trace: ``module(*tensors)`` from an HF model, with the task's post-processing head.

The head (pooling + L2 normalization for embeddings, softmax for classifiers) is one torch module per task,
so every format carries the same graph ops: litert-torch and torch.onnx trace it inside ``PositionalModel``;
optimum's ONNX exporter (which only takes a PreTrainedModel) gets it appended by ``edgecomp.lower.onnx``,
lowered from this same module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SentenceEmbedding(torch.nn.Module):
    """``(last_hidden_state, attention_mask) -> sentence_embedding``: mean over real tokens (padding must
    not move the embedding) or the first token, then L2 normalization, as sentence-transformers'
    Pooling + Normalize modules compute it."""

    def __init__(self, pooling: str | None, normalize: bool):
        super().__init__()
        self.pooling, self.normalize = pooling or "mean", bool(normalize)

    def forward(self, hidden, mask):
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
        if self.normalize:
            emb = emb / torch.clamp(torch.linalg.vector_norm(emb, dim=-1, keepdim=True), min=1e-12)
        return emb


class Probabilities(torch.nn.Module):
    """``logits -> probabilities`` (softmax over the labels)."""

    def forward(self, logits):
        return torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class GraphHead:
    """Post-processing ops a task appends to the model graph: ``module(*inputs) -> outputs``, where each input
    is a model output or a model input (by name) and each output is a new graph output."""

    module: torch.nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class PositionalModel(torch.nn.Module):
    """``forward(*inputs)`` -> one tensor or a tuple, from an HF model's keyword/ModelOutput interface; the
    outputs are the model's ``output_names`` then the ``head``'s."""

    def __init__(self, model, input_names: list[str], output_names: list[str], head: GraphHead | None = None):
        super().__init__()
        self.model = model
        self.head = head.module if head else None
        self.head_io = (tuple(head.inputs), tuple(head.outputs)) if head else ((), ())
        self.input_names = list(input_names)
        self.output_names = [n for n in output_names if not head or n not in head.outputs]

    def forward(self, *inputs):
        feeds = dict(zip(self.input_names, inputs))
        out = self.model(**feeds)
        outs = tuple(out[k] for k in self.output_names)
        if self.head is not None:
            named = {**feeds, **dict(zip(self.output_names, outs))}
            extra = self.head(*(named[n] for n in self.head_io[0]))
            outs += extra if isinstance(extra, tuple) else (extra,)
        return outs[0] if len(outs) == 1 else outs
