"""Weight quantization of an exported causal LM (ONNX), with the tied embedding table kept as ONE table.

Why not ``edgecomp.optimize.quantize`` alone: ORT's dynamic int8 quantizes the tied table per-tensor (one
scale for 28M values) and the LM head reads that table (SmolLM2 perplexity 18.9 -> 63.5); ORT's 4-bit
quantizer has integer zero points only, which cannot reproduce the GGUF's Q4_1 blocks. Here:

- layers ``q4_1``: llama.cpp's Q4_1 blocks (32 along the input dimension, q in 0..15, w = q*scale + min,
  scale and min rounded to fp16). Q4_1 puts the block minimum at q=0 and the maximum at q=15, so
  re-quantizing weights that were dequantized from Q4_1 gives back the very same blocks: the export is
  lossless against the fp32 model of a Q4_1 GGUF. ``MatMulNBits`` accepts the minimum as a float zero point
  (zp = -min/scale), but ORT 1.31 then takes a slow path (5x slower decode, measured); so the product is
  split: x.w = scale*(x.(q-8)) + (min + 8*scale)*sum(x over the block), i.e. ``MatMulNBits`` with no
  zero-point input (symmetric, implicit 8: the fast path, also with int8 activations) plus a small MatMul
  of per-block sums of x with the [blocks, N] shifted minima. Dropping the explicit zero points saved 1.7 MB
  and, with accuracy_level 4, ~23 MiB of peak RSS (measured on SmolLM2; perplexity unchanged).
- layers ``int4`` / ``int2``: ``MatMulNBits`` with integer zero points (ORT's scheme), any ``block_size``;
  ``ffn_layers`` gives the feed-forward MatMuls their own scheme (mixed precision).
- layers ``int8``: 8-bit ``MatMulNBits`` blocks (weight-only, symmetric; fast only with accuracy_level 4);
  ``int8-per-channel``: ORT dynamic int8, one scale per output channel (``MatMulInteger``), whose per-tensor
  activation quantization costs SmolLM2 1.46x perplexity even with the table fixed (measured).
- table ``int8-split`` / ``int8`` / ``int4``: the tied table quantized in blocks along the hidden dimension
  (symmetric, fp16-rounded scales: exact for a Q8_0 table), stored once and read by both
  ``GatherBlockQuantized`` (the embedding lookup) and ``MatMulNBits`` (the LM head); both ops take the same
  [vocab, blocks, bytes] data. ``int8-split`` stores the 8-bit codes as two 4-bit planes (hi, lo) because
  ORT 1.31's 8-bit MatMulNBits is slow in fp32; same bytes, exact, 4-bit speed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from ..quant import FormatQuant, QuantScheme, WeightQuant

LAYER_SCHEMES = ("none", "q4_1", "int4", "int2", "int8", "int8-per-channel")
TABLE_SCHEMES = ("none", "int8-split", "int8", "int4")
MS = "com.microsoft"


@dataclass(frozen=True)
class LlmQuantConfig:
    """What quantize_causal_lm does, in its own terms (config_of builds it from a QuantScheme)."""

    layers: str = "q4_1"
    table: str = "int8-split"
    block_size: int = 32          # layers (MatMulNBits needs a power of two >= 16)
    table_block_size: int = 32
    ffn_layers: str | None = None  # a different scheme for the feed-forward MatMuls (mixed precision)
    accuracy_level: int = 0       # layers' MatMulNBits: 0 = fp32 math (exact); 4 = int8 activations (faster)
    # The LM head: an 8-bit MatMulNBits has a fast kernel in ORT 1.31 only with int8 activations
    # (accuracy_level 4; fp32 is 5x slower, measured), hence "int8-split" (two 4-bit planes) by default.
    head_accuracy_level: int = 0

    def __post_init__(self):
        if self.layers not in LAYER_SCHEMES:
            raise EdgecompError(f"unknown layer quantization {self.layers!r}", f"use one of {LAYER_SCHEMES}")
        if self.ffn_layers not in (None, *LAYER_SCHEMES) or self.ffn_layers == "int8-per-channel":
            raise EdgecompError(f"unknown feed-forward quantization {self.ffn_layers!r}",
                                "use one of q4_1, int4, int2, int8, none")
        if self.table not in TABLE_SCHEMES:
            raise EdgecompError(f"unknown table quantization {self.table!r}", f"use one of {TABLE_SCHEMES}")

    @property
    def name(self) -> str:
        ffn = f".ffn-{self.ffn_layers}" if self.ffn_layers else ""
        return f"layers-{self.layers}{ffn}.table-{self.table}"


# --- the causal-LM adapters of the one scheme (edgecomp.quant) -------------------------------------------
# The causal-LM reading of a target's default scheme. Per-tensor int8 of the tied table is the peer's
# 63.5-perplexity failure; fixing only the table (ORT dynamic int8 per-channel layers) still gives 27.3 vs
# 18.67 on WikiText-2, because ORT quantizes each activation per tensor. 8-bit weight blocks of 64 along the
# input (9 per row for 576) with int8 activations per block (accuracy level 4) measure 13.61 vs 13.49 fp32 on
# 1,022 tokens and decode at 4-bit speed; the table keeps its exact 8-bit split planes and the head fp32 math.
LLM_INT8 = QuantScheme(weights=WeightQuant(8, 64, symmetric=True), table=WeightQuant(8, 32, symmetric=True, planes=2),
                       activations="dynamic-per-row", head_activations="none")
# A 4-bit target: Q4_1 blocks (lossless on a Q4_1 GGUF), the Q8_0-like split table, fp32 math.
LLM_INT4 = QuantScheme(weights=WeightQuant(4, 32, grid="q4_1", symmetric=False),
                       table=WeightQuant(8, 32, symmetric=True, planes=2))


def llm_default(target_scheme: QuantScheme) -> QuantScheme:
    return LLM_INT8 if target_scheme.weights is not None and target_scheme.weights.bits == 8 else LLM_INT4


# (bits, grid, symmetric, in blocks) of the layer weights -> quantize_causal_lm's layer scheme
LAYER_FORMS = {(4, "q4_1", False, True): "q4_1", (4, "ort", False, True): "int4", (2, None, False, True): "int2",
               (8, None, True, True): "int8", (8, None, True, False): "int8-per-channel"}
TABLE_FORMS = {(8, 2): "int8-split", (8, 1): "int8", (4, 1): "int4"}  # (bits, planes), symmetric blocks
ACCURACY_LEVEL = {"none": 0, "dynamic-per-row": 4}  # MatMulNBits: fp32 math / int8 activations per block


def _weights_default(w: WeightQuant) -> WeightQuant:
    """The LLM graphs' own forms: 4- and 2-bit layers asymmetric with integer zero points (ORT's scheme),
    8-bit symmetric."""
    return w.with_defaults("ort", w.bits == 8)


def config_of(scheme: QuantScheme) -> "LlmQuantConfig":
    """The scheme as quantize_causal_lm stores it (refused if it cannot)."""
    def layers(w: WeightQuant | None, what: str) -> str:
        if w is None:
            return "none"
        form = LAYER_FORMS.get((w.bits, w.grid, w.symmetric, w.blocked)) if w.block != "tensor" and w.planes == 1 else None
        if form is None:
            raise EdgecompError(f"the causal-LM ONNX graph cannot store {what} {w.name}",
                                'use q4_1 (grid = "q4_1"), asymmetric int4/int2 blocks (symmetric = false), '
                                "8-bit blocks, or int8 per channel")
        return form

    w, t, acts = scheme.weights, scheme.table, scheme.activations
    layer = layers(w, "weights")
    ffn = layers(scheme.ffn, "ffn") if scheme.ffn else None
    if (layer == "int8-per-channel") != (acts == "dynamic-per-tensor"):
        raise EdgecompError(f"causal-LM activations {acts!r} with {w.name if w else 'fp32'} weights: only ORT's dynamic "
                            "int8 per channel quantizes them per tensor", 'use activations = "dynamic-per-row" or "none"')
    table = "none"
    if t is not None:
        table = TABLE_FORMS.get((t.bits, t.planes)) if t.blocked and t.symmetric and t.grid is None else None
        if table is None:
            raise EdgecompError(f"the tied table cannot be stored as {t.name}",
                                "use symmetric blocks: table = {bits = 8 | 4, block = 32} (planes = 2: two 4-bit planes)")
    head = scheme.head_activations or ("none" if acts == "dynamic-per-tensor" else acts)
    if head not in ACCURACY_LEVEL:
        raise EdgecompError(f"head_activations = {head!r}: the LM head is a MatMulNBits", 'use "dynamic-per-row" or "none"')
    return LlmQuantConfig(layers=layer, table=table, block_size=w.block if w is not None and w.blocked else 32,
                          table_block_size=t.block if t is not None else 32, ffn_layers=ffn,
                          accuracy_level=ACCURACY_LEVEL.get(acts, 0), head_accuracy_level=ACCURACY_LEVEL[head])


class LlmOrtQuant(FormatQuant):
    """KV-cache ONNX graphs (quantize_causal_lm): see the module docstring for what each form measured."""

    runtime = "onnxruntime"

    def check(self, scheme):
        if any(q is not None and not q.rtn for q in (scheme.weights, scheme.table, scheme.ffn)):
            raise EdgecompError(f"the causal-LM artifacts cannot store quantization {scheme.name}: their quantizers round "
                                "to nearest (algorithm is an encoder ONNX option)", "drop algorithm")
        s = dataclasses.replace(scheme, **{k: _weights_default(getattr(scheme, k)) for k in ("weights", "ffn")
                                           if getattr(scheme, k)})
        if s.table is not None:
            s = dataclasses.replace(s, table=s.table.with_defaults(None, True))
        config_of(s)
        return s

    def label(self, scheme):
        return config_of(scheme).name


# (bits, block) of the weights, activations -> litert-torch's generative quantization flag
LITERT_FLAGS = {(8, "channel", "dynamic-per-row"): "dynamic_int8", (8, "channel", "none"): "weight_only_int8",
                (4, 32, "dynamic-per-row"): "dynamic_int4_block32", (4, 128, "dynamic-per-row"): "dynamic_int4_block128"}


class LlmLiteRtQuant(FormatQuant):
    """litert-torch's re-authored decoder, quantized whole (tables and head as the layers) by its recipes,
    4-bit blocks on LiteRT's own grid."""

    runtime = "litert"
    grid = "litert"
    fold_layernorm = True

    def default_activations(self, weights, options):
        return "dynamic-per-row"

    def check(self, scheme):
        if any(q is not None and not q.rtn for q in (scheme.weights, scheme.table, scheme.ffn)):
            raise EdgecompError(f"the causal-LM .tflite cannot store quantization {scheme.name}: litert-torch rounds to "
                                "nearest (algorithm is an encoder ONNX option)", "drop algorithm")
        s = super().check(scheme)
        w = s.weights
        flag = LITERT_FLAGS.get((w.bits, w.block, s.activations)) if w is not None else None
        if flag is None or w.grid not in (None, "litert") or (s.table is not None and s.table.bits != w.bits) \
                or s.ffn or s.head_activations not in (None, s.activations):
            raise EdgecompError(f"the causal-LM .tflite cannot store quantization {s.name}: litert-torch quantizes the "
                                f"whole decoder as one of {', '.join(LITERT_FLAGS.values())}",
                                "state its own in [quantization.litert], e.g. weights = {bits = 4, block = 32}")
        return s

    def label(self, scheme):
        w = scheme.weights
        return LITERT_FLAGS[(w.bits, w.block, scheme.activations)]


