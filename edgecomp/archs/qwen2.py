"""Qwen2: Llama's layout (model.layers, q/k/v/o, gate/up/down; the head's tie comes from the config), with
biases on the q/k/v projections (not on the output projection)."""

from dataclasses import replace

from .base import register
from .litert_decoder import LitertDecoder
from .llama import LLAMA


class Qwen2Litert(LitertDecoder):
    def attention(self, cfg, hf):
        a = super().attention(cfg, hf)
        a.qkv_use_bias, a.output_proj_use_bias = True, False
        return a


QWEN2 = register(replace(LLAMA, family="qwen2", litert=Qwen2Litert()))
