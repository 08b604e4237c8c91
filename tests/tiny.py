"""Tiny random-init models built from transformers configs (no downloads), shared by the tests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def write_tiny_tokenizer(d: Path) -> None:
    """A WordPiece tokenizer whose vocab is the words of the built-in sentences (no downloads)."""
    from transformers import BertTokenizerFast

    words: dict[str, None] = {}
    for line in (ROOT / "edgecomp" / "data" / "sentences.txt").read_text().splitlines():
        for w in re.findall(r"\w+|[^\w\s]", line.lower()):
            words[w] = None
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars],
             *[w for w in words if w not in chars]][:1000]
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True).save_pretrained(d)


def tiny_bert_config(**kw):
    from transformers import BertConfig

    base = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=128)
    base.update(kw)
    return BertConfig(**base)


def tiny_bert(seed: int = 0, **kw):
    """A random-init BertModel in eval mode."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(tiny_bert_config(**kw)).eval()


def encoder_module(bert):
    """``module(input_ids, attention_mask, token_type_ids) -> last_hidden_state``, as the converters trace it."""
    from edgecomp.lower.wrap import PositionalModel

    return PositionalModel(bert, IO_NAMES, ["last_hidden_state"]).eval()
