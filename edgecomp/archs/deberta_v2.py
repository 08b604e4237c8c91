"""DeBERTa-v2/v3: BERT-like blocks with query_proj/key_proj/value_proj (disentangled attention)."""

from .base import Adapter, register

DEBERTA_V2 = register(Adapter(
    family="deberta-v2",
    blocks="encoder.layer",
    roles={"query": "attention.self.query_proj", "key": "attention.self.key_proj",
           "value": "attention.self.value_proj", "attention-output": "attention.output.dense",
           "ffn-up": "intermediate.dense", "ffn-down": "output.dense"},
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    token_table="embeddings.word_embeddings",
    shared_inputs=(("query", "key", "value"),),
))
