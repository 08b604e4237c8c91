"""Tiny random-init models built from transformers configs (no downloads), shared by the tests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def write_tiny_tokenizer(d: Path, input_names: list[str] | None = None) -> None:
    """A WordPiece tokenizer whose vocab is the words of the built-in sentences (no downloads); it emits
    `input_names` (default: ids, mask and token types, as BERT's does)."""
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
    extra = {"model_input_names": input_names} if input_names else {}
    BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True, **extra).save_pretrained(d)


def _sentences() -> list[str]:
    return (ROOT / "edgecomp" / "data" / "sentences.txt").read_text().splitlines()


def write_tiny_bpe_tokenizer(d: Path, input_names: list[str] | None = None) -> None:
    """A byte-level BPE tokenizer (RoBERTa's kind: <s> ... </s>) trained on the built-in sentences."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    d.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_sentences(), vocab_size=1000, min_frequency=1,
                            special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<mask>"], show_progress=False)
    bpe.save_model(str(d))
    extra = {"model_input_names": input_names} if input_names else {}
    RobertaTokenizerFast(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"), pad_token="<pad>",
                         unk_token="<unk>", bos_token="<s>", eos_token="</s>", mask_token="<mask>",
                         model_max_length=128, **extra).save_pretrained(d)


def write_tiny_unigram_tokenizer(d: Path, input_names: list[str] | None = None) -> None:
    """A SentencePiece unigram tokenizer laid out as XLM-R's (fairseq ids: <s> <pad> </s> <unk> first), the
    SentencePiece model trained on the built-in sentences."""
    import io

    import sentencepiece
    from transformers import XLMRobertaTokenizerFast

    d.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(_sentences()), model_writer=model, vocab_size=600,
                                             model_type="unigram", character_coverage=1.0, minloglevel=2)
    (d / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    extra = {"model_input_names": input_names} if input_names else {}
    XLMRobertaTokenizerFast(vocab_file=str(d / "sentencepiece.bpe.model"), model_max_length=128, **extra).save_pretrained(d)


def save_tiny_encoder_with_tokenizer(family: str, d: Path, write_tokenizer) -> Path:
    """A saved tiny `family` model with the tokenizer ``write_tokenizer(d, input_names)`` writes (its own kind of
    tokenizer), emitting the inputs the model's forward takes (as save_tiny_encoder's does)."""
    import inspect

    model = tiny_encoder(family)
    write_tokenizer(d, [n for n in IO_NAMES if n in inspect.signature(model.forward).parameters])
    model.save_pretrained(d)
    return d


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


# --- one tiny random-init model per encoder family ---------------------------------------------------
# (config class, overrides): hidden 64, 2 layers, vocab 1000; special-token ids inside the tiny vocabulary.
_SMALL = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=130)
TINY_ENCODERS = {
    "bert": ("BertConfig", _SMALL),
    "distilbert": ("DistilBertConfig", dict(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                            max_position_embeddings=130)),
    "roberta": ("RobertaConfig", dict(_SMALL, pad_token_id=0, bos_token_id=2, eos_token_id=3)),
    "xlm-roberta": ("XLMRobertaConfig", dict(_SMALL, pad_token_id=0, bos_token_id=2, eos_token_id=3)),
    "albert": ("AlbertConfig", dict(_SMALL, embedding_size=32, bos_token_id=2, eos_token_id=3)),
    "electra": ("ElectraConfig", dict(_SMALL, embedding_size=32)),
    "mpnet": ("MPNetConfig", dict(_SMALL, pad_token_id=0, bos_token_id=2, eos_token_id=3)),
    "deberta-v2": ("DebertaV2Config", dict(_SMALL, max_position_embeddings=128)),
    "modernbert": ("ModernBertConfig", dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=128, max_position_embeddings=128, pad_token_id=0,
                                            bos_token_id=2, eos_token_id=3, sep_token_id=3, cls_token_id=2,
                                            global_attn_every_n_layers=2, local_attention=16)),
}


def tiny_encoder_config(family: str, **kw):
    import transformers

    cls_name, base = TINY_ENCODERS[family]
    return getattr(transformers, cls_name)(**{**base, **kw})


def tiny_encoder(family: str, classifier: bool = False, seed: int = 0):
    """A random-init encoder of `family` (its *ForSequenceClassification with two labels if `classifier`)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cfg = tiny_encoder_config(family, **({"num_labels": 2} if classifier else {}))
    auto = AutoModelForSequenceClassification if classifier else AutoModel
    return auto.from_config(cfg, attn_implementation="eager").eval()


def save_tiny_encoder(family: str, d: Path, classifier: bool = False) -> Path:
    """A saved tiny `family` model + the tiny WordPiece tokenizer: a local Hugging Face directory. The
    tokenizer emits token_type_ids only where the model takes them (as each family's own tokenizer does)."""
    import inspect

    model = tiny_encoder(family, classifier)
    write_tiny_tokenizer(d, [n for n in IO_NAMES if n in inspect.signature(model.forward).parameters])
    if classifier:
        model.config.architectures = [type(model).__name__]
    model.save_pretrained(d)
    return d


def recipe_file(path: Path, body: str) -> Path:
    """A user's recipe .toml: a description and `body` (precision, steps, ...)."""
    path.write_text(f'description = "{path.stem} (tests)"\n{body}')
    return path
