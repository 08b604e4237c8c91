"""BERT (and BertForSequenceClassification): post-LayerNorm encoder, query/key/value read one tensor."""

from .base import Adapter, register

BERT_ROLES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "attention-output": "attention.output.dense", "ffn-up": "intermediate.dense", "ffn-down": "output.dense"}

BERT = register(Adapter(
    family="bert",
    blocks="encoder.layer",
    roles=BERT_ROLES,
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    token_table="embeddings.word_embeddings",
    shared_inputs=(("query", "key", "value"),),
    ffn_activation="intermediate.intermediate_act_fn",
))
