"""Export a causal LM for a target: one KV-cache ONNX graph (prefill + decode), quantized with the tied
table kept as one table, ORT format where asked, each artifact verified against PyTorch by greedy decoding
and perplexity.

The fp32 graph comes from optimum's ``text-generation-with-past`` exporter (a Llama folder exports in about a
minute; optimum already stores a tied table once and feeds the LM head through a Transpose of it).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgecompError
from .generate import nll_of_ids, open_causal_lm, torch_greedy, torch_nll
from .quantize import config_of, quantize_causal_lm

OPTIMUM_TASK = "text-generation-with-past"


def export_causal_lm_onnx(model, out_path: Path, opset: int = 17) -> dict:
    """fp32 KV-cache ONNX of a transformers causal LM (in memory, so compressed models export too)."""
    from optimum.exporters.onnx import onnx_export_from_model

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("optimum").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        try:
            onnx_export_from_model(model, tmp, task=OPTIMUM_TASK, opset=opset, do_validation=False)
        except ValueError as e:
            raise EdgecompError(f"optimum cannot export this causal LM ({str(e).splitlines()[0][:160]})",
                                "use an architecture that optimum's ONNX exporter supports (gpt2, llama, qwen2, mistral, "
                                "phi3, gemma, ...)") from None
        produced = Path(tmp) / "model.onnx"
        if (Path(tmp) / "model.onnx_data").exists():  # > 2 GB: keep one file is impossible; out of scope
            raise EdgecompError("the causal LM is larger than 2 GB", "edgecomp targets models under 2 GB")
        os.replace(produced, out_path)
    import onnx

    m = onnx.load(str(out_path), load_external_data=False)
    return {"exporter": "optimum", "optimum_task": OPTIMUM_TASK,
            "inputs": [i.name for i in m.graph.input], "outputs": [o.name for o in m.graph.output]}


def causal_lm_schemes(artifacts: list, recipe) -> list:
    """Each artifact with its causal-LM scheme: the recipe's [quantization] over the LLM reading of the target's
    default for the ONNX graphs (llm_default), over the target's own for the .tflite; refused up front if the
    format cannot store it. The fp32 reference stays fp32."""
    from dataclasses import replace

    from ..quant import resolve
    from .quantize import LLM_FORMAT_QUANT, llm_default

    out = []
    for spec in artifacts:
        fq = LLM_FORMAT_QUANT[spec.format]
        default = spec.scheme if spec.format == "tflite" or spec.scheme is None else llm_default(spec.scheme)
        scheme = resolve(default, recipe.quantization, spec.runtime, lambda w: fq.default_activations(w, spec.options))
        try:
            out.append(replace(spec, scheme=fq.check(scheme) if scheme else None))
        except EdgecompError as e:
            raise EdgecompError(f"recipe {recipe.name!r}: {e.problem}", e.fix) from None
    return out


def verify_causal_lm(path: Path, loaded, texts: list[str], n_generate: int = 2, max_new_tokens: int = 32,
                     threads: int = 2) -> dict:
    """Greedy tokens and NLL of the artifact vs the PyTorch model on real text.

    ``greedy_match``: tokens that equal PyTorch's greedy output before the first difference (no EOS stop),
    per prompt; ``nll_ratio``: summed artifact NLL / summed PyTorch NLL over ``texts`` (1.0 = same perplexity).
    """
    tok, model = loaded.tokenizer, loaded.model
    sess = open_causal_lm(path, threads)
    matches = []
    for t in texts[:n_generate]:
        ids = tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        ref = torch_greedy(model, ids, max_new_tokens)
        got = sess.greedy(ids, max_new_tokens)["tokens"]
        matches.append(next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), len(ref)))
    nll_ref = nll_got = 0.0
    n_tok = 0
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            continue
        nll_ref += torch_nll(model, ids)
        nll_got += nll_of_ids(sess, ids)
        n_tok += len(ids) - 1
    return {
        "greedy_match": matches, "greedy_match_min": min(matches) if matches else None,
        "max_new_tokens": max_new_tokens,
        "ppl_torch": float(np.exp(nll_ref / max(n_tok, 1))), "ppl": float(np.exp(nll_got / max(n_tok, 1))),
        "nll_ratio": nll_got / nll_ref if nll_ref else None, "tokens_scored": n_tok, "n_texts": len(texts),
    }


def causal_lm_artifacts(loaded, artifacts: list) -> tuple[list, list[dict]]:
    """The artifacts this causal LM can have, decided from its config before anything is lowered: a .tflite
    that litert-torch cannot re-author (see archs/litert_decoder.py) is skipped with the reason, for the manifest's
    ``skipped_artifacts``. If the primary artifact is skipped, the first kept quantized one is primary."""
    from dataclasses import replace

    from .tflite import tflite_unsupported

    hf = loaded.model.config.to_dict()
    kept, skipped = [], []
    for spec in artifacts:
        reason = (tflite_unsupported(hf, _kv_cache_len(loaded, spec))
                  if spec.format == "tflite" else None)
        if reason:
            skipped.append({"path": spec.filename, "format": spec.format, "reason": reason})
        else:
            kept.append(spec)
    if skipped and kept and not any(a.primary for a in kept):
        first = next((a for a in kept if a.precision != "fp32"), kept[0])
        kept = [replace(a, primary=a is first) for a in kept]
    return kept, skipped


def export_causal_lm(loaded, target, build_dir: Path, work_dir: Path | None = None, recipe_options: dict | None = None,
                     texts: list[str] | None = None, verify: bool = True, simplify: bool = True,
                     bench: bool = False, artifacts: list | None = None,
                     log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Every artifact of ``artifacts`` (default: all ``target`` lists), for a causal LM. Returns one record per
    artifact: {path (relative to build_dir), format, runtime, precision, quantization, primary, exporter, inputs,
    outputs, llm_quantization, metrics: {fidelity, latency_ms, peak_rss_mb}}; ``bench`` measures decode latency
    and fresh-process RSS (llm/bench.py). TFLite artifacts go through litert-torch (see tflite.py); call
    ``causal_lm_artifacts`` first to skip those it cannot build."""
    from .bench import measure_causal_lm

    build_dir = Path(build_dir)
    texts = texts or _default_texts()
    work = Path(work_dir) if work_dir else build_dir / ".work-llm"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    io = {"exporter": "optimum"}
    if not fp32.exists():
        log("lower: PyTorch -> ONNX with KV cache (optimum text-generation-with-past)")
        io = export_causal_lm_onnx(loaded.model, work / "raw.onnx", target.opset)
        if simplify:
            from ..optimize.simplify import simplify_onnx

            # optimum's graph has ~7,400 nodes, mostly shape arithmetic run at every decode step; onnxslim
            # folds it to ~2,850 (decode 6.5 -> 9.6 tok/s with 4-bit layers, measured).
            log("simplify: onnxslim")
            io["simplify"] = simplify_onnx(work / "raw.onnx", fp32)
        else:
            os.replace(work / "raw.onnx", fp32)
    if artifacts is None:  # the target's own, read as a causal LM reads them (the plan resolves its recipe's)
        from ..recipes import NO_RECIPE

        artifacts = causal_lm_schemes(list(target.artifacts), NO_RECIPE)
    from ..pipeline import PRODUCERS

    build = CausalLmBuild(loaded, fp32, io, build_dir, work, log, recipe_options or {})
    records = []
    for spec in artifacts:
        path, info = PRODUCERS.get(spec.format)(build, spec)
        build.produced[(spec.format, spec.precision)] = path
        rec = build.record(spec, path, info)
        if verify:
            rec["metrics"] = measure_causal_lm(Path(path), loaded, texts, target, bench, log)
        records.append(rec)
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return records


