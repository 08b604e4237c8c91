"""Fresh-process peak RSS probes (edgecomp.bench.probe kinds) on a tiny random-init Llama: each kind loads
and runs in its own interpreter with only what it needs, so the runtime probe carries no torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecomp.bench.memory import peak_rss_mb
from edgecomp.errors import EdgecompError
from edgecomp.llm.export import export_causal_lm_onnx

PROMPT = {"input_ids": np.arange(3, 19, dtype=np.int64)[None]}


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)
    d = tmp_path_factory.mktemp("probe")
    LlamaForCausalLM(cfg).eval().save_pretrained(d / "hf")
    export_causal_lm_onnx(LlamaForCausalLM.from_pretrained(d / "hf").eval(), d / "model.onnx", opset=17)
    return d


def test_causal_lm_probe_runs_the_runtime_without_torch(tiny_llm):
    ort_mb = peak_rss_mb(tiny_llm / "model.onnx", PROMPT, kind="causal-lm")
    torch_mb = peak_rss_mb(tiny_llm / "hf", PROMPT, kind="torch-causal-lm")
    assert 0 < ort_mb < torch_mb  # importing torch alone costs more than ORT + a 1-layer model


def test_a_failing_probe_is_one_error(tiny_llm):
    with pytest.raises(EdgecompError, match="memory probe failed on hf"):
        peak_rss_mb(tiny_llm / "hf", PROMPT, kind="causal-lm")  # a folder is not a KV-cache artifact
