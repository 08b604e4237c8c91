"""Sentence embeddings: encoder -> last_hidden_state -> pooling (+ L2 norm), the sentence-transformers recipe."""

from __future__ import annotations

import numpy as np

from . import TASKS, torch_inputs


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str | None, normalize: bool) -> np.ndarray:
    if pooling == "cls":
        emb = hidden[:, 0]
    else:  # mean over real tokens only: padding must not move the embedding
        m = mask[..., None].astype(np.float32)
        emb = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return emb.astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


class FeatureExtraction:
    name = "feature-extraction"
    optimum_task = "feature-extraction"
    output_names = ["last_hidden_state"]
    plan = "encoder"  # edgecomp.plans

    def manifest_fields(self, loaded) -> dict:
        return {}

    def auto_class(self):
        from transformers import AutoModel

        return AutoModel

    def torch_forward(self, model, feeds):
        import torch

        with torch.inference_mode():
            out = model(**torch_inputs(feeds))
        return {"last_hidden_state": out.last_hidden_state.float().numpy()}

    def embeddings(self, outputs, feeds, spec) -> np.ndarray:
        return pool(outputs["last_hidden_state"], feeds["attention_mask"], spec.pooling, spec.normalize)

    def records(self, outputs, feeds, spec):
        return [{"embedding": [round(float(x), 7) for x in e]} for e in self.embeddings(outputs, feeds, spec)]

    def fidelity(self, ref, got, feeds, spec):
        mask = feeds["attention_mask"].astype(bool)
        diff = np.abs(ref["last_hidden_state"] - got["last_hidden_state"])  # [B, L, H]
        per_text_max = np.where(mask[..., None], diff, 0).max(axis=(1, 2))
        cos = cosine_rows(self.embeddings(ref, feeds, spec), self.embeddings(got, feeds, spec))
        return {"cos": cos.tolist(), "max_abs_diff": per_text_max.tolist()}


TASKS.register("feature-extraction")(FeatureExtraction())
