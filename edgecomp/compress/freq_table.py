"""Frequency-aware token table: the rows of the tokens that carry the text keep the table's bits, the rest
cost 2 bits (``freq-table``) or nothing (``vocab-trim``: they map to their nearest kept row, or [UNK]).

A few thousand tokens make up almost all of any text, yet a uniform table pays every one of its rows the
same. Tokens are ranked by their count in a corpus (``corpus``: a user's text file, one text per line;
default the export's calibration text), ties and unseen tokens by the vocabulary's own order (WordPiece and
BPE vocabularies list tokens roughly as often as they were learnt), the tokenizer's special tokens first.
Without a corpus of the domain, ``corpus = "wordfreq:en"`` ranks by a language's general word frequencies
(the wordfreq package), which covers a new domain's text far better than a few calibration sentences.
The top ``frequent`` rows (or the fewest covering ``coverage`` of the corpus's tokens) stay a float table
that the export's scheme quantizes (``[quantization] table``, e.g. 4-bit GatherBlockQuantized); the others
become 2-bit rows with a float16 scale and minimum per block of ``rare_block`` (the scale and minimum are
searched per block for the least squared error), decoded with standard ops (layers.FrequencySplitEmbedding).

``vocab-trim`` is the explicit opt-in for a domain corpus: rows outside the kept set are dropped, and their
tokens read the kept row whose direction is closest (``rare = "nearest"``) or [UNK]'s (``rare = "unk"``).

The step's report (in the manifest's compression section) records how many rows sit at which bits and the
share of the corpus's (and the calibration text's) tokens the kept rows cover. ``freq-table`` with
``trim_to`` combines both: the frequent rows at the table's bits, the next ones at 2 bits, the rest dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import METHODS
from .base import Calibration, StepReport, check, require_calibration
from .embedding import direction_error, find_table, swap_table, tied_head
from .layers import FrequencySplitEmbedding
from ..errors import EdgecompError

RARE_MODES = ("int2", "nearest", "unk")


@dataclass
class FrequencyTableConfig:
    frequent: int | None = None  # rows kept at the table's bits: the most frequent tokens
    coverage: float | None = None  # or: the fewest rows covering this share of the corpus's tokens
    rare: str = "int2"  # int2: 2-bit rows | nearest / unk: no rows (vocab-trim)
    rare_block: int = 32  # 2-bit rows: values per float16 scale + minimum
    corpus: str | None = None  # text file ranking the tokens, or "wordfreq:en" (default: the calibration text)
    module: str | None = None  # default: the model's input token table
    # int2 only: the rows stored in all (frequent ones + 2-bit ones); tokens ranked after read the stored row
    # nearest their own, as vocab-trim's do (three tiers: table bits, 2 bits, no row)
    trim_to: int | None = None

    def __post_init__(self):
        check((self.frequent is None) != (self.coverage is None),
              "freq-table needs exactly one of frequent, coverage", "give frequent = 8192 or coverage = 0.995")
        check(self.frequent is None or self.frequent >= 1, f"frequent = {self.frequent} keeps no row", "use frequent >= 1")
        check(self.coverage is None or 0 < self.coverage <= 1, f"coverage = {self.coverage} is not a share",
              "use 0 < coverage <= 1, e.g. 0.995")
        check(self.rare in RARE_MODES, f"rare = {self.rare!r} is unknown", f"use one of: {', '.join(RARE_MODES)}")
        check(self.rare_block >= 4 and self.rare_block % 4 == 0, f"rare_block = {self.rare_block} is not a multiple of 4",
              "use rare_block = 32 (or 16, 64)")
        check(self.trim_to is None or self.rare == "int2", f'trim_to = {self.trim_to} needs rare = "int2"',
              'drop trim_to (vocab-trim keeps only the frequent rows) or use rare = "int2"')
        check(self.trim_to is None or self.frequent is None or self.trim_to >= self.frequent,
              f"trim_to = {self.trim_to} stores fewer rows than frequent = {self.frequent}", "use trim_to >= frequent")


@dataclass
class VocabTrimConfig(FrequencyTableConfig):
    rare: str = "nearest"

    def __post_init__(self):
        super().__post_init__()
        check(self.rare != "int2", 'vocab-trim drops the rare rows: rare = "int2" keeps them', 'use rare = "nearest" or "unk", '
              'or the freq-table method')


WORDFREQ = "wordfreq:"  # corpus = "wordfreq:en": the wordfreq package's word frequencies for that language
WORDFREQ_WORDS = 100_000  # its most frequent words; beyond them the frequencies are below one in 10^7


def wordfreq_counts(tokenizer, language: str, vocab: int) -> np.ndarray:
    """Token counts of a language's general usage without a corpus at hand: each of the wordfreq package's
    most frequent words (Wikipedia, subtitles, books, news, web text) tokenized once, weighted by its
    frequency. Words are tokenized after a space, as they occur inside text (byte-level BPE spells a
    word-initial token with its space)."""
    try:
        import wordfreq
    except ImportError:
        raise EdgecompError(f'corpus = "{WORDFREQ}{language}" needs the wordfreq package',
                            'pip install -e ".[compress]" (or wordfreq==3.1.1), or give corpus = a text file') from None
    try:
        freq = wordfreq.get_frequency_dict(language)
        words = wordfreq.top_n_list(language, WORDFREQ_WORDS)
    except Exception:  # an unknown or malformed language tag
        words = []
    check(bool(words), f"wordfreq has no word list for language {language!r}", 'use e.g. corpus = "wordfreq:en"')
    out = np.zeros(vocab, dtype=np.float64)
    for i in range(0, len(words), 2048):
        chunk = words[i:i + 2048]
        for w, ids in zip(chunk, tokenizer([" " + w for w in chunk], add_special_tokens=False)["input_ids"]):
            f = freq.get(w, 0.0)
            for t in ids:
                if 0 <= t < vocab:
                    out[t] += f
    counts = np.rint(out * 1e9).astype(np.int64)  # counts per billion words
    # wordfreq counts words only: its lists hold no punctuation, so "," or "(" would rank with the rarest
    # rows and be trimmed. Every printable ASCII character's tokens (word-initial and continuation forms)
    # rank first, after the special tokens, so any ASCII text stays spelled with its own rows.
    chars = [chr(c) for c in range(33, 127)]
    unk = getattr(tokenizer, "unk_token_id", None)
    own = [ids[-1] for ids in tokenizer([" " + c for c in chars], add_special_tokens=False)["input_ids"] if ids]
    # continuation forms as the vocabulary spells them: WordPiece "##c", byte-level BPE "c", SentencePiece "c"
    own += tokenizer.convert_tokens_to_ids([p + c for c in chars for p in ("", "##")])
    top = int(counts.max()) + 1
    for t in own:
        if t is not None and t != unk and 0 <= t < vocab:
            counts[t] = top
    return counts


def corpus_counts(cfg: FrequencyTableConfig, calibration: Calibration, vocab: int) -> np.ndarray:
    if cfg.corpus is not None and cfg.corpus.startswith(WORDFREQ):
        return wordfreq_counts(calibration.tokenizer, cfg.corpus[len(WORDFREQ):], vocab)
    return token_counts(calibration.tokenizer, corpus_texts(cfg, calibration), vocab)


def corpus_texts(cfg: FrequencyTableConfig, calibration: Calibration) -> list[str]:
    if cfg.corpus is None:
        return calibration.texts
    path = Path(cfg.corpus).expanduser()
    if not path.is_file():
        raise EdgecompError(f"the freq-table corpus {cfg.corpus!r} is not a file", "give corpus = a text file (one text per line)")
    texts = [t for t in path.read_text(encoding="utf-8", errors="replace").splitlines() if t.strip()]
    check(bool(texts), f"the freq-table corpus {cfg.corpus!r} is empty", "give a file with text in it")
    return texts


def token_counts(tokenizer, texts: list[str], vocab: int) -> np.ndarray:
    counts = Counter()
    for i in range(0, len(texts), 256):
        for ids in tokenizer(texts[i:i + 256], add_special_tokens=False, truncation=False)["input_ids"]:
            counts.update(ids)
    out = np.zeros(vocab, dtype=np.int64)
    for t, n in counts.items():
        if 0 <= t < vocab:
            out[t] = n
    return out


def rank_tokens(counts: np.ndarray, special: list[int]) -> np.ndarray:
    """Token ids, most frequent first (ties and unseen in vocabulary order), special tokens first of all."""
    key = -counts.astype(np.float64)
    key[[s for s in special if 0 <= s < len(counts)]] = -np.inf
    return np.lexsort((np.arange(len(counts)), key))


def covered(counts: np.ndarray, kept: np.ndarray) -> float:
    total = counts.sum()
    return round(float(counts[kept].sum() / total), 5) if total else 1.0


def int2_blocks(rows: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows [R, D] -> codes [R, D/block, block] in 0..3, float16 scale and minimum [R, D/block]: per block the
    grid (min + scale * q) of least squared error among ranges shrunk from the block's own."""
    x = rows.double().reshape(rows.shape[0], -1, block)
    lo, hi = x.amin(-1), x.amax(-1)
    best = None
    for shrink in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * shrink
        mn = (mid - half).half().double()
        sc = (2 * half / 3).clamp_min(1e-8).half().double()
        q = ((x - mn[..., None]) / sc[..., None]).round().clamp(0, 3)
        err = ((q * sc[..., None] + mn[..., None] - x) ** 2).sum(-1)
        if best is None:
            best = [err, q, sc, mn]
        else:
            better = err < best[0]
            best[0] = torch.where(better, err, best[0])
            best[1] = torch.where(better[..., None], q, best[1])
            best[2] = torch.where(better, sc, best[2])
            best[3] = torch.where(better, mn, best[3])
    _, q, sc, mn = best
    return q.to(torch.uint8), sc.half(), mn.half()


