"""Text in: the built-in sentence set, user text files, and tokenization to numpy feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import EdgecompError
from .paths import PACKAGE_DIR

DEFAULT_TEXTS = PACKAGE_DIR / "data" / "sentences.txt"


def read_texts(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise EdgecompError(f"text file {p} does not exist", "pass a UTF-8 text file with one text per line")
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise EdgecompError(f"text file {p} is not UTF-8 text", "pass a UTF-8 text file with one text per line") from None
    texts = [ln for ln in lines if ln]
    if not texts:
        raise EdgecompError(f"text file {p} is empty", "put at least one non-empty line of text in it")
    return texts


def default_texts() -> list[str]:
    """240 sentences written for the project (mixed topics and lengths): fidelity and calibration default."""
    return read_texts(DEFAULT_TEXTS)


def tokenize(tokenizer, texts: list[str], max_length: int = 128, input_names=None) -> dict[str, np.ndarray]:
    """Pad to the longest text of the batch (never to a fixed length), truncate at max_length."""
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in enc.items()}
    if input_names is not None:
        feeds = {k: v for k, v in feeds.items() if k in input_names}
    return feeds


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