LLM_FORMAT_QUANT = {"onnx": LlmOrtQuant(), "ort": LlmOrtQuant(), "tflite": LlmLiteRtQuant()}


# --- block quantizers: W [N, K] (N output rows, blocks of `block` along K) -> q [N, nb, block] uint8 ------
def _blocks(w: np.ndarray, block: int) -> np.ndarray:
    n, k = w.shape
    if k % block:
        raise EdgecompError(f"weight of width {k} is not a multiple of the block size {block}",
                            "choose a block size that divides the hidden sizes")
    return w.astype(np.float32).reshape(n, k // block, block)


def _fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def quantize_q4_1(w: np.ndarray, block: int = 32):
    """llama.cpp Q4_1 blocks: q in 0..15, w ~ q*scale + min; returns q, scale, float zero point (-min/scale)."""
    b = _blocks(w, block)
    lo, hi = b.min(-1), b.max(-1)
    d = _fp16((hi - lo) / 15.0)
    m = _fp16(lo)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0.0)
    q = np.clip(np.floor((b - m[..., None]) * inv[..., None] + 0.5), 0, 15).astype(np.uint8)
    # (q - zp) * scale == q*d + m; a constant block (d == 0) becomes scale = m, zp = -1, q = 0.
    flat = d == 0
    scale = np.where(flat, m, d).astype(np.float32)
    zp = np.where(flat, -1.0, -m / np.where(flat, 1, d)).astype(np.float32)
    return q, scale, zp


