"""The model's tokenizer as ONNX graph ops (onnxruntime-extensions), merged ahead of an encoder graph, so an
artifact takes a batch of strings: ``text [N] -> input_ids, attention_mask(, token_type_ids) -> ...``.

A tokenizer graph is chosen by the kind of tokenizer the model ships (its ``tokenizer.json`` model type:
WordPiece, BPE, Unigram), never by the model family: ``TOKENIZER_GRAPHS``. onnxruntime-extensions'
WordPiece op (``BertTokenizer``) takes one text per call, so the graph loops over the batch: each text is
tokenized, truncated at the export's ``max_length`` (keeping the final separator, as Hugging Face does) and
padded to it, then the batch is cut to its longest row and the attention mask follows the lengths.

The merged graph also outputs the token ids and mask it fed the model (``input_ids``, ``attention_mask``), so
an app can see what the model read, and verification compares them with the Hugging Face tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import EdgecompError
from ..registry import Registry

CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions' op domain
TEXT_INPUT = "text"
INSTALL = 'pip install -e ".[tokenizer]"'


@dataclass(frozen=True)
class TokenizerGraph:
    """A tokenizer's ONNX graph and what the manifest says about it."""

    model: object  # onnx.ModelProto: text [N] -> the model's token inputs
    op: str  # the onnxruntime-extensions op that tokenizes
    kind: str  # tokenizer.json model type


# tokenizer.json model type -> builder(tokenizer_json: dict, max_length, input_names, opset, folder) -> TokenizerGraph
TOKENIZER_GRAPHS: Registry[Callable[..., TokenizerGraph]] = Registry("tokenizer kind")


def extensions_version() -> str:
    try:
        import onnxruntime_extensions
    except ImportError:
        raise EdgecompError("--with-tokenizer needs onnxruntime-extensions, which is not installed",
                            f"run `{INSTALL}`") from None
    return onnxruntime_extensions.__version__


def library_path() -> str:
    extensions_version()
    from onnxruntime_extensions import get_library_path

    return get_library_path()


def register_instructions(version: str) -> dict:
    """How an app registers the custom-op library before it opens a string-input artifact."""
    return {
        "python": "so = onnxruntime.SessionOptions(); so.register_custom_ops_library(onnxruntime_extensions.get_library_path())",
        "java_android": ("implementation 'com.microsoft.onnxruntime:onnxruntime-extensions-android:"
                         f"{version}'; sessionOptions.registerCustomOpLibrary(OrtxPackage.getLibraryPath())"),
        "c": ('OrtApi::RegisterCustomOpsLibrary_V2(session_options, "libortextensions.so") before CreateSession '
              "(the library of the same onnxruntime-extensions release, built for the device)"),
    }


def tokenizer_json(folder: Path) -> dict:
    p = Path(folder) / "tokenizer.json"
    if not p.is_file():
        raise EdgecompError(f"--with-tokenizer needs the model's tokenizer.json, and {folder} has none",
                            "save the model's fast tokenizer (AutoTokenizer.from_pretrained(...).save_pretrained(DIR))")
    return json.loads(p.read_text(encoding="utf-8"))


def check_tokenizer(folder: Path) -> None:
    """Refuse before any work: no onnxruntime-extensions, no tokenizer.json, or a tokenizer without a graph
    (the graph is built here and thrown away: building it is cheap, and every refusal is in the builders)."""
    build_tokenizer_graph(folder, 16, ["input_ids", "attention_mask"], 18)


def build_tokenizer_graph(folder: Path, max_length: int, input_names: list[str], opset: int) -> TokenizerGraph:
    extensions_version()
    tj = tokenizer_json(folder)
    kind = (tj.get("model") or {}).get("type")
    if kind not in TOKENIZER_GRAPHS:
        raise EdgecompError(f"--with-tokenizer: no tokenizer graph for {kind!r} tokenizers yet "
                            f"(it builds {', '.join(TOKENIZER_GRAPHS.names())})",
                            "export without --with-tokenizer and tokenize in the app")
    return TOKENIZER_GRAPHS.get(kind)(tj, max_length, input_names, opset, Path(folder))


