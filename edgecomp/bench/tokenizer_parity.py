"""String-input artifacts (``export --with-tokenizer``) against the Hugging Face tokenizer and their
token-input twins: do they feed the model the same token ids, and answer the same?"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class _TokenizerNodes:
    """The tokenizer nodes of a string-input .onnx (``text`` -> ``input_ids``, ``attention_mask``) as their own
    session: ONNX Runtime runs a whole graph whatever outputs are fetched, and the full shared text through the
    model costs minutes the ids do not need. The nodes are the artifact's own (onnx.utils.Extractor)."""

    def __init__(self, path: Path, threads: int):
        import onnx
        import onnxruntime as ort
        from onnx.utils import Extractor

        from ..lower.tokenizer import library_path

        sub = Extractor(onnx.load(str(path))).extract_model(["text"], ["input_ids", "attention_mask"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.register_custom_ops_library(library_path())
        self.session = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def token_ids(self, feeds: dict) -> dict:
        return dict(zip(["input_ids", "attention_mask"], self.session.run(["input_ids", "attention_mask"], feeds)))


def tokenizer_subgraph(path: Path, threads: int = 1) -> _TokenizerNodes:
    return _TokenizerNodes(path, threads)


def token_id_parity(artifact: Path, tokenizer_dir: Path, texts: list[str], max_length: int, batch_size: int = 64,
                    twin: Path | None = None, twin_texts: int = 0, threads: int = 1, examples: int = 10) -> dict:
    """Run the string-input ``artifact`` on ``texts`` and compare, per text, the ids it fed its model with the
    Hugging Face tokenizer of ``tokenizer_dir`` (truncating at ``max_length``). With ``twin`` (its token-input
    artifact), the first ``twin_texts`` texts run the whole artifact and compare every output the twin has
    (fed the HF ids); the others run only its tokenizer nodes (from the .onnx twin beside an .ort, same nodes)."""
    from transformers import AutoTokenizer

    from ..runtime import open_artifact

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    runner = open_artifact(artifact, threads=threads)
    source = Path(artifact).with_suffix(".onnx")
    ids_only = tokenizer_subgraph(source, threads) if source.is_file() else None
    other = open_artifact(twin, threads=threads) if twin else None
    mismatched: list[dict] = []
    n_mismatch, diff, cos_min = 0, 0.0, 1.0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        feed = {"text": np.array(chunk, dtype=object)}
        compare_outputs = other is not None and start < twin_texts
        # only the ids when the outputs are not compared: ORT then runs the tokenizer nodes alone
        got = ids_only.token_ids(feed) if ids_only and not compare_outputs else runner.run(feed)
        want = tok(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        for i, text in enumerate(chunk):
            have = got["input_ids"][i][got["attention_mask"][i].astype(bool)].tolist()
            ref = want["input_ids"][i][want["attention_mask"][i].astype(bool)].tolist()
            if have != ref:
                n_mismatch += 1
                if len(mismatched) < examples:
                    first = next((j for j, (a, b) in enumerate(zip(have, ref)) if a != b), min(len(have), len(ref)))
                    mismatched.append({"text": text, "first_difference_at": first,
                                       "artifact": tok.convert_ids_to_tokens(have[max(0, first - 2): first + 3]),
                                       "hugging_face": tok.convert_ids_to_tokens(ref[max(0, first - 2): first + 3])})
        if compare_outputs:
            feeds = {k: want[k].astype(np.int64) for k in other.input_names if k in want}
            if got["input_ids"].shape == want["input_ids"].shape:  # a mismatched batch is counted above
                ref_out = other.run(feeds)
                for k, v in ref_out.items():
                    diff = max(diff, float(np.abs(got[k] - v).max()))
                if "sentence_embedding" in ref_out:
                    a, b = got["sentence_embedding"], ref_out["sentence_embedding"]
                    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
                    cos_min = min(cos_min, float(cos.min()))
    out = {"texts": len(texts), "token_id_mismatches": n_mismatch, "mismatch_examples": mismatched}
    if other is not None:
        out["vs_token_input"] = {"texts": min(twin_texts, len(texts)), "max_abs_diff": diff,
                                 "sentence_embedding_cos_min": cos_min}
    return out


def shared_sentences(data_dir: Path) -> dict[str, list[str]]:
    """The development sets' sentences (SST-2 train + dev, STS-B train + dev, both sides of each pair), by set;
    blank ones dropped. For checks and benchmarks only: the package never reads these at run time."""
    data_dir = Path(data_dir)
    sets: dict[str, list[str]] = {}
    for name in ("train", "dev"):
        p = data_dir / "sst2" / f"{name}.tsv"
        if p.is_file():
            rows = p.read_text(encoding="utf-8").splitlines()[1:]  # header: sentence<TAB>label
            sets[f"sst2/{name}"] = [r.split("\t")[0].strip() for r in rows if r.split("\t")[0].strip()]
    for name in ("sts-train", "sts-dev"):
        p = data_dir / "sts" / f"{name}.tsv"
        if p.is_file():
            pairs = [r.split("\t") for r in p.read_text(encoding="utf-8").splitlines()]
            sets[f"sts/{name}"] = [s.strip() for r in pairs if len(r) >= 7 for s in r[5:7] if s.strip()]
    return sets