def quantize_asym_int(w: np.ndarray, bits: int, block: int):
    """Asymmetric blocks with an integer zero point (ORT's MatMulNBits scheme)."""
    b = _blocks(w, block)
    qmax = 2**bits - 1
    lo, hi = np.minimum(b.min(-1), 0), np.maximum(b.max(-1), 0)
    scale = (hi - lo) / qmax
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, qmax).astype(np.uint8)
    q = np.clip(np.round(b / scale[..., None]) + zp[..., None], 0, qmax).astype(np.uint8)
    return q, scale, zp


def quantize_sym(w: np.ndarray, bits: int, block: int):
    """Symmetric blocks around the default zero point 2**(bits-1), fp16-rounded scale (Q8_0 for bits=8)."""
    b = _blocks(w, block)
    half = 2 ** (bits - 1)
    amax = np.abs(b).max(-1)
    scale = _fp16(amax / (half - 1))
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = (np.clip(np.round(b / scale[..., None]), -half, half - 1) + half).astype(np.uint8)
    return q, scale, None


def dequantize(q, scale, zp, bits: int) -> np.ndarray:
    z = 2 ** (bits - 1) if zp is None else (zp.astype(np.float32)[..., None])
    return ((q.astype(np.float32) - z) * scale[..., None]).reshape(q.shape[0], -1)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Values along the last axis -> MatMulNBits/GatherBlockQuantized bytes, first element in the low bits."""
    per = 8 // bits
    if per == 1:
        return q
    out = np.zeros(q.shape[:-1] + (q.shape[-1] // per,), np.uint8)
    for j in range(per):
        out |= (q[..., j::per] << (bits * j)).astype(np.uint8)
    return out


def pack_zero_points(zp: np.ndarray, bits: int = 4) -> np.ndarray:
    """Integer zero points of MatMulNBits: [N, nb] -> [N, ceil(nb*bits/8)], packed like the weights."""
    n, nb = zp.shape
    per = 8 // bits
    if nb % per:
        zp = np.concatenate([zp, np.zeros((n, per - nb % per), np.uint8)], 1)
    return pack(zp, bits)


# --- graph surgery --------------------------------------------------------------------------------------
class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model, self.g = model, model.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.nh = numpy_helper
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.producer = {o: n for n in self.g.node for o in n.output}

    def array(self, name):
        return self.nh.to_array(self.inits[name])

    def add(self, name, arr):
        t = self.nh.from_array(np.ascontiguousarray(arr), name)
        self.g.initializer.append(t)
        self.inits[name] = t

    def drop_unused_initializers(self):
        used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
        keep = [t for t in self.g.initializer if t.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(keep)


def _matmulnbits(name, a, out, prefix, k, n, bits, block, has_zp, accuracy_level):
    from onnx import helper

    ins = [a, f"{prefix}_q", f"{prefix}_scales"] + ([f"{prefix}_zp"] if has_zp else [])
    return helper.make_node("MatMulNBits", ins, [out], name=name, domain=MS, K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=accuracy_level)


def _indexed_by_input_ids(gr: _Graph, name: str) -> bool:
    """``name`` is the graph input ``input_ids``, maybe through Cast/Reshape/Unsqueeze/Squeeze."""
    for _ in range(4):
        if name == "input_ids":
            return True
        n = gr.producer.get(name)
        if n is None or n.op_type not in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten"):
            return False
        name = n.input[0]
    return False


def find_tied_table(gr: _Graph):
    """(token table initializer, embedding Gather node, LM-head MatMul node, its Transpose) or None.

    The token table is the 2-D Gather indexed by ``input_ids`` (GPT-2 also looks up a position table); the
    head is tied when a MatMul reads the table through a Transpose (optimum's form of a shared weight)."""
    gathers = [n for n in gr.g.node
               if n.op_type == "Gather" and n.input[0] in gr.inits and len(gr.inits[n.input[0]].dims) == 2]
    gathers.sort(key=lambda n: not _indexed_by_input_ids(gr, n.input[1]))
    for n in gathers[:1]:
        table = n.input[0]
        for c in gr.consumers.get(table, []):
            if c.op_type == "Transpose":
                mm = [x for x in gr.consumers.get(c.output[0], []) if x.op_type == "MatMul"]
                if mm:
                    return table, n, mm[0], c
        return table, n, None, None
    return None


def _as_matmul(gr: _Graph, n):
    """(input, [K, N] weight array, bias name or None) when node ``n`` is x @ W (+ b) with W an initializer:
    a MatMul, or a Gemm with alpha = beta = 1 and no transposed input (GPT-2's Conv1D exports as that)."""
    if len(n.input) < 2 or n.input[1] not in gr.inits:
        return None
    if n.op_type == "MatMul":
        return n.input[0], gr.array(n.input[1]), None
    if n.op_type != "Gemm":
        return None
    attrs = {a.name: a for a in n.attribute}
    if any(attrs[k].f != 1.0 for k in ("alpha", "beta") if k in attrs) or ("transA" in attrs and attrs["transA"].i):
        return None
    w = gr.array(n.input[1])
    if "transB" in attrs and attrs["transB"].i:
        w = w.T
    return n.input[0], w, (n.input[2] if len(n.input) > 2 and n.input[2] else None)


def _block_min_correction(gr: _Graph, node, pre: str, minima: np.ndarray, block: int, block_sums: dict) -> list:
    """Nodes adding sum_b(x over block b) * min[b, n] to the zero-point-0 MatMulNBits output of ``node``."""
    from onnx import helper

    x = node.input[0]
    nodes = []
    if x not in block_sums:
        rank = 2 if node.op_type == "Gemm" else 3  # a Gemm's input is [M, K]; a MatMul's here [B, S, K]
        shape_name = f"block_shape_{block}_rank{rank}"
        if shape_name not in gr.inits:
            # [B, S, K] -> [B, S, nb, block] ([M, K] -> [M, nb, block])
            gr.add(shape_name, np.array([0] * (rank - 1) + [-1, block], np.int64))
            if "block_sum_axes" not in gr.inits:
                gr.add("block_sum_axes", np.array([-1], np.int64))
        xb, xs = x + f"_blocks{block}", x + f"_blocksums{block}"
        nodes += [helper.make_node("Reshape", [x, shape_name], [xb], name=xb),
                  helper.make_node("ReduceSum", [xb, "block_sum_axes"], [xs], name=xs, keepdims=0)]
        block_sums[x] = xs
    gr.add(f"{pre}_minima", minima)
    corr = node.output[0] + "_minsum"
    nodes += [helper.make_node("MatMul", [block_sums[x], f"{pre}_minima"], [corr], name=corr),
              helper.make_node("Add", [node.output[0] + "_nbits", corr], [node.output[0]], name=node.name + "_add_min")]
    return nodes


def quantize_causal_lm(src: Path, dst: Path, cfg: LlmQuantConfig) -> dict:
    """Quantize ``src`` (an fp32 KV-cache LM export) into ``dst``; returns what was done (for the manifest)."""
    import onnx
    from onnx import helper

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    gr = _Graph(model)
    info = {"layers": cfg.layers, "table": cfg.table, "block_size": cfg.block_size,
            "table_block_size": cfg.table_block_size, "accuracy_level": cfg.accuracy_level,
            "head_accuracy_level": cfg.head_accuracy_level, "matmuls": 0}
    tied = find_tied_table(gr)
    new_nodes: dict[int, list] = {}  # id(old node) -> replacement nodes
    head_node = tied[2] if tied else None

    # 1. The tied table: one quantized copy, read by the lookup and the LM head.
    if tied and cfg.table != "none":
        table, gather, head, transpose = tied
        tb = cfg.table_block_size
        w = gr.array(table)  # [vocab, hidden]
        bits = 4 if cfg.table == "int4" else 8
        q, scale, _ = quantize_sym(w, bits, tb)
        v, nb = scale.shape
        pre = table.replace("/", "_").replace(".", "_")
        gr.add(f"{pre}_scales", scale)              # [vocab, nb] as MatMulNBits wants
        gr.add(f"{pre}_scales_shape", np.array([v, nb, 1], np.int64))
        sc3 = f"{pre}_scales_3d"
        # GatherBlockQuantized wants scales of the data's rank; a Reshape of the same tensor avoids a copy.
        gather_nodes = [helper.make_node("Reshape", [f"{pre}_scales", f"{pre}_scales_shape"], [sc3],
                                         name=f"{pre}_scales_reshape")]
        if cfg.table == "int8-split":
            # q + 128 = 16*hi + lo, so w = 16*scale*(hi - 8) + scale*lo: two 4-bit planes (fast fp32 kernels),
            # hi with the default zero point 8, lo with zero point 0. Exact, as fast as 4-bit.
            planes = [(f"{pre}_hi", q >> 4, 16.0, None), (f"{pre}_lo", q & 15, 1.0, f"{pre}_lo")]
        else:
            planes = [(f"{pre}_q", q, 1.0, None)]
        pbits = 4 if cfg.table != "int8" else 8
        head_nodes, emb_parts, head_parts = [], [], []
        for plane, qv, mult, zp in planes:
            gr.add(f"{plane}_q", pack(qv, pbits))  # [vocab, nb, bytes per block]
            gbq_in = [f"{plane}_q", gather.input[1], sc3]
            if zp:
                gr.add(f"{plane}_zp", pack_zero_points(np.zeros((v, nb), np.uint8)))
                gr.add(f"{plane}_gzp", np.zeros((v, nb, 1), np.uint8))
                gbq_in.append(f"{plane}_gzp")
            e = gather.output[0] + plane + "_blocks"
            gather_nodes.append(helper.make_node("GatherBlockQuantized", gbq_in, [e], name=e, domain=MS, bits=pbits,
                                                 block_size=tb, gather_axis=0, quantize_axis=2))
            y = (head.output[0] if head is not None else "lm_head") + plane
            head_nodes.append(helper.make_node("MatMulNBits", [head.input[0] if head is not None else "", f"{plane}_q",
                                                               f"{pre}_scales"] + ([f"{plane}_zp"] if zp else []),
                                               [y], name=y, domain=MS, K=w.shape[1], N=v, bits=pbits, block_size=tb,
                                               accuracy_level=cfg.head_accuracy_level))
            if mult != 1.0:
                gr.add(f"{plane}_mult", np.array(mult, np.float32))
                for nodes, parts, t in ((gather_nodes, emb_parts, e), (head_nodes, head_parts, y)):
                    nodes.append(helper.make_node("Mul", [t, f"{plane}_mult"], [t + "_x"], name=t + "_x"))
                    parts.append(t + "_x")
            else:
                emb_parts.append(e)
                head_parts.append(y)
        emb3 = gather.output[0] + "_blocks"
        gr.add(f"{pre}_emb_shape", np.array([0, 0, -1], np.int64))  # [B, S, nb, block] -> [B, S, hidden]
        for nodes, parts, out in ((gather_nodes, emb_parts, emb3), (head_nodes, head_parts,
                                                                    head.output[0] if head is not None else "")):
            if len(parts) == 1:
                nodes[-1].output[0] = out
            else:
                nodes.append(helper.make_node("Add", parts, [out], name=out + "_sum"))
        gather_nodes.append(helper.make_node("Reshape", [emb3, f"{pre}_emb_shape"], [gather.output[0]],
                                             name=gather.name + "_reshape"))
        new_nodes[id(gather)] = gather_nodes
        if head is not None:
            new_nodes[id(head)] = head_nodes
            new_nodes[id(transpose)] = []
        info["table_bits"] = bits
        info["table_shared_by_lm_head"] = head is not None

    # 2. Layer MatMuls with a constant [K, N] weight (the LM head is handled with the table).
    layer_bits = {"q4_1": 4, "int4": 4, "int2": 2, "int8": 8}
    block_sums: dict[str, list] = {}  # activation name -> its per-block sums (shared by q, k, v / gate, up)

    def pre_of(node):
        return node.input[1].replace("/", "_").replace(":", "_").replace(".", "_") + "_" + str(len(gr.inits))

    if cfg.layers in layer_bits or cfg.ffn_layers in layer_bits:
        for n in list(gr.g.node):
            mm = None if n is head_node else _as_matmul(gr, n)
            if mm is None or mm[1].ndim != 2:
                continue
            x, w, bias = mm
            scheme = cfg.ffn_layers if cfg.ffn_layers and re.search(r"mlp|ffn|feed_forward", n.name) else cfg.layers
            if scheme not in layer_bits:
                continue
            bits = layer_bits[scheme]
            k, nout = w.shape
            wt = w.T  # MatMulNBits stores B as [N, K]
            extra = []
            if scheme == "q4_1":
                q, scale, fzp = quantize_q4_1(wt, cfg.block_size)
                # No zero-point input: MatMulNBits then computes (q - 8) * scale, the symmetric form its fast
                # int8-activation kernels take; the +8 * scale goes into the per-block minimum correction.
                zp = None
                minima = (-fzp * scale + 8.0 * scale).T.astype(np.float32)  # [nb, N]: block minimum + 8*scale
                extra = _block_min_correction(gr, n, pre_of(n), minima, cfg.block_size, block_sums)
            elif scheme in ("int4", "int2"):
                q, scale, zp = quantize_asym_int(wt, bits, cfg.block_size)
                zp = pack_zero_points(zp, bits)
            else:
                q, scale, zp = quantize_sym(wt, 8, cfg.block_size)
            pre = pre_of(n)
            gr.add(f"{pre}_q", pack(q, bits))
            gr.add(f"{pre}_scales", scale)
            if zp is not None:
                gr.add(f"{pre}_zp", zp)
            if bias is not None:  # a Gemm's bias: added after the (corrected) product
                extra = [*extra, helper.make_node("Add", [n.output[0] + "_nobias", bias], [n.output[0]],
                                                  name=n.name + "_bias")]
                for node in extra[:-1]:  # the min correction (if any) now ends in the pre-bias name
                    node.output[:] = [o if o != n.output[0] else n.output[0] + "_nobias" for o in node.output]
            final = n.output[0] + "_nobias" if bias is not None else n.output[0]
            out = n.output[0] + "_nbits" if len(extra) > (bias is not None) else final
            new_nodes[id(n)] = [_matmulnbits(n.name + "_q", x, out, pre, k, nout, bits,
                                             cfg.block_size, zp is not None, cfg.accuracy_level), *extra]
            info["matmuls"] += 1

    nodes = []
    for n in gr.g.node:
        nodes.extend(new_nodes.get(id(n), [n]))
    del gr.g.node[:]
    gr.g.node.extend(nodes)
    gr.drop_unused_initializers()
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))

    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(model, str(tmp))
    if cfg.layers == "int8-per-channel":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.getLogger("onnxruntime").setLevel(logging.ERROR)
        tmp2 = dst.with_name(f".{dst.name}.tmp2")
        excl = [head_node.name] if head_node is not None and cfg.table == "none" else []
        quantize_dynamic(str(tmp), str(tmp2), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=excl,
                         extra_options={"MatMulConstBOnly": True})
        os.replace(tmp2, tmp)
        info["matmuls"] = "ORT dynamic int8 per-channel"
    os.replace(tmp, dst)
    return info
