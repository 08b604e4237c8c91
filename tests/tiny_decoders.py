"""Tiny random-init decoders of every supported family, built from transformers configs (no downloads), saved
as the local folder a user would bring (``save_pretrained`` + a tokenizer that exists offline)."""

from __future__ import annotations

from pathlib import Path

from tiny import write_tiny_tokenizer

HIDDEN, LAYERS, HEADS = 64, 2, 4
# wide init: random-init logits are nearly flat at the default 0.02, and argmax ties would make greedy tokens
# depend on float summation order rather than on the export being right
INIT = 0.2


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, max_position_embeddings=256, initializer_range=INIT)


def _llama(vocab, tied):
    from transformers import LlamaConfig

    return LlamaConfig(**_common(vocab), num_key_value_heads=2, tie_word_embeddings=tied)


def _qwen2(vocab, tied):
    from transformers import Qwen2Config

    return Qwen2Config(**_common(vocab), num_key_value_heads=2, tie_word_embeddings=tied)


def _mistral(vocab, tied):
    from transformers import MistralConfig

    return MistralConfig(**_common(vocab), num_key_value_heads=2, tie_word_embeddings=tied)


def _phi3(vocab, tied):
    from transformers import Phi3Config

    return Phi3Config(**_common(vocab), tie_word_embeddings=tied, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _gemma(vocab, tied):
    from transformers import GemmaConfig

    return GemmaConfig(**_common(vocab), num_key_value_heads=1, head_dim=HIDDEN // HEADS, tie_word_embeddings=tied)


def _gpt2(vocab, tied):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=256,
                      initializer_range=INIT, tie_word_embeddings=tied)


# name -> (config builder, tied head): the transformers defaults for each family's head
CONFIGS = {
    "gpt2": (_gpt2, True),
    "llama": (_llama, False),
    "llama-tied": (_llama, True),
    "qwen2": (_qwen2, False),
    "mistral": (_mistral, False),
    "phi3": (_phi3, False),
    "gemma": (_gemma, True),
}


def write_tiny_decoder(family: str, d: Path, seed: int = 0) -> Path:
    """Save a random-init ``*ForCausalLM`` / ``GPT2LMHeadModel`` of ``family`` and a word-piece tokenizer to ``d``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(d)
    write_tiny_tokenizer(d)
    vocab = len(AutoTokenizer.from_pretrained(d))
    build, tied = CONFIGS[family]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(build(vocab, tied)).eval()
    model.save_pretrained(d)
    return d
