"""GPT-2: blocks under transformer.h built from transformers' Conv1D (weights stored [in, out]), a fused
c_attn, and an LM head tied to wte. Methods that rewrite nn.Linear layers refuse it (linear_types)."""

from .base import Adapter, register
from .litert_decoder import LitertDecoder


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


class Gpt2Litert(LitertDecoder):
    tflite_blocker = ("litert-torch's generative decoder has rotary positions only; GPT-2 adds learned absolute "
                      "position embeddings (wpe), which it cannot load")


GPT2_LITERT = Gpt2Litert()

GPT2 = register(Adapter(
    family="gpt2",
    blocks="h",
    roles={"qkv": "attn.c_attn", "attention-output": "attn.c_proj", "ffn-up": "mlp.c_fc", "ffn-down": "mlp.c_proj"},
    norms=("ln_1", "ln_2"),
    token_table="wte",
    head="lm_head",
    decoder=True,
    linear_types=(_conv1d(),),
    litert=GPT2_LITERT,
))
