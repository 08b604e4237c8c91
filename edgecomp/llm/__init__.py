"""Causal language models: the GGUF model source, KV-cache export, greedy generation and perplexity."""

from . import gguf_source  # noqa: F401  (registers the "gguf" model source)
