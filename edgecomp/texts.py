"""Text in: the built-in sentence set, user text files, and tokenization to numpy feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import EdgecompError
from .paths import PACKAGE_DIR

DEFAULT_TEXTS = PACKAGE_DIR / "data" / "sentences.txt"


def read_lines(path: str | Path) -> list[str]:
    """Every line of a UTF-8 text file, blank ones included (a BOM is dropped); one-line errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise EdgecompError(f"text file {p} does not exist", "pass a UTF-8 text file with one text per line")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise EdgecompError(f"cannot read {p} ({e.strerror})", "check the file's permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise EdgecompError(f"text file {p} is not UTF-8 (line {line}, byte {e.start})",
                            "convert it, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`, or pass a UTF-8 file") from None
    if "\x00" in text:
        raise EdgecompError(f"text file {p} holds NUL bytes (binary, or UTF-16/32 text)",
                            "convert it to UTF-8, e.g. `iconv -f utf-16 -t utf-8 FILE > FILE.utf8`")
    # line numbers as a person (and `wc -l`) counts them: only \n ends a line, not the other Unicode breaks
    lines = [ln.removesuffix("\r") for ln in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_texts(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file (calibration and verification text)."""
    p = Path(path)
    texts = [ln.strip() for ln in read_lines(p) if ln.strip()]
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
