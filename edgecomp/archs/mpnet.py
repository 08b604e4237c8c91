"""MPNet: BERT-like blocks with attention.attn.{q,k,v,o} and a relative-position bias table."""

from .base import Adapter, register

MPNET = register(Adapter(
    family="mpnet",
    blocks="encoder.layer",
    roles={"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
           "attention-output": "attention.attn.o", "ffn-up": "intermediate.dense", "ffn-down": "output.dense"},
    norms=("attention.LayerNorm", "output.LayerNorm"),
    token_table="embeddings.word_embeddings",
    shared_inputs=(("query", "key", "value"),),
))