def _tensor(name, elem, dims):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, dims)


@TOKENIZER_GRAPHS.register("WordPiece")
def wordpiece_graph(tj: dict, max_length: int, input_names: list[str], opset: int, folder: Path) -> TokenizerGraph:
    """``BertTokenizer`` (WordPiece with BERT's normalizer and pre-tokenizer) in a Loop over the batch."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    model, norm = tj["model"], tj.get("normalizer") or {}
    if norm.get("type") != "BertNormalizer" or (tj.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        raise EdgecompError("--with-tokenizer: this WordPiece tokenizer does not normalize and split as BERT does "
                            f"(normalizer {norm.get('type')!r}), which BertTokenizer implements",
                            "export without --with-tokenizer and tokenize in the app")
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise EdgecompError("--with-tokenizer: the WordPiece vocabulary has gaps in its ids",
                            "export without --with-tokenizer and tokenize in the app")
    special = _special_tokens(tj)
    lowercase = bool(norm.get("lowercase", True))
    # Hugging Face strips accents when lowercasing unless told otherwise (strip_accents None)
    strip = norm.get("strip_accents")
    strip = lowercase if strip is None else bool(strip)
    pad_id = (tj.get("padding") or {}).get("pad_id", model["vocab"].get("[PAD]", 0))
    attrs = dict(vocab_file="\n".join(t for t, _ in vocab), do_lower_case=int(lowercase), strip_accents=int(strip),
                 tokenize_chinese_chars=int(norm.get("handle_chinese_chars", True)),
                 suffix_indicator=model.get("continuing_subword_prefix", "##"), unk_token=model.get("unk_token", "[UNK]"),
                 max_length=int(max_length), **special)

    tokenize = [helper.make_node("BertTokenizer", ["text_i"], ["ids_i", "types_i", "mask_i", "offsets_i"],
                                 domain=CONTRIB, **attrs)]
    nodes = _loop_over_texts(tokenize, max_length, pad_id)
    return TokenizerGraph(_tokenizer_model(nodes, input_names, opset), "BertTokenizer", "WordPiece")


@TOKENIZER_GRAPHS.register("BPE")
def bpe_graph(tj: dict, max_length: int, input_names: list[str], opset: int, folder: Path) -> TokenizerGraph:
    """Byte-level BPE (GPT-2 / RoBERTa vocabularies): ``RobertaTokenizer`` when the tokenizer wraps texts in
    <s> ... </s> (its RobertaProcessing post-processor), else ``GPT2Tokenizer``. Both take the batch at once
    and pad it; truncation at ``max_length`` keeps the closing token as Hugging Face does."""
    from onnx import TensorProto as T
    from onnx import helper

    pre, post = tj.get("pre_tokenizer") or {}, tj.get("post_processor") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        raise EdgecompError("--with-tokenizer: this BPE tokenizer does not split bytes as GPT-2 / RoBERTa do "
                            f"(pre-tokenizer {pre.get('type')!r}, add_prefix_space {pre.get('add_prefix_space')})",
                            "export without --with-tokenizer and tokenize in the app")
    if post.get("type") == "RobertaProcessing":
        op, eos = "RobertaTokenizer", int(post["sep"][1])
    elif post.get("type") in (None, "ByteLevel"):
        op, eos = "GPT2Tokenizer", None
    else:
        raise EdgecompError(f"--with-tokenizer: no graph for a BPE tokenizer with a {post.get('type')!r} post-processor",
                            "export without --with-tokenizer and tokenize in the app")
    model = tj["model"]
    merges = "\n".join(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    pad_id = (tj.get("padding") or {}).get("pad_id", model["vocab"].get("<pad>", 0))
    raw_outputs = ["raw_ids", "raw_mask"] + (["offsets"] if op == "RobertaTokenizer" else [])
    nodes = [helper.make_node(op, [TEXT_INPUT], raw_outputs, domain=CONTRIB, vocab=json.dumps(model["vocab"]),
                              merges=merges)]
    nodes += _truncate_and_pad("raw_ids", "raw_mask", max_length, eos, pad_id)
    return TokenizerGraph(_tokenizer_model(nodes, input_names, opset), op, "BPE")


def _const(name, value, dtype=None):
    import numpy as np
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value, dtype=dtype or np.int64), name))


def _loop_over_texts(tokenize: list, max_length: int, pad_id: int) -> list:
    """Nodes: a Loop over the batch for an op that tokenizes one text at a time. ``tokenize`` are nodes of the
    loop body from ``text_i`` (a [1] string tensor) to ``ids_i`` and ``types_i`` ([len], at most
    ``max_length``); the batch is padded to its longest row, the mask follows each row's length."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    body = helper.make_graph(
        [_const("zero", [0]), _const("max_len", [max_length]), _const("pad_id", pad_id), _const("zero_s", 0),
         helper.make_node("Unsqueeze", ["i", "zero"], ["i1"]),
         helper.make_node("Gather", ["texts_in", "i1"], ["text_i"], axis=0),
         *tokenize,
         helper.make_node("Shape", ["ids_i"], ["len_i"]),
         helper.make_node("Sub", ["max_len", "len_i"], ["room"]),
         helper.make_node("Concat", ["zero", "room"], ["pads"], axis=0),
         helper.make_node("Pad", ["ids_i", "pads", "pad_id"], ["ids_pad"]),
         helper.make_node("Pad", ["types_i", "pads", "zero_s"], ["types_pad"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["texts_in"], ["texts_out"])],
        "tokenize_one",
        # the texts are a loop-carried value, not an outer-scope name: tools that cut graphs (onnx.utils.
        # Extractor) see the dependency
        [_tensor("i", T.INT64, []), _tensor("cond_in", T.BOOL, []), _tensor("texts_in", T.STRING, ["batch_size"])],
        [_tensor("cond_out", T.BOOL, []), _tensor("texts_out", T.STRING, ["batch_size"]),
         _tensor("ids_pad", T.INT64, [max_length]),
         _tensor("types_pad", T.INT64, [max_length]), _tensor("len_i", T.INT64, [1])],
    )
    return [
        helper.make_node("Shape", [TEXT_INPUT], ["n"]),
        helper.make_node("Squeeze", ["n"], ["n_s"]),
        helper.make_node("Constant", [], ["true"], value=numpy_helper.from_array(np.array(True), "true")),
        helper.make_node("Loop", ["n_s", "true", TEXT_INPUT], ["texts_seen", "ids_all", "types_all", "lens"], body=body),
        _const("one_o", [1]), _const("zero_o", [0]),
        helper.make_node("ReduceMax", ["lens"], ["longest"], keepdims=0),  # the batch's longest row
        helper.make_node("Unsqueeze", ["longest", "zero_o"], ["longest_1"]),
        helper.make_node("Slice", ["ids_all", "zero_o", "longest_1", "one_o"], ["input_ids"]),
        helper.make_node("Slice", ["types_all", "zero_o", "longest_1", "one_o"], ["token_type_ids"]),
        _const("start", 0), _const("step", 1),
        helper.make_node("Range", ["start", "longest", "step"], ["positions"]),
        helper.make_node("Less", ["positions", "lens"], ["real"]),  # [L] < [N, 1] -> [N, L]
        helper.make_node("Cast", ["real"], ["attention_mask"], to=T.INT64),
    ]


