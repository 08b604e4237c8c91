"""Sentence embeddings: encoder -> last_hidden_state -> pooling (+ L2 norm), the sentence-transformers recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import TASKS, torch_inputs


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str | None, normalize: bool) -> np.ndarray:
    if pooling == "cls":
        emb = hidden[:, 0]
    else:  # mean over real tokens only: padding must not move the embedding
        m = mask[..., None].astype(np.float32)
        emb = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    if normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    return emb.astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


class FeatureExtraction:
    name = "feature-extraction"
    optimum_task = "feature-extraction"
    output_names = ["last_hidden_state"]
    plan = "encoder"  # edgecomp.plans

    def manifest_fields(self, loaded) -> dict:
        return {}

    def write_package_files(self, loaded, folder: Path, max_length: int, artifacts: list[dict]) -> dict:
        """sentence-transformers' module layout next to the artifacts, so ``SentenceTransformer(OUT,
        backend="onnx")`` pools and normalizes as the graph does (without it, it mean-pools and never
        normalizes). The configs are written from the export's pooling, not copied: a source folder's
        modules (e.g. a Dense layer) that the graph does not carry must not be loaded. Returns the manifest's
        ``loads_with`` block."""
        spec, cfg = loaded.spec, loaded.model.config
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        if spec.normalize:  # Normalize has no files; its folder only names it
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        source_pool = _json(loaded.directory / "1_Pooling" / "config.json")
        cls = spec.pooling == "cls"
        pooling = {"word_embedding_dimension": int(cfg.hidden_size), "pooling_mode_cls_token": cls,
                   "pooling_mode_mean_tokens": not cls, "pooling_mode_max_tokens": False,
                   "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
                   "pooling_mode_lasttoken": False, "include_prompt": source_pool.get("include_prompt", True)}
        bert_cfg = {"max_seq_length": int(max_length),
                    "do_lower_case": bool(_json(loaded.directory / "sentence_bert_config.json").get("do_lower_case", False))}
        st_cfg = _json(loaded.directory / "config_sentence_transformers.json") or {
            "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
        (folder / "1_Pooling").mkdir(exist_ok=True)
        for name, data in (("modules.json", modules), ("1_Pooling/config.json", pooling),
                           ("sentence_bert_config.json", bert_cfg), ("config_sentence_transformers.json", st_cfg)):
            (folder / name).write_text(json.dumps(data, indent=2) + "\n")
        onnx_files = [a["path"] for a in artifacts if a["format"] == "onnx" and "stage" not in a
                      and a.get("input") != "text"]  # string-input twins load in ONNX Runtime only
        if not onnx_files:
            return {}
        # sentence-transformers and Optimum both take `model.onnx` at the folder's root first; any other
        # .onnx is named with file_name
        how: dict = {"sentence-transformers": {}, "optimum": {}}
        for f in onnx_files:
            root = f == "model.onnx"
            how["sentence-transformers"][f] = ('SentenceTransformer(OUT, backend="onnx")' if root else
                                               f'SentenceTransformer(OUT, backend="onnx", model_kwargs={{"file_name": "{f}"}})')
            how["optimum"][f] = ("ORTModelForFeatureExtraction.from_pretrained(OUT)" if root else
                                 f'ORTModelForFeatureExtraction.from_pretrained(OUT, file_name="{f}")')
        return {"loads_with": how}

    def head(self, spec):
        """Pooling + L2 normalization in the graph: artifacts also output ``sentence_embedding``, so an app
        needs no pooling code of its own."""
        from ..lower.wrap import GraphHead, SentenceEmbedding

        return GraphHead(SentenceEmbedding(spec.pooling, spec.normalize), ("last_hidden_state", "attention_mask"),
                         ("sentence_embedding",))

    def auto_class(self):
        from transformers import AutoModel

        return AutoModel

    def torch_forward(self, model, feeds):
        import torch

        with torch.inference_mode():
            out = model(**torch_inputs(feeds))
        return {"last_hidden_state": out.last_hidden_state.float().numpy()}

    def embeddings(self, outputs, feeds, spec) -> np.ndarray:
        """The artifact's own ``sentence_embedding`` when its graph pools (every export since the graph head),
        else the hidden states pooled here."""
        if "sentence_embedding" in outputs:
            return np.asarray(outputs["sentence_embedding"], dtype=np.float32)
        return pool(outputs["last_hidden_state"], feeds["attention_mask"], spec.pooling, spec.normalize)

    def records(self, outputs, feeds, spec):
        return [{"embedding": [round(float(x), 7) for x in e]} for e in self.embeddings(outputs, feeds, spec)]

    def fidelity(self, ref, got, feeds, spec):
        """Per text: the cosine of the artifact's sentence embedding (its graph's, when it has one) with
        PyTorch's pooled hidden states, and the largest hidden-state difference over real tokens."""
        mask = feeds["attention_mask"].astype(bool)
        diff = np.abs(ref["last_hidden_state"] - got["last_hidden_state"])  # [B, L, H]
        per_text_max = np.where(mask[..., None], diff, 0).max(axis=(1, 2))
        want = pool(ref["last_hidden_state"], feeds["attention_mask"], spec.pooling, spec.normalize)
        cos = cosine_rows(want, self.embeddings(got, feeds, spec))
        out = {"cos": cos.tolist(), "max_abs_diff": per_text_max.tolist()}
        if "sentence_embedding" in got:  # the graph's pooling itself, not only its direction
            out["sentence_embedding_max_abs_diff"] = np.abs(want - got["sentence_embedding"]).max(-1).tolist()
        return out


def _json(p: Path) -> dict:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


TASKS.register("feature-extraction")(FeatureExtraction())
