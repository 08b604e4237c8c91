"""String-input artifacts (`edgecomp export --with-tokenizer`) vs the Hugging Face tokenizer on the shared
SST-2 and STS text: token-id mismatches per tokenizer, and the outputs against the token-input twin.

    python scripts/check_tokenizer_graphs.py [--models all-minilm-l6-v2 DIR ...] [--tiny] [--twin-texts 2000]

--tiny adds tests/tiny.py's random-init BERT (WordPiece), RoBERTa (byte-level BPE) and XLM-R (SentencePiece
unigram) models, each with its kind of tokenizer trained on the built-in sentences. Rows of models already in
results/tokenizer/token_ids.json are replaced, others kept.

Each model is exported (ONNX Runtime artifacts only: int8 .onnx and .ort, as the android target builds them)
with --with-tokenizer; the string-input .ort then tokenizes every sentence of the shared sets. Writes
results/tokenizer/token_ids.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from edgecomp.bench.tokenizer_parity import shared_sentences, token_id_parity
from edgecomp.paths import PROJECT_DIR, shared_data_dir

TARGET = """name = "ort-text-check"
opset = 18
[tolerance]
cos_mean = 0.5
cos_min = 0.3
[bench]
batch = 1
seq_len = 32
threads = [1]
warmup = 1
runs = 1
[[artifacts]]
name = "model"
format = "onnx"
runtime = "onnxruntime"
quantization = {weights = {bits = 8}, activations = "dynamic-per-tensor"}
[[artifacts]]
name = "model"
format = "ort"
runtime = "onnxruntime"
quantization = {weights = {bits = 8}, activations = "dynamic-per-tensor"}
from = "onnx"
primary = true
"""


def check(model: str, work: Path, sets: dict[str, list[str]], twin_texts: int) -> dict:
    out = work / f"export-{Path(model).name}"
    target = work / "target.toml"
    target.write_text(TARGET)
    subprocess.run([sys.executable, "-m", "edgecomp", "export", model, "--target", str(target), "-o", str(out),
                    "--no-bench", "--with-tokenizer", "--force"], check=True, stdout=subprocess.DEVNULL)
    manifest = json.loads((out / "manifest.json").read_text())
    rec = next(a for a in manifest["artifacts"] if a["path"] == "model-text.ort")
    row = {"model": manifest["model"]["name"], "tokenizer": rec["tokenizer"]["kind"], "op": rec["tokenizer"]["op"],
           "max_length": rec["max_length"], "onnxruntime_extensions": rec["tokenizer"]["onnxruntime_extensions"],
           "sets": {}}
    for name, texts in sets.items():
        row["sets"][name] = token_id_parity(out / "model-text.ort", out, texts, rec["max_length"],
                                            twin=out / "model.ort", twin_texts=twin_texts)
        print(model, name, row["sets"][name]["token_id_mismatches"], "/", len(texts), flush=True)
    return row


# What the mismatches listed below come from (read off every example, 2026-12-02; onnxruntime-extensions 0.15.2)
WHY = {
    "WordPiece": "`BertTokenizer` strips fewer accents than Hugging Face's NFD + combining-mark removal (mojibake "
                 "`äė` keeps its `ė`, Greek `ύ` its tonos), and a word holding a character outside the vocabulary "
                 "becomes its matched prefix + `[UNK]` where Hugging Face makes the whole word one `[UNK]` (`næss` "
                 "with the tiny vocabulary, which has no `æ`).",
    "BPE": "none.",
    "Unigram": "equal-score segmentations broken the other way: `000` is `0`+`00` or `00`+`0`, the same two pieces "
               "(the tiny SentencePiece model has no `000` piece); SentencePiece (the op) and tokenizers' Viterbi "
               "pick different ones.",
}


def markdown(rows: list[dict]) -> str:
    lines = ["# String-input artifacts: token ids vs the Hugging Face tokenizer", "",
             "`scripts/check_tokenizer_graphs.py`: every sentence of the shared SST-2 and STS-B sets through the "
             "string-input `model-text.ort` (int8), its token ids compared with `AutoTokenizer` (same truncation); "
             "the first texts of each set also against the token-input `model.ort` fed the Hugging Face ids.", "",
             "| model | tokenizer (op) | set | texts | token-id mismatches | max abs diff vs token-input | "
             "sentence_embedding cos min vs token-input |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, s in r["sets"].items():
            v = s.get("vs_token_input", {})
            lines.append(f"| {r['model']} | {r['tokenizer']} (`{r['op']}`) | {name} | {s['texts']} | "
                         f"{s['token_id_mismatches']} | {v.get('max_abs_diff', '—')} ({v.get('texts', 0)} texts) | "
                         f"{v.get('sentence_embedding_cos_min', '—')} |")
    kinds = sorted({r["tokenizer"] for r in rows})
    lines += ["", "## Why they differ", ""] + [f"- {k}: {WHY.get(k, 'not analysed')}" for k in kinds]
    examples = [(r["model"], name, e) for r in rows for name, s in r["sets"].items() for e in s["mismatch_examples"]]
    if examples:
        lines += ["", "## Mismatches (first of each set)", ""]
        lines += [f"- {m} {n}: `{e['text'][:80]}`: artifact {e['artifact']} vs HF {e['hugging_face']}" for m, n, e in examples]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["all-minilm-l6-v2"])
    ap.add_argument("--tiny", action="store_true", help="also the tiny BERT / RoBERTa / XLM-R of tests/tiny.py")
    ap.add_argument("--twin-texts", type=int, default=2000)
    ap.add_argument("--out", default=str(PROJECT_DIR / "results" / "tokenizer"))
    args = ap.parse_args()
    sets = shared_sentences(shared_data_dir())
    with tempfile.TemporaryDirectory() as tmp:
        models = list(args.models)
        if args.tiny:
            sys.path.insert(0, str(PROJECT_DIR / "tests"))
            import tiny

            for family, writer in (("bert", tiny.write_tiny_tokenizer), ("roberta", tiny.write_tiny_bpe_tokenizer),
                                   ("xlm-roberta", tiny.write_tiny_unigram_tokenizer)):
                models.append(str(tiny.save_tiny_encoder_with_tokenizer(family, Path(tmp) / f"tiny-{family}", writer)))
        rows = [check(m, Path(tmp), sets, args.twin_texts) for m in models]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "token_ids.json").exists():  # keep the rows of models not checked this time
        done = {r["model"] for r in rows}
        rows = [r for r in json.loads((out / "token_ids.json").read_text()) if r["model"] not in done] + rows
    (out / "token_ids.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "token_ids.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
