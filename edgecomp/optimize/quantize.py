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

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from ..quant import QuantScheme

# MatMulNBits' accuracy_level for each activation quantization (0: fp32 math; 4: int8 per row / block)
ACCURACY_LEVEL = {"none": 0, "dynamic-per-row": 4}


def quantize_onnx(src: Path, dst: Path, scheme: QuantScheme) -> dict:
    """Quantize ``src`` into ``dst`` (written atomically) as ``scheme`` says (checked by OrtQuant.check)."""
    from ..quant import FORMAT_QUANT

    scheme = FORMAT_QUANT["onnx"].check(scheme)
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    info = _WEIGHT_QUANTIZERS[scheme.weights.bits](src, tmp, scheme)
    info = {"scheme": FORMAT_QUANT["onnx"].label(scheme), **info}
    os.replace(tmp, dst)
    return info


def _int8_dynamic(src: Path, tmp: Path, scheme: QuantScheme) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w, table = scheme.weights, scheme.table
    per_channel = w.block == "channel"
    int4_tables = table is not None and table.bits == 4
    ops = ["MatMul", "Gather"] if table == w else ["MatMul"]
    quantize_dynamic(
        str(src), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
        op_types_to_quantize=ops,
        # Signed int8 weights with per-channel scales keep attention outputs close; reduce_range is for
        # pre-VNNI x86 only and costs accuracy on ARM.
        extra_options={"MatMulConstBOnly": True},
    )
    info = {"weight_type": "int8", "per_channel": per_channel, "ops": ops}
    if int4_tables:
        q = weight_only_int4(tmp, table.block, ("Gather",))
        tables = pack_int4_gather_tables(q.model.model)
        q.model.save_model_to_file(str(tmp), use_external_data_format=False)
        info.update({"ops": ["MatMul", "GatherBlockQuantized"], "tables": {"weight_type": "int4", "block_size": table.block,
                                                                          "count": tables}})
    return info


def _int4_blocks(src: Path, tmp: Path, scheme: QuantScheme) -> dict:
    import onnx

    w = scheme.weights
    ops = ("MatMul", "Gather") if scheme.table is not None else ("MatMul",)
    accuracy_level = ACCURACY_LEVEL[scheme.activations] or None  # 0 is the op's default: not written
    q = weight_only_int4(src, w.block, ops, accuracy_level)
    if w.grid == "litert":  # the quantizer consumed its copy: the float weights come from a fresh load
        requantize_on_litert_grid(q.model.model, onnx.load(str(src)), w.block)
    pack_int4_gather_tables(q.model.model)
    q.model.save_model_to_file(str(tmp), use_external_data_format=False)
    return {"weight_type": "int4", "block_size": w.block, "symmetric": True,
            "ops": ["MatMulNBits", "GatherBlockQuantized"] if scheme.table is not None else ["MatMulNBits"],
            "accuracy_level": accuracy_level or 0, "grid": w.grid}


# the weights' bits -> the ORT quantizer that stores them (OrtQuant.check refuses what none can)
_WEIGHT_QUANTIZERS = {8: _int8_dynamic, 4: _int4_blocks}


def weight_only_int4(src: Path, block_size: int, op_types: tuple[str, ...], accuracy_level: int | None = None):
    """ORT's MatMulNBitsQuantizer, run, on the graph at ``src``: symmetric 4-bit blocks along the input axis
    of MatMul weights (MatMulNBits) and along each row of Gather tables (GatherBlockQuantized)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, op_types_to_quantize=op_types,
        quant_axes=tuple((op, {"MatMul": 0, "Gather": 1}[op]) for op in op_types),
        **({"accuracy_level": accuracy_level} if accuracy_level is not None else {}),
    )
    q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
    q.process()
    return q


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
        if node.op_type not in ("MatMulNBits", "GatherBlockQuantized") or len(node.input) > 3:
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
