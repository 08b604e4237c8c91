"""ModernBERT: pre-LayerNorm blocks under `layers`, one fused Wqkv, and a gated FFN whose Wi stacks
[input; gate] halves (neuron j owns rows j and width + j)."""

from .base import Adapter, register

MODERNBERT = register(Adapter(
    family="modernbert",
    blocks="layers",
    roles={"qkv": "attn.Wqkv", "attention-output": "attn.Wo", "ffn-up": "mlp.Wi", "ffn-down": "mlp.Wo"},
    norms=("attn_norm", "mlp_norm"),
    token_table="embeddings.tok_embeddings",
    ffn_halves=2,
))
