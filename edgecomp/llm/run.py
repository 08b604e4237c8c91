"""``edgecomp run`` on a causal-LM export: ``--generate N`` (greedy text + tokens/s per input line) or
``--perplexity`` ({"perplexity", "tokens_scored", "nll"} per line). On-device code path: no torch, no transformers; the
tokenizer is the export folder's tokenizer.json read with ``tokenizers``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import EdgecompError
from .generate import generate, perplexity


class JsonTokenizer:
    """The subset of a transformers tokenizer that generate()/perplexity() use, from tokenizer.json."""

    def __init__(self, export_dir: Path):
        from tokenizers import Tokenizer

        export_dir = Path(export_dir)
        tj = export_dir / "tokenizer.json"
        if not tj.exists():
            raise EdgecompError(f"{export_dir} has no tokenizer.json", "re-run `edgecomp export` (it copies the tokenizer)")
        self.tok = Tokenizer.from_file(str(tj))
        self.tok.no_padding()
        self.tok.no_truncation()
        cfg_file = export_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}

        def tid(key):
            t = cfg.get(key)
            t = t["content"] if isinstance(t, dict) else t
            return self.tok.token_to_id(t) if t else None

        self.eos_token_id, self.bos_token_id = tid("eos_token"), tid("bos_token")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def run_causal_lm(artifact_path: Path, export_dir: Path, texts: list[str], generate_tokens: int | None = None,
                  score_perplexity: bool = False, threads: int = 1) -> list[dict]:
    """One record per text: {"text", "tokens", "tokens_per_s", "prefill_ms"} and/or {"nll", "tokens_scored"}."""
    tok = JsonTokenizer(export_dir)
    from .generate import open_causal_lm

    sess = open_causal_lm(artifact_path, threads)
    recs = [{} for _ in texts]
    if generate_tokens:
        for r, g in zip(recs, generate(sess, tok, texts, generate_tokens)):
            r.update({"text": g["text"], "tokens": g["tokens"], "tokens_per_s": g["tokens_per_s"],
                      "prefill_ms": round(g["prefill_ms"], 2)})
    if score_perplexity:
        for r, p in zip(recs, perplexity(sess, tok, texts)):
            # a line of one token is context only: nothing is scored, so it has no perplexity
            ppl = round(math.exp(p["nll"] / p["tokens"]), 4) if p["tokens"] else None
            r.update({"perplexity": ppl, "tokens_scored": p["tokens"], "nll": round(p["nll"], 6)})
    return recs
