"""How litert-torch re-authors a decoder family for the .tflite (a part of the family's adapter).

The ONNX path needs no such knowledge (optimum traces any ``*ForCausalLM``; the quantizer finds the token
table and the LM head in the graph). The TFLite path does: litert-torch's generative API re-authors the
decoder from a config of its own and loads the weights by tensor name, so each decoder adapter carries a
`LitertDecoder` saying how its transformers config maps onto that config, which tensor names it loads (tied
head or not), and, before any work starts, why a model cannot be re-authored (then the .tflite is a recorded
skip). A family whose adapter has none still exports to ONNX / ORT.
"""

from __future__ import annotations


class LitertDecoder:
    """How litert-torch re-authors a Llama-shaped decoder (RoPE, RMSNorm, gated SiLU FFN, separate q/k/v);
    a family's subclass changes what differs."""

    #: why litert-torch cannot re-author any model of this family (None: it can)
    tflite_blocker: str | None = None
    #: rotary scaling types the re-authored decoder computes like transformers does
    rope_types = (None, "default")

    def tflite_unsupported(self, hf: dict, kv_cache_max_len: int) -> str | None:
        """Why this model's .tflite cannot be built (None: it can). Read from config.json only: no weights
        are loaded and nothing is traced before the answer."""
        if self.tflite_blocker:
            return self.tflite_blocker
        scaling = hf.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in self.rope_types:
            return f"litert-torch's decoder has no {kind!r} rotary scaling (rope_scaling in config.json)"
        if (hf.get("partial_rotary_factor") or 1.0) != 1.0:
            return "litert-torch's decoder maps rotary embeddings over the whole head only (partial_rotary_factor)"
        window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
        if window and window < kv_cache_max_len:
            return (f"sliding-window attention ({window} tokens) shorter than the KV cache ({kv_cache_max_len}) "
                    "is not mapped onto litert-torch's decoder")
        return None

    # --- litert-torch's view of the model --------------------------------------------------------------
    def attention(self, cfg, hf: dict):
        heads = hf["num_attention_heads"]
        return cfg.AttentionConfig(num_heads=heads, head_dim=self.head_dim(hf),
                                   num_query_groups=hf.get("num_key_value_heads") or heads,
                                   rotary_base=int(hf.get("rope_theta", 10000)), rotary_percentage=1.0,
                                   qkv_use_bias=bool(hf.get("attention_bias", False)),
                                   output_proj_use_bias=bool(hf.get("attention_bias", False)))

    def head_dim(self, hf: dict) -> int:
        return hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]

    def feed_forward(self, cfg, hf: dict):
        return cfg.FeedForwardConfig(type=cfg.FeedForwardType.GATED,
                                     activation=cfg.ActivationConfig(cfg.ActivationType.SILU),
                                     intermediate_size=hf["intermediate_size"], use_bias=bool(hf.get("mlp_bias", False)))

    def norm(self, cfg, hf: dict):
        return cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM, epsilon=hf.get("rms_norm_eps", 1e-6))

    def embedding_scale(self, hf: dict) -> float | None:
        return None

    def litert_config(self, hf: dict, tied: bool):
        """The litert-torch ModelConfig of this HF config.json; ``tied``: the LM head reads the token table."""
        import litert_torch.generative.layers.model_config as cfg

        norm = self.norm(cfg, hf)
        block = cfg.TransformerBlockConfig(attn_config=self.attention(cfg, hf), ff_config=self.feed_forward(cfg, hf),
                                           pre_attention_norm_config=norm, post_attention_norm_config=norm)
        return cfg.ModelConfig(vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
                               max_seq_len=hf.get("max_position_embeddings", 2048), embedding_dim=hf["hidden_size"],
                               embedding_scale=self.embedding_scale(hf), block_configs=block, final_norm_config=norm,
                               lm_head_share_weight_with_embedding=tied)

    def tensor_names(self, tied: bool):
        """Where litert-torch's loader finds each weight in the HF safetensors (an untied head is ``lm_head``)."""
        from litert_torch.generative.utilities import model_builder

        return model_builder.TENSOR_NAMES if tied else model_builder.TENSOR_NAMES_WITH_SEPARATE_LM_HEAD


class _NoMapping(LitertDecoder):
    def __init__(self, model_type: str, mapped: list[str]):
        self.tflite_blocker = (f"no litert-torch mapping for model_type {model_type!r} "
                               f"(edgecomp maps: {', '.join(mapped)})")


def litert_decoder_of(hf: dict) -> LitertDecoder:
    """The litert-torch mapping of a config.json's family, from its adapter (one that has none refuses)."""
    from .base import ADAPTERS

    model_type = hf.get("model_type", "")
    mapped = sorted(f for f in ADAPTERS.names() if ADAPTERS.get(f).litert is not None)
    adapter = ADAPTERS.get(model_type) if model_type in ADAPTERS else None
    return adapter.litert if adapter is not None and adapter.litert is not None else _NoMapping(model_type, mapped)
