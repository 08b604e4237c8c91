"""DistilBERT: BERT-like post-LayerNorm blocks under transformer.layer with q_lin/k_lin/v_lin and ffn.lin1/lin2."""

from .base import Adapter, register

DISTILBERT = register(Adapter(
    family="distilbert",
    blocks="transformer.layer",
    roles={"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
           "attention-output": "attention.out_lin", "ffn-up": "ffn.lin1", "ffn-down": "ffn.lin2"},
    norms=("sa_layer_norm", "output_layer_norm"),
    token_table="embeddings.word_embeddings",
    shared_inputs=(("query", "key", "value"),),
))
