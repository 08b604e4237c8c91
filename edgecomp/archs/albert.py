"""ALBERT: one block (layer group) applied at every depth, a narrow table mapped up to the hidden size.

Methods that rewrite a block's Linears apply to the shared block (every depth at once); block-by-block
distillation cannot train one block per depth, so it refuses ALBERT (shared_blocks).
"""

from .base import Adapter, register

_L = "albert_layers.0."

ALBERT = register(Adapter(
    family="albert",
    blocks="encoder.albert_layer_groups",
    roles={"query": _L + "attention.query", "key": _L + "attention.key", "value": _L + "attention.value",
           "attention-output": _L + "attention.dense", "ffn-up": _L + "ffn", "ffn-down": _L + "ffn_output"},
    norms=(_L + "attention.LayerNorm", _L + "full_layer_layer_norm"),
    token_table="embeddings.word_embeddings",
    shared_inputs=(("query", "key", "value"),),
    shared_blocks=True,
))