class CausalLmBuild:
    """The KV-cache graph as the build engine's format producers (pipeline.PRODUCERS) lower it: the same onnx /
    ort / tflite passes as an encoder, with the causal-LM quantizer (tied table kept as one) and the .tflite
    re-authored by litert-torch from the (maybe compressed) model."""

    def __init__(self, loaded, fp32: Path, io: dict, out: Path, work: Path, log, recipe_options: dict):
        self.loaded, self.fp32, self.io, self.out, self.work, self.log = loaded, fp32, io, out, work, log
        self.recipe_options = recipe_options
        self.produced: dict = {}
        self.quantized: dict[str, tuple[Path, dict]] = {}  # the causal-LM config's name -> (graph, its info)

    def fp32_onnx(self) -> Path:
        return self.fp32

    def filename(self, spec) -> str:
        return spec.filename

    def onnx_info(self) -> dict:
        return {}

    def quantize(self, src: Path, dst: Path, spec) -> dict:
        cfg = config_of(spec.scheme)
        if cfg.name not in self.quantized:  # one quantization per config, shared by the .onnx and the .ort
            path = self.work / f"{cfg.name}.onnx"
            self.quantized[cfg.name] = (path, quantize_causal_lm(src, path, cfg))
        path, info = self.quantized[cfg.name]
        shutil.copy(path, dst.with_name(dst.name + ".tmp"))
        os.replace(dst.with_name(dst.name + ".tmp"), dst)
        return info

    def finish_onnx(self, dst: Path, spec, info: dict) -> None:
        pass

    def lower_tflite(self, spec, dst: Path) -> dict:
        return _tflite_artifact(self.loaded, spec, dst, self.work, self.log, self.recipe_options)

    def record(self, spec, path: Path, info: dict) -> dict:
        """The manifest record of one artifact (its metrics come from verification)."""
        if spec.format == "tflite":
            return info
        cfg = config_of(spec.scheme) if spec.scheme else None
        extra = {"required_operators_config": info["required_operators_config"]} if "required_operators_config" in info else {}
        return {"path": Path(path).name, "format": spec.format, "runtime": spec.runtime,
                # what the recipe's scheme actually stores (a recipe can turn the target's int8 into 4-bit)
                "precision": LAYER_PRECISION.get(cfg.layers, spec.precision) if cfg else spec.precision,
                "quantization": cfg.name if cfg else spec.quantization, "primary": spec.primary,
                "exporter": self.io.get("exporter"),
                "llm_quantization": self.quantized[cfg.name][1] if cfg else None, "simplify": self.io.get("simplify"),
                "batch_invariant": spec.scheme is None or spec.scheme.batch_invariant,
                "scheme": spec.scheme.to_json() if spec.scheme else None, **extra}


