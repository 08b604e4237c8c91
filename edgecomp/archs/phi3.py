"""Phi-3: Llama-like decoder with a fused qkv_proj ([q; k; v] rows) and a gate_up_proj stacking [gate; up]
halves (SwiGLU). Phi-3.5's 128K ``longrope`` scaling is refused by LitertDecoder's rotary check."""

from dataclasses import replace

from .base import register
from .litert_decoder import LitertDecoder
from .llama import LLAMA


class Phi3Litert(LitertDecoder):
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


PHI3 = register(replace(
    LLAMA, family="phi3",
    roles={"qkv": "self_attn.qkv_proj", "attention-output": "self_attn.o_proj", "ffn-up": "mlp.gate_up_proj",
           "ffn-down": "mlp.down_proj"},
    shared_inputs=(), ffn_halves=2, litert=Phi3Litert(),
))