def _wrapping_ids(tj: dict) -> tuple[int | None, int | None]:
    """The ids the post-processor puts before and after a single text (<s> ... </s>, [CLS] ... [SEP])."""
    post = tj.get("post_processor") or {}
    if post.get("type") in ("RobertaProcessing", "BertProcessing"):
        return int(post["cls"][1]), int(post["sep"][1])
    if post.get("type") == "TemplateProcessing":
        single, specials = post.get("single", []), post.get("special_tokens", {})
        ids = [(i, specials[e["SpecialToken"]["id"]]["ids"][0]) for i, e in enumerate(single) if "SpecialToken" in e]
        seq = next((i for i, e in enumerate(single) if "Sequence" in e), 0)
        before = [v for i, v in ids if i < seq]
        after = [v for i, v in ids if i > seq]
        if len(before) > 1 or len(after) > 1:
            raise EdgecompError("--with-tokenizer: the tokenizer wraps texts in more than one token per side",
                                "export without --with-tokenizer and tokenize in the app")
        return (before[0] if before else None), (after[0] if after else None)
    return None, None


@TOKENIZER_GRAPHS.register("Unigram")
def unigram_graph(tj: dict, max_length: int, input_names: list[str], opset: int, folder: Path) -> TokenizerGraph:
    """SentencePiece unigram (XLM-R style): ``SentencepieceTokenizer`` on the model's own SentencePiece file,
    with fairseq's id offset when the vocabulary puts <s>, <pad>, </s>, <unk> first (as XLM-R's does); one
    text per call, so in a Loop. A text longer than ``max_length`` keeps its first tokens and the wrapping."""
    from onnx import TensorProto as T
    from onnx import helper

    spm = next((p for p in (folder / n for n in SENTENCEPIECE_FILES) if p.is_file()), None)
    if spm is None:
        raise EdgecompError(f"--with-tokenizer: {folder} has no SentencePiece model ({' or '.join(SENTENCEPIECE_FILES)})",
                            "save the model's slow tokenizer files too, or export without --with-tokenizer")
    vocab = [piece for piece, _ in tj["model"]["vocab"]]
    fairseq = vocab[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    bos, eos = _wrapping_ids(tj)
    pad_id = (tj.get("padding") or {}).get("pad_id", vocab.index("<pad>") if "<pad>" in vocab else 0)
    room = max_length - (bos is not None) - (eos is not None)
    import numpy as np

    tokenize = [
        _const("b_nbest", [0]), _const("b_alpha", [0.0], np.float32), _const("b_false", [False], np.bool_),
        _const("b_fairseq", [fairseq], np.bool_),
        helper.make_node("SentencepieceTokenizer", ["text_i", "b_nbest", "b_alpha", "b_false", "b_false", "b_false",
                                                     "b_fairseq"], ["pieces_i", "rows_i", "at_i"],
                         domain=CONTRIB, model=spm.read_bytes()),
        helper.make_node("Cast", ["pieces_i"], ["pieces64_i"], to=T.INT64),
        _const("b_zero", [0]), _const("b_room", [room]),
        helper.make_node("Slice", ["pieces64_i", "b_zero", "b_room"], ["kept_i"]),
        *([_const("b_bos", [bos])] if bos is not None else []), *([_const("b_eos", [eos])] if eos is not None else []),
        helper.make_node("Concat", [*(["b_bos"] if bos is not None else []), "kept_i", *(["b_eos"] if eos is not None else [])],
                         ["ids_i"], axis=0),
        helper.make_node("Mul", ["ids_i", "b_zero"], ["types_i"]),
    ]
    nodes = _loop_over_texts(tokenize, max_length, pad_id)
    return TokenizerGraph(_tokenizer_model(nodes, input_names, opset), "SentencepieceTokenizer", "Unigram")


SENTENCEPIECE_FILES = ("sentencepiece.bpe.model", "tokenizer.model", "spiece.model")


def _truncate_and_pad(ids: str, mask: str, max_length: int, eos: int | None, pad_id: int) -> list:
    """Nodes: a padded [N, L] batch of ids and its mask -> ``input_ids``, ``attention_mask``, ``token_type_ids``
    cut at ``max_length`` (a cut row ends with ``eos`` again, when the tokenizer closes rows with one), padding
    positions holding ``pad_id`` (RoBERTa numbers positions by where the ids are not padding)."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    def const(name, value, dtype=np.int64):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name))

    nodes = [const("t_zero", [0]), const("t_one", [1]), const("t_two", [2]), const("t_max", [max_length]),
             const("t_pad", pad_id), const("t_zero_s", 0),
             helper.make_node("Shape", [ids], ["t_shape"]),
             helper.make_node("Slice", ["t_shape", "t_one", "t_two", "t_zero"], ["t_len"]),  # [L]
             helper.make_node("Min", ["t_len", "t_max"], ["t_keep"]),
             helper.make_node("Slice", [ids, "t_zero", "t_keep", "t_one"], ["t_ids"]),
             helper.make_node("Slice", [mask, "t_zero", "t_keep", "t_one"], ["t_mask"]),
             helper.make_node("Cast", ["t_mask"], ["t_real"], to=T.BOOL)]
    cut = "t_ids"
    if eos is not None:
        nodes += [const("t_last", max_length - 1), const("t_eos", eos),
                  helper.make_node("ReduceSum", [mask, "t_one"], ["t_lens"], keepdims=1),  # [N, 1]
                  helper.make_node("Greater", ["t_lens", "t_max"], ["t_over"]),
                  helper.make_node("Squeeze", ["t_keep"], ["t_keep_s"]), const("t_step", 1),
                  helper.make_node("Range", ["t_zero_s", "t_keep_s", "t_step"], ["t_pos"]),
                  helper.make_node("Equal", ["t_pos", "t_last"], ["t_at_last"]),
                  helper.make_node("And", ["t_over", "t_at_last"], ["t_close"]),
                  helper.make_node("Where", ["t_close", "t_eos", "t_ids"], ["t_closed"])]
        cut = "t_closed"
    nodes += [helper.make_node("Where", ["t_real", cut, "t_pad"], ["input_ids"]),
              helper.make_node("Identity", ["t_mask"], ["attention_mask"]),
              helper.make_node("Mul", ["input_ids", "t_zero_s"], ["token_type_ids"])]
    return nodes


def _tokenizer_model(nodes: list, input_names: list[str], opset: int):
    from onnx import TensorProto as T
    from onnx import helper

    outputs = [_tensor(n, T.INT64, ["batch_size", "sequence_length"]) for n in input_names]
    graph = helper.make_graph(nodes, "tokenizer", [_tensor(TEXT_INPUT, T.STRING, ["batch_size"])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB, 1)])


def _special_tokens(tj: dict) -> dict:
    """cls/sep/pad/mask token strings from the tokenizer's post-processor and added tokens."""
    added = {t["content"] for t in tj.get("added_tokens", [])}
    out = {}
    for attr, token in (("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("pad_token", "[PAD]"), ("mask_token", "[MASK]")):
        if token in added:
            out[attr] = token
    post = tj.get("post_processor") or {}
    for attr, key in (("cls_token", "cls"), ("sep_token", "sep")):  # BertProcessing: {"cls": [token, id]}
        if isinstance(post.get(key), list):
            out[attr] = post[key][0]
    return out


def prepend_tokenizer(model_path: Path, dst: Path, folder: Path, max_length: int, opset: int) -> dict:
    """``dst``: the string-input graph, the tokenizer of ``folder`` ahead of the token-input ``model_path``
    (onnx.compose). Returns the manifest's ``tokenizer`` block."""
    import onnx
    from onnx import compose

    version = extensions_version()
    model = onnx.load(str(model_path))
    token_inputs = [i.name for i in model.graph.input]
    tok = build_tokenizer_graph(folder, max_length, token_inputs, opset)
    tok.model.ir_version = model.ir_version
    main_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    for o in tok.model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = main_opset
    outputs = [o.name for o in model.graph.output]
    seen = [n for n in ("input_ids", "attention_mask") if n in token_inputs]
    merged = compose.merge_models(tok.model, model, io_map=[(n, n) for n in token_inputs],
                                  outputs=[*outputs, *seen])
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
    onnx.save(merged, str(tmp))
    tmp.replace(dst)
    return {"input": TEXT_INPUT, "kind": tok.kind, "op": f"{CONTRIB}.{tok.op}", "max_length": max_length,
            "onnxruntime_extensions": version, "register_custom_ops": register_instructions(version)}
