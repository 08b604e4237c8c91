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


# tokenizer.json model type -> builder(tokenizer_json: dict, max_length, input_names, opset) -> TokenizerGraph
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
        "c": ('OrtSessionOptionsAppendExecutionProvider... / RegisterCustomOpsLibrary_V2(session_options, '
              '"libortextensions.so") (or link onnxruntime-extensions statically and call RegisterCustomOps)'),
    }


def tokenizer_json(folder: Path) -> dict:
    p = Path(folder) / "tokenizer.json"
    if not p.is_file():
        raise EdgecompError(f"--with-tokenizer needs the model's tokenizer.json, and {folder} has none",
                            "save the model's fast tokenizer (AutoTokenizer.from_pretrained(...).save_pretrained(DIR))")
    return json.loads(p.read_text(encoding="utf-8"))


def check_tokenizer(folder: Path) -> None:
    """Refuse before any work: no onnxruntime-extensions, no tokenizer.json, or a kind without a graph."""
    extensions_version()
    kind = (tokenizer_json(folder).get("model") or {}).get("type")
    if kind not in TOKENIZER_GRAPHS:
        raise EdgecompError(f"--with-tokenizer: no tokenizer graph for {kind!r} tokenizers yet "
                            f"(it builds {', '.join(TOKENIZER_GRAPHS.names())})",
                            "export without --with-tokenizer and tokenize in the app")


def build_tokenizer_graph(folder: Path, max_length: int, input_names: list[str], opset: int) -> TokenizerGraph:
    check_tokenizer(folder)
    tj = tokenizer_json(folder)
    return TOKENIZER_GRAPHS.get(tj["model"]["type"])(tj, max_length, input_names, opset)


def _tensor(name, elem, dims):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, dims)


@TOKENIZER_GRAPHS.register("WordPiece")
def wordpiece_graph(tj: dict, max_length: int, input_names: list[str], opset: int) -> TokenizerGraph:
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

    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))

    # loop body: text i -> its ids and type ids padded to max_length, and its length
    body = helper.make_graph(
        [const("zero", [0]), const("max_len", [max_length]), const("pad_id", pad_id),
         const("zero_s", 0),
         helper.make_node("Unsqueeze", ["i", "zero"], ["i1"]),
         helper.make_node("Gather", ["texts_outer", "i1"], ["text_i"], axis=0),
         helper.make_node("BertTokenizer", ["text_i"], ["ids_i", "types_i", "mask_i", "offsets_i"], domain=CONTRIB, **attrs),
         helper.make_node("Shape", ["ids_i"], ["len_i"]),
         helper.make_node("Sub", ["max_len", "len_i"], ["room"]),
         helper.make_node("Concat", ["zero", "room"], ["pads"], axis=0),
         helper.make_node("Pad", ["ids_i", "pads", "pad_id"], ["ids_pad"]),
         helper.make_node("Pad", ["types_i", "pads", "zero_s"], ["types_pad"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "tokenize_one",
        [_tensor("i", T.INT64, []), _tensor("cond_in", T.BOOL, [])],
        [_tensor("cond_out", T.BOOL, []), _tensor("ids_pad", T.INT64, [max_length]),
         _tensor("types_pad", T.INT64, [max_length]), _tensor("len_i", T.INT64, [1])],
    )
    nodes = [
        helper.make_node("Identity", [TEXT_INPUT], ["texts_outer"]),
        helper.make_node("Shape", [TEXT_INPUT], ["n"]),
        helper.make_node("Squeeze", ["n"], ["n_s"]),
        helper.make_node("Constant", [], ["true"], value=numpy_helper.from_array(np.array(True), "true")),
        helper.make_node("Loop", ["n_s", "true"], ["ids_all", "types_all", "lens"], body=body),
        const("one_o", [1]), const("zero_o", [0]),
        helper.make_node("ReduceMax", ["lens"], ["longest"], keepdims=0),  # the batch's longest row
        helper.make_node("Unsqueeze", ["longest", "zero_o"], ["longest_1"]),
        helper.make_node("Slice", ["ids_all", "zero_o", "longest_1", "one_o"], ["input_ids"]),
        helper.make_node("Slice", ["types_all", "zero_o", "longest_1", "one_o"], ["token_type_ids"]),
        const("start", 0), const("step", 1),
        helper.make_node("Range", ["start", "longest", "step"], ["positions"]),
        helper.make_node("Less", ["positions", "lens"], ["real"]),  # [L] < [N, 1] -> [N, L]
        helper.make_node("Cast", ["real"], ["attention_mask"], to=T.INT64),
    ]
    outputs = [_tensor(n, T.INT64, ["batch_size", "sequence_length"]) for n in input_names]
    graph = helper.make_graph(nodes, "tokenizer", [_tensor(TEXT_INPUT, T.STRING, ["batch_size"])], outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB, 1)])
    return TokenizerGraph(m, "BertTokenizer", "WordPiece")


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
