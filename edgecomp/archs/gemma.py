"""Gemma: Llama's layout (model.layers, q/k/v/o, gate/up/down; the head's tie comes from the config), with
RMSNorm scales stored as (w - 1), a tanh-GELU gated FFN and token embeddings times sqrt(hidden)."""

from dataclasses import replace

from .base import register
from .litert_decoder import LitertDecoder
from .llama import LLAMA


class GemmaLitert(LitertDecoder):
    def feed_forward(self, cfg, hf):
        ff = super().feed_forward(cfg, hf)
        ff.activation = cfg.ActivationConfig(cfg.ActivationType.GELU_TANH)
        return ff

    def norm(self, cfg, hf):
        return cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM, epsilon=hf.get("rms_norm_eps", 1e-6),
                                       zero_centered=True)

    def embedding_scale(self, hf):
        return hf["hidden_size"] ** 0.5

    def tflite_unsupported(self, hf, kv_cache_max_len):
        act = hf.get("hidden_activation") or hf.get("hidden_act")
        if act not in ("gelu_pytorch_tanh", "gelu_tanh", None):
            return f"Gemma with activation {act!r}: litert-torch's Gemma decoder uses tanh-GELU"
        return super().tflite_unsupported(hf, kv_cache_max_len)


GEMMA = register(replace(LLAMA, family="gemma", litert=GemmaLitert()))
