"""Graph simplification with onnxslim (constant folding, fusion, dead-node and duplicate removal)."""

from __future__ import annotations

import os
from pathlib import Path


def simplify_onnx(src: Path, dst: Path, keep_factorized: bool = False) -> dict:
    """Simplify ``src`` into ``dst``.

    ``keep_factorized``: skip constant folding. Folding evaluates every subgraph whose inputs are all
    constants, so a compressed weight stored as decoder(latents) or A (x) B would be multiplied back
    into the dense matrix it replaced; a recipe that wants the compressed form at run time sets this.
    """
    import onnx
    import onnxslim

    before = onnx.load(str(src))
    n_before = len(before.graph.node)
    skip = ["constant_folding"] if keep_factorized else []
    slim = onnxslim.slim(before, skip_optimizations=skip or None)
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
    onnx.save(slim, str(tmp))
    os.replace(tmp, dst)
    return {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": n_before, "nodes_after": len(slim.graph.node),
            "constant_folding": not keep_factorized}
