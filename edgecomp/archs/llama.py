"""Llama: pre-RMSNorm decoder blocks under model.layers, gated FFN, LM head tied or not (config)."""

from .base import Adapter, register
from .litert_decoder import LitertDecoder

LLAMA_ROLES = {"query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
               "attention-output": "self_attn.o_proj", "ffn-gate": "mlp.gate_proj", "ffn-up": "mlp.up_proj",
               "ffn-down": "mlp.down_proj"}

LLAMA = register(Adapter(
    family="llama",
    blocks="layers",
    roles=LLAMA_ROLES,
    norms=("input_layernorm", "post_attention_layernorm"),
    token_table="embed_tokens",
    shared_inputs=(("query", "key", "value"), ("ffn-gate", "ffn-up")),
    head="lm_head",
    decoder=True,
    litert=LitertDecoder(),
))