LAYER_PRECISION = {"q4_1": "int4", "int4": "int4", "int2": "int2", "int8": "int8", "int8-per-channel": "int8",
                   "none": "fp32"}


def _kv_cache_len(loaded, spec) -> int:
    extra = getattr(getattr(loaded, "spec", None), "extra", {}) or {}
    return int(spec.options.get("kv_cache_max_len") or extra.get("kv_cache_max_len") or 1024)


def head_is_tied(model) -> bool:
    """The LM head reads the token table itself (not a copy): what the loaded model does, whatever the config says."""
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    return head is not None and table is not None and head.weight is table.weight


def _tflite_artifact(loaded, spec, dst: Path, work: Path, log, recipe_options: dict) -> dict:
    from .tflite import export_causal_lm_tflite

    hf_dir = work / "hf-for-litert"
    if not (hf_dir / "config.json").exists():
        # litert-torch re-authors the decoder and reads weights from a folder: save the (maybe compressed)
        # in-memory model rather than the source folder.
        loaded.model.save_pretrained(hf_dir, safe_serialization=True)
    from .quantize import LLM_FORMAT_QUANT

    quant = LLM_FORMAT_QUANT["tflite"].label(spec.scheme) if spec.scheme else "none"
    # Each prefill length is one more signature to trace and lower (~5 min each for SmolLM2 on 2 busy cores),
    # so a model file can name fewer buckets for its decoder than the target's encoder-sized list.
    extra = getattr(getattr(loaded, "spec", None), "extra", {}) or {}
    buckets = tuple(recipe_options.get("prefill_buckets") or extra.get("prefill_buckets") or spec.seq_buckets
                    or (32, 128))
    kv_len = _kv_cache_len(loaded, spec)
    tied = head_is_tied(loaded.model)
    log(f"convert: litert-torch -> {dst.name} ({quant}, prefill {list(buckets)}, KV cache {kv_len}, "
        f"{'tied' if tied else 'separate'} LM head)")
    info = export_causal_lm_tflite(hf_dir, dst, quant, buckets, kv_len, tied=tied)
    return {"path": dst.name, "format": "tflite", "runtime": spec.runtime,
            "precision": spec.precision,
            "quantization": quant, "primary": spec.primary, "seq_buckets": list(buckets), "lm_head_tied": tied,
            "batch_invariant": spec.scheme is None or spec.scheme.batch_invariant, "scheme": spec.scheme.to_json() if spec.scheme else None, **info}


def _default_texts() -> list[str]:
    from ..texts import default_texts

    return default_texts()[:16]
