"""WikiText-2 for the decoder studies (scripts/bench_llm.py, study_llm_compression.py): the detokenized
text and the fixed perplexity windows, so every study scores the same tokens."""

from __future__ import annotations

import re
from pathlib import Path

from ..paths import shared_data_dir


def wikitext_valid() -> Path:
    return shared_data_dir() / "wikitext-2" / "wiki.valid.tokens"


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's word-level tokenization (README of the data folder)."""
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    text = re.sub(r" ([.,;:!?)\]'])", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = text.replace(" n't", "n't").replace(" 's", "'s")
    return text


def wikitext_windows(tokenizer, path: Path, window: int, max_tokens: int) -> list[list[int]]:
    """The first ``max_tokens`` tokens of the detokenized file cut into whole windows of ``window`` tokens
    (the first token of a window is context only, so a window scores window - 1 tokens)."""
    text = detokenize_wikitext(Path(path).read_text(encoding="utf-8"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = min(len(ids), max_tokens) // window
    return [ids[i * window:(i + 1) * window] for i in range(n)]
