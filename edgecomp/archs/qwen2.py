"""Qwen2: Llama's layout (model.layers, q/k/v/o, gate/up/down; the head's tie comes from the config)."""

from dataclasses import replace

from .base import register
from .llama import LLAMA

QWEN2 = register(replace(LLAMA, family="qwen2"))
