"""Mistral: Llama's layout (model.layers, q/k/v/o, gate/up/down; the head's tie comes from the config).
Its sliding window is checked against the KV cache by LitertDecoder.tflite_unsupported."""

from dataclasses import replace

from .base import register
from .litert_decoder import LitertDecoder
from .llama import LLAMA

MISTRAL = register(replace(LLAMA, family="mistral", litert=LitertDecoder()))
