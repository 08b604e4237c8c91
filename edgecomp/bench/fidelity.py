"""Artifact vs PyTorch fp32 on real text: embedding cosine (mean, worst) and max abs diff."""

from __future__ import annotations

import numpy as np

from ..texts import batches, tokenize


class ReferenceSet:
    """Tokenized texts and the uncompressed PyTorch fp32 model's outputs on them, computed once per export
    (before compression, so every artifact is compared with the original model)."""

    def __init__(self, loaded, task, texts: list[str], batch_size: int = 16, max_length: int = 128):
        self.task = task
        self.spec = loaded.spec
        self.texts = texts
        self.batches = []
        for chunk in batches(texts, batch_size):
            feeds = tokenize(loaded.tokenizer, chunk, max_length=max_length)
            self.batches.append((feeds, task.torch_forward(loaded.model, feeds)))


def measure_fidelity(runner, ref: ReferenceSet) -> dict:
    per_text: dict[str, list] = {}
    for feeds, ref_out in ref.batches:
        got = runner.run({k: v for k, v in feeds.items() if k in runner.input_names})
        for k, v in ref.task.fidelity(ref_out, got, feeds, ref.spec).items():
            per_text.setdefault(k, []).extend(v)
    out = {"n_texts": len(ref.texts)}
    if "cos" in per_text:
        cos = np.asarray(per_text.pop("cos"))
        out.update(cos_mean=round(float(cos.mean()), 6), cos_min=round(float(cos.min()), 6))
    if "max_abs_diff" in per_text:
        out["max_abs_diff"] = round(float(np.max(per_text.pop("max_abs_diff"))), 6)
    for k, v in per_text.items():  # task-specific extras, e.g. label agreement
        out[k] = round(float(np.mean(v)), 6)
    return out


def check_tolerance(fidelity: dict, tolerance) -> str | None:
    """The reason an artifact misses the target's tolerance, or None."""
    if "cos_mean" in fidelity and fidelity["cos_mean"] < tolerance.cos_mean:
        return f"cos_mean {fidelity['cos_mean']:.4f} < {tolerance.cos_mean}"
    if "cos_min" in fidelity and fidelity["cos_min"] < tolerance.cos_min:
        return f"cos_min {fidelity['cos_min']:.4f} < {tolerance.cos_min}"
    if "nll_ratio" in fidelity and fidelity["nll_ratio"] > tolerance.nll_ratio_max:
        return f"NLL ratio {fidelity['nll_ratio']:.3f} > {tolerance.nll_ratio_max}"
    return None
