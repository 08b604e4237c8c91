"""Shared fixtures: tiny random-init models built from transformers configs (no downloads)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from edgecomp.quiet import quiet_third_party  # noqa: E402

quiet_third_party()

ROOT = Path(__file__).resolve().parent.parent
UNSEEN = ROOT / "tests" / "data" / "unseen.txt"
SHARED_DATA = ROOT.parent / "shared" / "data"


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


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A saved random-init BertModel + tokenizer: a 'local Hugging Face directory' for the pipeline."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-bert")
    write_tiny_tokenizer(d)
    BertModel(tiny_bert_config()).eval().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def fast_target(tmp_path_factory) -> Path:
    """cpu-x86 with a short benchmark, so pipeline tests take seconds."""
    src = (ROOT / "targets" / "cpu-x86.toml").read_text()
    src = src.replace("warmup = 5", "warmup = 1").replace("runs = 30", "runs = 3").replace("seq_len = 128", "seq_len = 32")
    p = tmp_path_factory.mktemp("targets") / "cpu-x86-fast.toml"
    p.write_text(src.replace('name = "cpu-x86"', 'name = "cpu-x86-fast"'))
    return p


@pytest.fixture(scope="session")
def unseen_texts() -> list[str]:
    return [ln for ln in UNSEEN.read_text().splitlines() if ln.strip()]
