"""Graph simplification with onnxslim (constant folding, fusion, dead-node and duplicate removal)."""

from __future__ import annotations

import os
from pathlib import Path


def simplify_onnx(src: Path, dst: Path, keep_factorized: bool = False) -> dict:
    """Simplify ``src`` into ``dst``.

    ``keep_factorized``: skip constant folding. Folding evaluates every subgraph whose inputs are all
    constants, so a compressed weight stored as decoder(latents) or A (x) B would be multiplied back
    into the dense matrix it replaced; a recipe that wants the compressed form at run time sets this.
    It also skips graph fusion: with the weight left as a computed tensor, onnxslim 0.1.98 fuses
    MatMul + Add into a Gemm with the wrong orientation of B (ORT then refuses the file: "Dimension
    mismatch", seen on the `decode` lowering of ae-weights).
    """
    import onnx
    import onnxslim

    before = onnx.load(str(src))
    n_before = len(before.graph.node)
    skip = ["constant_folding", "graph_fusion"] if keep_factorized else []
    slim = onnxslim.slim(before, skip_optimizations=skip or None)
    tmp = Path(dst).with_name(f".{Path(dst).name}.tmp")
    onnx.save(slim, str(tmp))
    os.replace(tmp, dst)
    return {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": n_before, "nodes_after": len(slim.graph.node),
            "constant_folding": not keep_factorized, "graph_fusion": not keep_factorized}