def pack_codes(q: torch.Tensor) -> torch.Tensor:
    """Codes [R, ..., D] in 0..3 -> bytes [R, D/4], four codes per byte, the first in the low bits."""
    q = q.reshape(q.shape[0], -1, 4).to(torch.int32)
    return (q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)).to(torch.uint8)


@torch.no_grad()
def nearest_rows(table: torch.Tensor, rare: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """For each rare token, the kept token whose row has the highest cosine with its own."""
    k = nn.functional.normalize(table[torch.as_tensor(kept)].float(), dim=-1)
    out = np.empty(len(rare), dtype=np.int64)
    for i in range(0, len(rare), 2048):
        r = nn.functional.normalize(table[torch.as_tensor(rare[i:i + 2048])].float(), dim=-1)
        out[i:i + 2048] = (r @ k.T).argmax(-1).numpy()
    return out


@torch.no_grad()
def split_table(model: nn.Module, cfg: FrequencyTableConfig, calibration: Calibration | None, method: str) -> StepReport:
    calibration = require_calibration(calibration, method)
    name, table = find_table(model, cfg.module, method)
    if tied_head(model, table) is not None:
        raise EdgecompError(f"the {method} step splits the input table, and this model's output head shares it",
                            "use svd-embedding / ae-embedding for a tied table, or drop the step")
    v, d = table.weight.shape
    check(cfg.rare != "int2" or d % cfg.rare_block == 0, f"rare_block = {cfg.rare_block} does not divide the width {d}",
          "use a rare_block that divides the embedding width")
    tok = calibration.tokenizer
    counts = corpus_counts(cfg, calibration, v)
    order = rank_tokens(counts, list(getattr(tok, "all_special_ids", [])))
    if cfg.frequent is not None:
        k = min(cfg.frequent, v)
    else:
        share = np.cumsum(counts[order]) / max(counts.sum(), 1)
        k = int(min(v, np.searchsorted(share, cfg.coverage - 1e-12) + 1))
    stored = v if cfg.trim_to is None else max(k, min(cfg.trim_to, v))
    kept, rare, dropped = np.sort(order[:k]), np.sort(order[k:stored]), np.sort(order[stored:])
    w = table.weight.detach()
    n_rare_rows = len(rare) if cfg.rare == "int2" else 0
    padding = table.padding_idx
    new_padding = int(np.searchsorted(kept, padding)) if padding is not None and padding in set(kept.tolist()) else None
    new = FrequencySplitEmbedding(v, d, k, n_rare_rows, cfg.rare_block, padding_idx=new_padding)
    remap = np.empty(v, dtype=np.int64)
    remap[kept] = np.arange(k)
    new.frequent.weight.copy_(w[torch.as_tensor(kept)])
    if cfg.rare == "int2":
        remap[rare] = k + np.arange(len(rare))
        if len(rare):
            q, scale, mn = int2_blocks(w[torch.as_tensor(rare)], cfg.rare_block)
            new.rare_codes.copy_(pack_codes(q))
            new.rare_scale.copy_(scale)
            new.rare_min.copy_(mn)
        if len(dropped):  # beyond trim_to: the nearest stored row (by the fp32 rows' directions)
            stored_tokens = np.sort(np.concatenate([kept, rare]))
            remap[dropped] = remap[stored_tokens[nearest_rows(w, dropped, stored_tokens)]]
    elif cfg.rare == "nearest":
        remap[rare] = nearest_rows(w, rare, kept) if len(rare) else []
    else:
        unk = getattr(tok, "unk_token_id", None)
        if unk is None or unk not in set(kept.tolist()):
            raise EdgecompError(f'the {method} step maps rare tokens to [UNK], and this tokenizer has no kept [UNK] row',
                                'use rare = "nearest"')
        remap[rare] = int(np.searchsorted(kept, unk))
    new.remap.copy_(torch.as_tensor(remap, dtype=torch.int32))

    rep = StepReport(method, asdict(cfg))
    rep.fidelity["table"] = direction_error(w, new.dense_weight())
    cal_counts = counts if cfg.corpus is None else token_counts(tok, calibration.texts, v)
    rare_bytes = (new.rare_codes.numel() + 2 * new.rare_scale.numel() + 2 * new.rare_min.numel()) if n_rare_rows else 0
    rep.details["allocation"] = {
        "rows": v, "frequent_rows": k, "frequent_bits": "the scheme's table bits ([quantization] table)",
        "rare_rows": int(len(rare)), "rare": {"int2": f"2-bit, blocks of {cfg.rare_block}, float16 scale + minimum",
                                              "nearest": "no rows: the nearest kept row", "unk": "no rows: [UNK]'s row"}[cfg.rare],
        "rare_bytes": int(rare_bytes), "remap_bytes": 4 * v,
        **({"dropped_rows": int(len(dropped)), "dropped": "no rows: the nearest stored row"} if len(dropped) else {}),
    }
    rep.details["coverage"] = {"corpus": cfg.corpus or "calibration text", "corpus_tokens": int(counts.sum()),
                               "corpus_distinct_tokens": int((counts > 0).sum()),
                               "frequent_rows_cover_corpus": covered(counts, kept),
                               "frequent_rows_cover_calibration": covered(cal_counts, kept),
                               **({"stored_rows_cover_corpus": covered(counts, np.concatenate([kept, rare])),
                                   "stored_rows_cover_calibration": covered(cal_counts, np.concatenate([kept, rare]))}
                                  if len(dropped) else {})}
    swap_table(model, name, table, new, rep)
    rep.params_after = n_params_stored(new)
    return rep


def n_params_stored(m: FrequencySplitEmbedding) -> int:
    """Float parameters plus the rare rows' bytes counted as values (2 bits each)."""
    return m.frequent.weight.numel() + m.n_rare * m.embedding_dim


def apply_freq_table(model: nn.Module, cfg: FrequencyTableConfig, calibration: Calibration | None) -> StepReport:
    return split_table(model, cfg, calibration, "freq-table")


def apply_vocab_trim(model: nn.Module, cfg: VocabTrimConfig, calibration: Calibration | None) -> StepReport:
    return split_table(model, cfg, calibration, "vocab-trim")


METHODS.register("freq-table")((FrequencyTableConfig, apply_freq_table))
METHODS.register("vocab-trim")((VocabTrimConfig, apply_vocab_trim))
