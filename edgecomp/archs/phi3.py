"""Phi-3: Llama-like decoder with a fused qkv_proj and a gate_up_proj stacking [gate; up] halves."""

from dataclasses import replace

from .base import register
from .llama import LLAMA

PHI3 = register(replace(
    LLAMA, family="phi3",
    roles={"qkv": "self_attn.qkv_proj", "attention-output": "self_attn.o_proj", "ffn-up": "mlp.gate_up_proj",
           "ffn-down": "mlp.down_proj"},
    shared_inputs=(), ffn_halves=2,
))
