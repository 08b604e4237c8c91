"""Causal language models (text generation): KV-cache artifacts, greedy decoding and perplexity.

The artifact is one graph for prefill and decode (optimum's ``text-generation-with-past`` contract); a
plain forward (``torch_forward``/``fidelity``) compares next-token logits, while ``edgecomp run`` uses
``generate_records`` (``--generate N``) or ``perplexity_records`` (``--perplexity``), see edgecomp.llm.
"""

from __future__ import annotations

import numpy as np

from . import TASKS, torch_inputs


class TextGeneration:
    name = "text-generation"
    optimum_task = "text-generation-with-past"
    output_names = ["logits"]
    plan = "causal-lm"  # edgecomp.plans

    def manifest_fields(self, loaded) -> dict:
        return {}

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def torch_forward(self, model, feeds):
        import torch

        with torch.inference_mode():
            out = model(**torch_inputs(feeds, ("input_ids", "attention_mask")), use_cache=False)
        return {"logits": out.logits.float().numpy()}

    def records(self, outputs, feeds, spec):
        """Per text: the greedy next token after each position (a single forward pass)."""
        mask = feeds["attention_mask"].astype(bool)
        nxt = outputs["logits"].argmax(-1)
        return [{"next_tokens": nxt[i][mask[i]].tolist()} for i in range(len(nxt))]

    def fidelity(self, ref, got, feeds, spec):
        mask = feeds["attention_mask"].astype(bool)
        diff = np.abs(ref["logits"] - got["logits"]).max(-1)
        same = ref["logits"].argmax(-1) == got["logits"].argmax(-1)
        return {"max_abs_diff": [float(d[m].max()) for d, m in zip(diff, mask)],
                "top1_agreement": [float(s[m].mean()) for s, m in zip(same, mask)]}

    # `edgecomp bench` on a causal LM: its artifacts take a KV cache, so they are measured through its own
    # sessions (greedy tokens + NLL vs PyTorch, decode-step latency, fresh-process RSS), not fixed-shape feeds
    def measure_artifact(self, path, record, loaded, texts, target, bench: bool, log):
        from ..llm.bench import measure_causal_lm

        return measure_causal_lm(path, loaded, texts, target, bench, log)

    # `edgecomp run` on a causal LM: --generate N / --perplexity per text (edgecomp.llm.run)
    def run_records(self, artifact, export_dir, texts, generate_tokens=None, score_perplexity=False, threads=1):
        from ..llm.run import run_causal_lm

        return run_causal_lm(artifact, export_dir, texts, generate_tokens=generate_tokens,
                             score_perplexity=score_perplexity, threads=threads)

    def generate_records(self, artifact, tokenizer, texts, max_new_tokens: int, threads: int | None = None):
        from ..llm.generate import generate

        return generate(artifact, tokenizer, texts, max_new_tokens, threads=threads)

    def perplexity_records(self, artifact, tokenizer, texts, threads: int | None = None):
        from ..llm.generate import perplexity

        return perplexity(artifact, tokenizer, texts, threads=threads)


TASKS.register("text-generation")(TextGeneration())
