"""Architecture adapters: one module per model family, registered by `config.model_type`.

`layout_of(model)` gives a model's `Layout` (blocks, attention projections, FFN pair, norms, token table,
head, smoothing groups, size-breakdown components) or None for a family without an adapter, which still
exports plainly. Adding a family = one module here + one tiny-model test (tests/test_archs.py).
"""

from .base import ADAPTERS, ATTENTION_ROLES, COMPONENTS, FFN_ROLES, ROLES, Adapter, Layout, families, layout_of, require_layout

# Family modules register themselves on import.
from . import (albert, bert, deberta_v2, distilbert, electra, gemma, gpt2, llama, mistral, modernbert,  # noqa: E402,F401
               mpnet, phi3, qwen2, roberta, xlm_roberta)

__all__ = ["ADAPTERS", "ATTENTION_ROLES", "COMPONENTS", "FFN_ROLES", "ROLES", "Adapter", "Layout", "families",
           "layout_of", "require_layout"]
