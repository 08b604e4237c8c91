"""Where the bytes of an exported causal LM go: tied table, attention, feed-forward, other."""

from __future__ import annotations

import re
from pathlib import Path

from ..optimize.external_data import stored_bytes

PARTS = ("embeddings", "attention", "feed_forward", "other")


def _part(node_name: str, op: str) -> str:
    if op in ("GatherBlockQuantized", "Gather") and "embed" in node_name or "lm_head" in node_name or "embed" in node_name:
        return "embeddings"
    if re.search(r"self_attn|attention|attn", node_name):
        return "attention"
    if re.search(r"mlp|ffn|feed_forward", node_name):
        return "feed_forward"
    return "other"


def onnx_llm_size_breakdown(path: Path) -> dict:
    """Initializer bytes per part (an initializer counts once, under its first consumer), plus total file size."""
    import onnx

    m = onnx.load(str(path))
    sizes = {i.name: len(i.raw_data) or onnx.numpy_helper.to_array(i).nbytes for i in m.graph.initializer}
    out = dict.fromkeys(PARTS, 0)
    seen = set()
    for n in m.graph.node:
        for i in n.input:
            if i in sizes and i not in seen:
                seen.add(i)
                out[_part(n.name, n.op_type)] += sizes[i]
    out["other"] += sum(v for k, v in sizes.items() if k not in seen)
    out["total"] = stored_bytes(path)
    return out
