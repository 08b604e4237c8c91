"""Greedy generation and perplexity over an exported causal LM with a KV cache (ONNX Runtime .onnx/.ort,
LiteRT .tflite).

The artifact follows optimum's ``text-generation-with-past`` contract: inputs ``input_ids``,
``attention_mask`` [B, past+seq], ``position_ids``, ``past_key_values.{i}.key|value`` [B, kv_heads, past,
head_dim]; outputs ``logits`` and ``present.{i}.key|value``. One graph serves prefill (past length 0) and
the decode step (seq length 1). The cache stays in ONNX Runtime ``OrtValue``s between steps, so a decode
step never copies it through numpy.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import EdgecompError

DEFAULT_ARTIFACT_NAMES = ("model.onnx", "model.ort", "model.tflite")


def resolve_artifact(path: str | Path) -> Path:
    """An artifact file, or an export folder (its primary artifact as the manifest says, else model.onnx)."""
    p = Path(path)
    if p.is_dir():
        man = p / "manifest.json"
        if man.exists():
            import json

            arts = json.loads(man.read_text()).get("artifacts", [])
            prim = [a for a in arts if a.get("primary")] or arts
            if prim:
                return p / prim[0]["path"]
        for n in DEFAULT_ARTIFACT_NAMES:
            if (p / n).exists():
                return p / n
        raise EdgecompError(f"{p} holds no causal-LM artifact", "pass an .onnx/.ort file or an export folder")
    if not p.is_file():
        raise EdgecompError(f"artifact {p} does not exist", "pass an .onnx/.ort file or an export folder")
    return p


class _GreedyMixin:
    """Greedy decoding over ``step``/``empty_cache`` (shared by the ONNX Runtime and LiteRT sessions)."""

    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None = None) -> dict:
        t0 = time.perf_counter()
        logits, cache = self.step(np.asarray(prompt_ids), 0, self.empty_cache())
        t_prefill = time.perf_counter() - t0
        out = [int(logits[-1].argmax())]
        t1 = time.perf_counter()
        while len(out) < max_new_tokens and (eos_id is None or out[-1] != eos_id):
            logits, cache = self.step(np.asarray(out[-1:]), len(prompt_ids) + len(out) - 1, cache)
            out.append(int(logits[-1].argmax()))
        t_decode = time.perf_counter() - t1
        n_dec = len(out) - 1
        return {"tokens": out, "prefill_ms": t_prefill * 1e3,
                "tokens_per_s": n_dec / t_decode if n_dec and t_decode > 0 else None}


def open_causal_lm(path, threads: int | None = None):
    """A KV-cache session for an .onnx/.ort (ONNX Runtime) or .tflite (LiteRT) causal LM."""
    p = resolve_artifact(path)
    return LiteRTCausalLM(p, threads) if p.suffix == ".tflite" else CausalLMSession(p, threads)


class CausalLMSession(_GreedyMixin):
    """An ONNX Runtime session over a KV-cache causal LM, batch 1."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from ..runtime.ort import ort_session

        self.path = resolve_artifact(path)
        self.session = ort_session(self.path, threads)
        ins = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in ins if n.startswith("past_key_values.")]
        if "input_ids" not in ins or not self.past_names:
            raise EdgecompError(f"{self.path.name} is not a KV-cache causal LM (inputs: {sorted(ins)[:4]}...)",
                                "export the model with task text-generation")
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        shape = ins[self.past_names[0]].shape  # [batch, kv_heads, past_len, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.has_position_ids = "position_ids" in ins
        import onnxruntime

        self._ort = onnxruntime

    def empty_cache(self) -> dict:
        z = np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)
        return {n: self._ort.OrtValue.ortvalue_from_numpy(z) for n in self.past_names}

    def step(self, ids: np.ndarray, past_len: int, cache: dict) -> tuple[np.ndarray, dict]:
        """Run ``ids`` [seq] after ``past_len`` cached tokens; returns logits [seq, vocab] and the new cache."""
        n = len(ids)
        feeds = {
            "input_ids": self._ort.OrtValue.ortvalue_from_numpy(np.asarray(ids, np.int64)[None]),
            "attention_mask": self._ort.OrtValue.ortvalue_from_numpy(np.ones((1, past_len + n), np.int64)),
            **cache,
        }
        if self.has_position_ids:
            pos = np.arange(past_len, past_len + n, dtype=np.int64)[None]
            feeds["position_ids"] = self._ort.OrtValue.ortvalue_from_numpy(pos)
        outs = self.session.run_with_ort_values(["logits", *self.present_names], feeds)
        return outs[0].numpy()[0], dict(zip(self.past_names, outs[1:]))


