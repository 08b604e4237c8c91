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
        self.max_length = max_length
        self.batches = []
        self.batch_texts = []  # the texts of each batch (string-input artifacts tokenize them themselves)
        for chunk in batches(texts, batch_size):
            feeds = tokenize(loaded.tokenizer, chunk, max_length=max_length)
            self.batches.append((feeds, task.torch_forward(loaded.model, feeds)))
            self.batch_texts.append(list(chunk))


def token_mismatches(got: dict, feeds: dict) -> list[float]:
    """Per text: 1.0 when a string-input artifact fed its model other token ids than the Hugging Face
    tokenizer gives (the ids of the real tokens, by the masks), else 0.0."""
    out = []
    for i in range(len(feeds["input_ids"])):
        want = feeds["input_ids"][i][feeds["attention_mask"][i].astype(bool)]
        have = got["input_ids"][i][got["attention_mask"][i].astype(bool)]
        out.append(float(len(want) != len(have) or bool((want != have).any())))
    return out


def align_to(got: dict, feeds: dict) -> dict:
    """A string-input artifact's outputs cut or zero-padded to the reference's sequence length (its batch is
    as long as its own tokenization; a mismatch then shows as a low cosine, never as a shape error)."""
    length = feeds["input_ids"].shape[1]
    out = {}
    for k, v in got.items():
        if v.ndim >= 2 and k in ("last_hidden_state", "input_ids", "attention_mask") and v.shape[1] != length:
            pad = [(0, 0)] * v.ndim
            pad[1] = (0, max(0, length - v.shape[1]))
            v = np.pad(v[:, :length], pad)
        out[k] = v
    return out


def measure_fidelity(runner, ref: ReferenceSet) -> dict:
    per_text: dict[str, list] = {}
    text_input = getattr(runner, "takes_text", False)
    for (feeds, ref_out), texts in zip(ref.batches, ref.batch_texts):
        if text_input:
            got = runner.run({"text": np.array(texts, dtype=object)})
            per_text.setdefault("token_mismatches", []).extend(token_mismatches(got, feeds))
            got = align_to(got, feeds)
        else:
            got = runner.run({k: v for k, v in feeds.items() if k in runner.input_names})
        for k, v in ref.task.fidelity(ref_out, got, feeds, ref.spec).items():
            per_text.setdefault(k, []).extend(v)
    out = {"n_texts": len(ref.texts)}
    if "cos" in per_text:
        cos = np.asarray(per_text.pop("cos"))
        out.update(cos_mean=round(float(cos.mean()), 6), cos_min=round(float(cos.min()), 6))
    if "max_abs_diff" in per_text:
        out["max_abs_diff"] = round(float(np.max(per_text.pop("max_abs_diff"))), 6)
    if "token_mismatches" in per_text:  # a count, not a mean
        out["token_mismatches"] = int(np.sum(per_text.pop("token_mismatches")))
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
