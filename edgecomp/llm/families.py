"""Decoder families: what the causal-LM export must know about each one, in one place.

The ONNX path needs no family knowledge (optimum traces any ``*ForCausalLM``; the quantizer finds the
token table and the LM head in the graph). The TFLite path does: litert-torch's generative API re-authors
the decoder from a config of its own and loads the weights by tensor name, so each family says how its
transformers config maps onto that config, which tensor names it loads (tied head or not), and, before any
work starts, why a model of the family cannot be re-authored (then the .tflite is a recorded skip).

Adding a family: one class here registered under its ``model_type`` (+ a tiny model in
tests/tiny_decoders.py). A ``model_type`` without a class still exports to ONNX / ORT.
"""

from __future__ import annotations

from ..registry import Registry

FAMILIES: Registry["DecoderFamily"] = Registry("decoder family")


class DecoderFamily:
    """A Llama-shaped decoder (RoPE, RMSNorm, gated SiLU FFN, separate q/k/v); subclasses change what differs."""

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


@FAMILIES.register("llama")
class Llama(DecoderFamily):
    pass


@FAMILIES.register("mistral")
class Mistral(DecoderFamily):
    """Llama's layout; its sliding window is checked against the KV cache in ``tflite_unsupported``."""


@FAMILIES.register("qwen2")
class Qwen2(DecoderFamily):
    """Llama's layout with biases on the q/k/v projections (not on the output projection)."""

    def attention(self, cfg, hf):
        a = super().attention(cfg, hf)
        a.qkv_use_bias, a.output_proj_use_bias = True, False
        return a


@FAMILIES.register("phi3")
class Phi3(DecoderFamily):
    """Fused ``qkv_proj`` ([q; k; v] rows) and fused ``gate_up_proj`` ([gate; up] rows, SwiGLU). Phi-3.5's
    128K ``longrope`` scaling is refused by the base class's rotary check."""

    def attention(self, cfg, hf):
        a = super().attention(cfg, hf)
        a.qkv_transpose_before_split, a.qkv_fused_interleaved = True, False
        return a

    def feed_forward(self, cfg, hf):
        return cfg.FeedForwardConfig(type=cfg.FeedForwardType.SEQUENTIAL,
                                     activation=cfg.ActivationConfig(cfg.ActivationType.SILU_GLU),
                                     intermediate_size=hf["intermediate_size"])

    def norm(self, cfg, hf):
        return cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM, epsilon=hf.get("rms_norm_eps", 1e-5))

    def tensor_names(self, tied):
        import litert_torch.generative.utilities.loader as loading

        return loading.ModelLoader.TensorNames(
            ff_up_proj="model.layers.{}.mlp.gate_up_proj", ff_down_proj="model.layers.{}.mlp.down_proj",
            attn_fused_qkv_proj="model.layers.{}.self_attn.qkv_proj", attn_output_proj="model.layers.{}.self_attn.o_proj",
            pre_attn_norm="model.layers.{}.input_layernorm", post_attn_norm="model.layers.{}.post_attention_layernorm",
            embedding="model.embed_tokens", final_norm="model.norm", lm_head=None if tied else "lm_head")


@FAMILIES.register("gemma")
class Gemma(DecoderFamily):
    """RMSNorm scales stored as (w - 1), tanh-GELU gated FFN, token embeddings times sqrt(hidden)."""

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


@FAMILIES.register("gpt2")
class Gpt2(DecoderFamily):
    tflite_blocker = ("litert-torch's generative decoder has rotary positions only; GPT-2 adds learned absolute "
                      "position embeddings (wpe), which it cannot load")


class UnknownFamily(DecoderFamily):
    def __init__(self, model_type: str):
        self.tflite_blocker = (f"no litert-torch mapping for model_type {model_type!r} "
                               f"(edgecomp maps: {', '.join(sorted(FAMILIES.names()))})")


def family_of(hf: dict) -> DecoderFamily:
    """The family of a config.json (a family edgecomp has no mapping for still exports to ONNX / ORT)."""
    model_type = hf.get("model_type", "")
    return FAMILIES.get(model_type)() if model_type in FAMILIES else UnknownFamily(model_type)
