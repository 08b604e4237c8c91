"""Sequence classification (sentiment etc.): encoder + classifier -> ``logits`` -> label and probabilities."""

from __future__ import annotations

import numpy as np

from . import TASKS, torch_inputs


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def label_names(spec, n: int) -> list[str]:
    """Label names from a model config's ``id2label``, or a ModelSpec (``extra["id2label"]``, or the
    ``label_names`` of its [source]); else ``LABEL_i``."""
    id2label = getattr(spec, "id2label", None) or (getattr(spec, "extra", None) or {}).get("id2label")
    if id2label:
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]
    names = list((getattr(spec, "source", None) or {}).get("label_names", ()))
    return names if len(names) == n else [f"LABEL_{i}" for i in range(n)]


class TextClassification:
    name = "text-classification"
    optimum_task = "text-classification"
    output_names = ["logits"]
    plan = "encoder"  # edgecomp.plans

    def manifest_fields(self, loaded) -> dict:
        """`edgecomp run` names labels from this, not LABEL_i."""
        return {"id2label": {str(k): v for k, v in loaded.model.config.id2label.items()}}

    def head(self, spec):
        """Softmax in the graph: artifacts also output ``probabilities``."""
        from ..lower.wrap import GraphHead, Probabilities

        return GraphHead(Probabilities(), ("logits",), ("probabilities",))

    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def torch_forward(self, model, feeds):
        import torch

        with torch.inference_mode():
            out = model(**torch_inputs(feeds))
        return {"logits": out.logits.float().numpy()}

    def records(self, outputs, feeds, spec):
        probs = outputs["probabilities"] if "probabilities" in outputs else softmax(outputs["logits"].astype(np.float64))
        names = label_names(spec, probs.shape[-1])
        return [{"label": names[int(p.argmax())], "probs": [round(float(x), 6) for x in p]} for p in probs]

    def fidelity(self, ref, got, feeds, spec):
        """Per text: does the artifact pick the same label, how far are its logits, and the cosine of the
        probability vectors (``cos``, the key the shared fidelity summary reads)."""
        r, g = ref["logits"].astype(np.float64), got["logits"].astype(np.float64)
        pr = softmax(r)
        pg = got["probabilities"].astype(np.float64) if "probabilities" in got else softmax(g)
        cos = (pr * pg).sum(-1) / np.maximum(np.linalg.norm(pr, axis=-1) * np.linalg.norm(pg, axis=-1), 1e-12)
        return {
            "agree": (r.argmax(-1) == g.argmax(-1)).astype(float).tolist(),
            "max_abs_diff": np.abs(r - g).max(-1).tolist(),
            "cos": cos.tolist(),
        }


TASKS.register("text-classification")(TextClassification())
