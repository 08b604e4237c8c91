"""Weight quantization of encoder ONNX graphs with ONNX Runtime's quantizers: the ORT adapter of the one
scheme (edgecomp.quant; what it can store is ``OrtQuant.check``). The graph follows the scheme's fields:

- int8 weights (``weights = {bits = 8}``: one scale per output channel; ``block = "tensor"``: one per
  tensor), activations quantized at run time per tensor (``quantize_dynamic``, MatMulInteger). Per channel
  is the targets' default: on MiniLM it keeps embedding cosine 0.992 mean / 0.968 worst, where per-tensor
  (optimum's --arm64/--avx512 default) drops to 0.956 / 0.765. The tables go as the weights, or
- 4-bit tables under int8 MatMuls (``table = {bits = 4, block = 32}``): a Gather costs nothing to run, so the
  table takes the bytes off at no compute; the MatMuls keep int8's integer kernels, which on ARM64 need
  fewer instructions than MatMulNBits (Cortex-A76: 219.6 M vs 260.1 M per MiniLM inference).
- 4-bit symmetric blocks (``weights = {bits = 4, block = 32}``): ``MatMulNBits`` for MatMul,
  ``GatherBlockQuantized`` for the tables, on ORT's grid (the block's extreme maps to -8) or LiteRT's
  (``grid = "litert"``: absmax/7, bfloat16-rounded scales, so a model trained for LiteRT's grid gets the same
  weights in both runtimes). ``activations = "dynamic-per-row"`` is MatMulNBits' accuracy_level 4: int8
  activations and integer dot products (the fast path on ARM64).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgecompError
from ..quant import QuantScheme

# MatMulNBits' accuracy_level for each activation quantization (0: fp32 math; 4: int8 per row / block)
ACCURACY_LEVEL = {"none": 0, "dynamic-per-row": 4}


def quantize_onnx(src: Path, dst: Path, scheme: QuantScheme, calibration: Callable[[], list[dict]] | None = None,
                  model=None) -> dict:
    """Quantize ``src`` into ``dst`` (written atomically) as ``scheme`` says (checked by OrtQuant.check).

    ``calibration``: the calibration text's feeds for the graph (GPTQ's Hessians); ``model``: the PyTorch model
    the graph came from (its family's adapter tells the feed-forward MatMuls for ``ffn``)."""
    from ..quant import FORMAT_QUANT

    scheme = FORMAT_QUANT["onnx"].check(scheme)
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    if scheme.weights.algorithm == "gptq" and calibration is None:
        raise EdgecompError("GPTQ weights need calibration text, and none was given",
                            'export through `edgecomp export` (it passes its calibration text), or drop algorithm = "gptq"')
    info = _WEIGHT_QUANTIZERS[8 if scheme.weights.bits == 8 else "blocks"](src, tmp, scheme, calibration, model)
    info = {"scheme": FORMAT_QUANT["onnx"].label(scheme), **info}
    os.replace(tmp, dst)
    return info


def _int8_dynamic(src: Path, tmp: Path, scheme: QuantScheme, calibration=None, model=None) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w, table = scheme.weights, scheme.table
    per_channel = w.block == "channel"
    int4_tables = table is not None and table.bits == 4
    ops = ["MatMul", "Gather"] if table == w else ["MatMul"]
    graph = named_nodes(onnx.load(str(src)))
    quantize_dynamic(
        str(src), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
        op_types_to_quantize=ops, nodes_to_exclude=sorted(set(gathers(graph)) - set(table_gathers(graph, 16))),
        # Signed int8 weights with per-channel scales keep attention outputs close; reduce_range is for
        # pre-VNNI x86 only and costs accuracy on ARM.
        extra_options={"MatMulConstBOnly": True},
    )
    info = {"weight_type": "int8", "per_channel": per_channel, "ops": ops}
    if int4_tables:
        q = weight_only_blocks(onnx.load(str(tmp)), table, ("Gather",))
        tables = pack_int4_gather_tables(q.model.model)
        q.model.save_model_to_file(str(tmp), use_external_data_format=False)
        info.update({"ops": ["MatMul", "GatherBlockQuantized"], "tables": {"weight_type": "int4", "block_size": table.block,
                                                                          "count": tables}})
    return info


def _blocks(src: Path, tmp: Path, scheme: QuantScheme, calibration=None, model=None) -> dict:
    """MatMulNBits for the MatMuls (the feed-forward ones at ``ffn`` first, when stated), then the tables
    (GatherBlockQuantized, 4-bit round to nearest): one ORT quantizer pass per setting, or a single one when
    the MatMuls and tables share a round-to-nearest 4-bit setting (the bytes `int4` always wrote)."""
    import onnx

    w, ffn, table = scheme.weights, scheme.ffn, scheme.table
    accuracy_level = ACCURACY_LEVEL[scheme.activations] or None  # 0 is the op's default: not written
    graph = named_nodes(onnx.load(str(src)))
    passes = {}
    if ffn is None and w.rtn and w.bits == 4 and (table is None or table.block == w.block):
        q = weight_only_blocks(graph, w, ("MatMul", "Gather") if table is not None else ("MatMul",), accuracy_level)
    else:
        if ffn is not None:
            ff = feed_forward_matmuls(graph, model)
            graph = _matmul_pass(graph, ffn, accuracy_level, calibration, include=ff).model.model
            passes["ffn"] = {"matmuls": len(ff), **ffn.to_json()}
        q = _matmul_pass(graph, w, accuracy_level, calibration)
        if table is not None:
            q = weight_only_blocks(q.model.model, table, ("Gather",))
    if w.grid == "litert":  # the quantizer consumed its copy: the float weights come from a fresh load
        requantize_on_litert_grid(q.model.model, onnx.load(str(src)), w.block)
    pack_int4_gather_tables(q.model.model)
    q.model.save_model_to_file(str(tmp), use_external_data_format=False)
    ops = ["MatMulNBits", "GatherBlockQuantized"] if table is not None else ["MatMulNBits"]
    return {"weight_type": f"int{w.bits}", "block_size": w.block, "symmetric": w.symmetric,
            **({"algorithm": w.algorithm} if not w.rtn else {}), "ops": ops, "accuracy_level": accuracy_level or 0,
            "grid": w.grid, **({"ffn": passes["ffn"]} if passes else {}),
            **({"tables": {"weight_type": "int4", "block_size": table.block, "algorithm": "rtn"}}
               if table is not None and not (w.rtn and w.bits == 4) else {})}


# the weights' kind -> the ORT quantizer that stores them (OrtQuant.check refuses what none can)
_WEIGHT_QUANTIZERS = {8: _int8_dynamic, "blocks": _blocks}


class _Feeds:
    """The calibration feeds as ORT's CalibrationDataReader protocol (GPTQ iterates a deep copy)."""

    def __init__(self, feeds: list[dict]):
        self.feeds = feeds
        self.i = 0

    def get_next(self):
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def rewind(self):
        self.i = 0

    def __iter__(self):
        return iter(self.feeds)


def _matmul_pass(graph, q, accuracy_level, calibration, include: list[str] | None = None):
    """The graph's remaining float MatMuls (or only ``include``) as MatMulNBits by ``q``'s algorithm."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig, GPTQWeightOnlyQuantConfig, HQQWeightOnlyQuantConfig, KQuantWeightOnlyQuantConfig,
        MatMulNBitsQuantizer)

    matmuls = [n.name for n in graph.graph.node if n.op_type == "MatMul"]
    exclude = [] if include is None else [n for n in matmuls if n not in set(include)]
    algorithm = q.algorithm or "rtn"
    level = {"accuracy_level": accuracy_level} if accuracy_level is not None else {}
    if algorithm == "gptq":
        cfg = GPTQWeightOnlyQuantConfig(calibration_data_reader=_Feeds(calibration()), block_size=128,
                                        perchannel=True, op_types_to_quantize=("MatMul",))
    elif algorithm == "hqq":
        cfg = HQQWeightOnlyQuantConfig(block_size=q.block, bits=q.bits, op_types_to_quantize=("MatMul",))
    elif algorithm == "k-quant":
        cfg = KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
    else:
        cfg = DefaultWeightOnlyQuantConfig(block_size=q.block, is_symmetric=bool(q.symmetric), bits=q.bits,
                                           op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),), **level)
    quantizer = MatMulNBitsQuantizer(graph, block_size=q.block, is_symmetric=bool(q.symmetric), nodes_to_exclude=exclude,
                                     algo_config=cfg, **level)
    if algorithm in ("gptq", "k-quant") and exclude:  # ORT's INC path: excluded nodes are "fp32" in its config
        raise EdgecompError(f"ORT's {algorithm} quantizes every MatMul at once", "use it for weights, not ffn alone")
    with contextlib.redirect_stdout(io.StringIO()):  # ORT's INC algorithms print a progress bar
        quantizer.process()
    if not hasattr(quantizer.model, "model"):  # the INC algorithms leave a ModelProto
        from onnxruntime.quantization.onnx_model import ONNXModel

        quantizer.model = ONNXModel(quantizer.model)
    return quantizer


def named_nodes(graph):
    """Every node named (the quantizers select and exclude nodes by name), in place; returns the graph.
    The exporters name every node already, so their graphs (and the artifacts' bytes) stay as they are."""
    seen = {n.name for n in graph.graph.node if n.name}
    for i, node in enumerate(graph.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)
    return graph


def gathers(graph) -> list[str]:
    return [n.name for n in graph.graph.node if n.op_type == "Gather"]


def table_gathers(graph, block: int) -> list[str]:
    """The Gathers whose data is a float32 weight table, rows of whole ``block``s: not an index remap, a
    lookup of a byte's codes, 2-bit codes or their float16 scales (edgecomp.compress.freq_table)."""
    import onnx

    inits = {t.name: t for t in graph.graph.initializer}
    out = []
    for n in graph.graph.node:
        t = inits.get(n.input[0]) if n.op_type == "Gather" else None
        if t is not None and t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and t.dims[1] >= 16 \
                and t.dims[1] % block == 0:
            out.append(n.name)
    return out


def feed_forward_matmuls(graph, model=None) -> list[str]:
    """MatMul nodes whose weight is a feed-forward one (the family's adapter when the model is at hand)."""
    from ..archs import layout_of
    from ..bench.size import classify

    layout = layout_of(model) if model is not None else None
    inits = {t.name for t in graph.graph.initializer}
    return [n.name for n in graph.graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)
            and classify(" ".join([*[i for i in n.input if i in inits], n.name]), layout) == "feed_forward"]


def weight_only_blocks(graph, q, op_types: tuple[str, ...], accuracy_level: int | None = None):
    """ORT's MatMulNBitsQuantizer (round to nearest), run on ``graph`` (a ModelProto, consumed): symmetric blocks
    along the input axis of MatMul weights (MatMulNBits) and 4-bit blocks along each row of the weight
    tables (GatherBlockQuantized; other Gathers are left alone)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    graph = named_nodes(graph)
    cfg = DefaultWeightOnlyQuantConfig(
        block_size=q.block, is_symmetric=True, op_types_to_quantize=op_types, bits=q.bits,
        quant_axes=tuple((op, {"MatMul": 0, "Gather": 1}[op]) for op in op_types),
        **({"accuracy_level": accuracy_level} if accuracy_level is not None else {}),
    )
    exclude = sorted(set(gathers(graph)) - set(table_gathers(graph, q.block))) if "Gather" in op_types else []
    quantizer = MatMulNBitsQuantizer(graph, block_size=q.block, is_symmetric=True, nodes_to_exclude=exclude, algo_config=cfg)
    quantizer.process()
    return quantizer


def pack_int4_gather_tables(model) -> int:
    """Store 4-bit ``GatherBlockQuantized`` tables as two nibbles per uint8 byte (``bits=4``), in place.

    The quantizer writes the table as an ONNX INT4 tensor. The ORT-format flatbuffer loader reads no 4-bit
    tensors (measured with ORT 1.31), while the uint8 layout, the same one MatMulNBits uses (low nibble
    first, implicit zero point 8), loads from .onnx and .ort alike and gives bitwise-equal outputs.
    """
    import onnx
    from onnx import helper, numpy_helper

    tables = {t.name: t for t in model.graph.initializer}
    packed = 0
    for node in model.graph.node:
        if node.op_type != "GatherBlockQuantized" or len(node.input) > 3:  # explicit zero points: leave as is
            continue
        table = tables.get(node.input[0])
        if table is None or table.data_type != onnx.TensorProto.INT4 or table.dims[-1] % 2:
            continue
        table.CopyFrom(numpy_helper.from_array(_packed_uint4(numpy_helper.to_array(table)), table.name))
        node.attribute.append(helper.make_attribute("bits", 4))
        packed += 1
    return packed


def litert_int4_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``w`` [R, C] in blocks of ``block`` along C on LiteRT's int4 grid: int values [R, C] in [-8, 7]
    and float32 scales [R, C/block] (absmax/7, rounded to a bfloat16 mantissa, stored as fp16; half-to-even
    rounding)."""
    import ml_dtypes

    r, c = w.shape
    blocks = w.astype(np.float32).reshape(r, c // block, block)
    scale = np.maximum(np.abs(blocks).max(-1), 1e-9) / 7.0
    scale = scale.astype(ml_dtypes.bfloat16).astype(np.float16).astype(np.float32)  # stored as fp16 in .tflite
    q = np.clip(np.rint(blocks / scale[..., None]), -8, 7).astype(np.int8)
    return q.reshape(r, c), scale


def _packed_uint4(q: np.ndarray) -> np.ndarray:
    """Signed 4-bit values -> q + 8, two per byte along the last axis, low nibble first (MatMulNBits layout)."""
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def requantize_on_litert_grid(model, float_model, block: int) -> None:
    """Overwrite the 4-bit weights and scales ORT's quantizer wrote with LiteRT's grid, in place.

    Both ops keep ORT's symmetric convention (no zero-point input: zero point 8), which holds LiteRT's values
    exactly. The float weights come from the unquantized model by the quantizer's names (``<name>_Q4``).
    """
    from onnx import helper, numpy_helper

    floats = {t.name: t for t in float_model.graph.initializer}
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("MatMulNBits", "GatherBlockQuantized") or len(node.input) > 3 \
                or any(a.name == "bits" and a.i != 4 for a in node.attribute):
            continue
        data, scales = tensors.get(node.input[0 if node.op_type == "GatherBlockQuantized" else 1]), tensors.get(node.input[2])
        orig = floats.get(data.name.removesuffix("_Q4")) if data is not None else None
        if orig is None or scales is None:
            raise EdgecompError(f"cannot find the float weight behind {node.name} to requantize it on LiteRT's grid",
                                "quantize with grid = \"ort\" (the default)")
        w = numpy_helper.to_array(orig)
        w = w.T if node.op_type == "MatMulNBits" else w  # MatMulNBits stores B as [N, K]; tables are [V, D]
        q, scale = litert_int4_blocks(w, block)
        packed = _packed_uint4(q)
        if node.op_type == "MatMulNBits":
            packed = packed.reshape(w.shape[0], w.shape[1] // block, block // 2)
        else:
            node.attribute.append(helper.make_attribute("bits", 4))  # uint8 table, as pack_int4_gather_tables writes
        data.CopyFrom(numpy_helper.from_array(packed, data.name))
        scales.CopyFrom(numpy_helper.from_array(scale.astype(numpy_helper.to_array(scales).dtype).reshape(tuple(scales.dims)),
                                                scales.name))