class LiteRTCausalLM(_GreedyMixin):
    """A LiteRT session over litert-torch's KV-cache signatures: ``prefill_<N>`` (fixed N tokens) and
    ``decode`` (one token), inputs ``tokens``, ``input_pos``, ``mask`` [1, 1, N, cache_len] and the cache
    ``kv_cache_{k,v}_{i}`` (fixed cache_len). A longer prompt is prefilled in chunks; a chunk is padded to
    the smallest bucket that holds it (the padding writes cache rows that real tokens overwrite later)."""

    def __init__(self, path: Path, threads: int | None = None):
        from ..runtime.litert import SignatureSession, open_compiled_model

        self.path = Path(path)
        # CompiledModel with the shared XNNPACK weight cache: the Interpreter packed one weight copy per
        # signature (prefill buckets + decode: SmolLM2 int4 peaked at 686 MiB)
        self.session = SignatureSession(open_compiled_model(self.path, threads))
        sigs = self.session.signatures
        if "decode" not in sigs:
            raise EdgecompError(f"{self.path.name} has no decode signature", "export it with task text-generation")
        self.buckets = sorted(int(k.split("_")[1]) for k in sigs if k.startswith("prefill_"))
        details = self.session.input_details("decode")
        self.kv_names = sorted(n for n in details if n.startswith("kv_cache_"))
        self.kv_shapes = {n: tuple(details[n]["shape"]) for n in self.kv_names}
        self.mask_shape = tuple(details["mask"]["shape"])
        self.cache_len = int(self.mask_shape[-1])
        self.neg = float(np.finfo(np.float32).min)

    def empty_cache(self) -> dict:
        return {n: np.zeros(s, np.float32) for n, s in self.kv_shapes.items()}

    def _run(self, sig: str, ids: np.ndarray, pos: int, size: int, cache: dict):
        toks = np.zeros((1, size), np.int32)
        toks[0, : len(ids)] = ids
        positions = np.arange(pos, pos + size, dtype=np.int32)
        visible = np.arange(self.cache_len)[None, :] <= positions[:, None]
        mask = np.where(visible, 0.0, self.neg).astype(np.float32)[None, None]
        out = self.session.run(sig, tokens=toks if sig != "decode" else toks.reshape(1, 1),
                               input_pos=positions, mask=mask, **cache)
        return out["logits"][0, : len(ids)], {n: out[n] for n in self.kv_names}

    def step(self, ids: np.ndarray, past_len: int, cache: dict):
        ids = np.asarray(ids)
        if past_len + len(ids) > self.cache_len:
            raise EdgecompError(f"{past_len + len(ids)} tokens exceed the artifact's KV cache of {self.cache_len}",
                                "use shorter inputs, or export with a larger kv_cache_max_len")
        outs, pos = [], past_len
        while pos < past_len + len(ids):
            rest = ids[pos - past_len:]
            fits = [b for b in self.buckets if b >= len(rest) and pos + b <= self.cache_len]
            if len(rest) == 1 or not self.buckets:
                sig, size, chunk = "decode", 1, rest[:1]
            elif fits:
                sig, size, chunk = f"prefill_{fits[0]}", fits[0], rest
            else:
                size = max([b for b in self.buckets if pos + b <= self.cache_len], default=1)
                sig = f"prefill_{size}" if size > 1 else "decode"
                chunk = rest[:size]
            logits, cache = self._run(sig, chunk, pos, size, cache)
            outs.append(logits)
            pos += len(chunk)
        return np.concatenate(outs, 0), cache


def _prompt_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:  # an empty line still needs something to condition on
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def generate(artifact, tokenizer, prompts: list[str], max_new_tokens: int = 32, threads: int | None = None,
             stop_at_eos: bool = True) -> list[dict]:
    """Greedy-decode ``max_new_tokens`` after each prompt: [{text, tokens, tokens_per_s, prefill_ms}]."""
    sess = artifact if isinstance(artifact, _GreedyMixin) else open_causal_lm(artifact, threads)
    eos = tokenizer.eos_token_id if stop_at_eos else None
    res = []
    for p in prompts:
        r = sess.greedy(_prompt_ids(tokenizer, p), max_new_tokens, eos)
        res.append({"text": tokenizer.decode(r["tokens"], skip_special_tokens=True), "tokens": r["tokens"],
                    "tokens_per_s": r["tokens_per_s"], "prefill_ms": r["prefill_ms"]})
    return res


def nll_of_ids(sess, ids: list[int]) -> float:
    """Summed negative log-likelihood of ids[1:] given the preceding tokens (ids[0] is context only)."""
    logits, _ = sess.step(np.asarray(ids), 0, sess.empty_cache())
    return summed_nll(logits, ids)


def summed_nll(logits: np.ndarray, ids) -> float:
    lg = logits[:-1].astype(np.float64)
    m = lg.max(-1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(lg - m).sum(-1)))
    tgt = np.asarray(ids[1:])
    return float((logz - lg[np.arange(len(tgt)), tgt]).sum())


def perplexity(artifact, tokenizer, lines: list[str], threads: int | None = None) -> list[dict]:
    """Per line: {"nll": summed NLL over tokens 2..n, "tokens": n - 1}. Lines under two tokens score nothing."""
    sess = artifact if isinstance(artifact, _GreedyMixin) else open_causal_lm(artifact, threads)
    res = []
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            res.append({"nll": 0.0, "tokens": 0})
            continue
        res.append({"nll": nll_of_ids(sess, ids), "tokens": len(ids) - 1})
    return res


def torch_greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """The PyTorch reference for ``CausalLMSession.greedy`` (same loop, transformers' own KV cache)."""
    import torch

    with torch.inference_mode():
        out = model(torch.tensor([prompt_ids]), use_cache=True)
        toks = [int(out.logits[0, -1].argmax())]
        past = out.past_key_values
        while len(toks) < max_new_tokens and (eos_id is None or toks[-1] != eos_id):
            out = model(torch.tensor([toks[-1:]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            toks.append(int(out.logits[0, -1].argmax()))
    return toks


def torch_nll(model, ids: list[int]) -> float:
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    return summed_nll(logits, ids)
