"""Shared fixtures: tiny random-init models built from transformers configs (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from edgecomp.quiet import quiet_third_party  # noqa: E402

quiet_third_party()

from tiny import ROOT, tiny_bert_config, write_tiny_tokenizer  # noqa: E402

UNSEEN = ROOT / "tests" / "data" / "unseen.txt"
SHARED_DATA = ROOT.parent / "shared" / "data"


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
    src = (ROOT / "edgecomp" / "data" / "targets" / "cpu-x86.toml").read_text()
    src = src.replace("warmup = 5", "warmup = 1").replace("runs = 30", "runs = 3").replace("seq_len = 128", "seq_len = 32")
    p = tmp_path_factory.mktemp("targets") / "cpu-x86-fast.toml"
    p.write_text(src.replace('name = "cpu-x86"', 'name = "cpu-x86-fast"'))
    return p


@pytest.fixture(scope="session")
def unseen_texts() -> list[str]:
    return [ln for ln in UNSEEN.read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="session")
def few_texts(unseen_texts, tmp_path_factory) -> Path:
    """A 16-line text file for `--texts`: enough to compare artifacts of a tiny model (the built-in 240 take longer)."""
    p = tmp_path_factory.mktemp("texts") / "few.txt"
    p.write_text("\n".join(unseen_texts[:16]) + "\n")
    return p


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matmuls: threads only add contention on the shared 2-core runners (26 s -> 2 s measured)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
