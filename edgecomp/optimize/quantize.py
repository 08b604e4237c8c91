"""Weight quantization of ONNX graphs with ONNX Runtime's quantizers.

Schemes (a target's ``quantization``):
- ``dynamic-per-channel``: int8 weights with one scale per output channel, activations quantized at run
  time. The default: on MiniLM it keeps embedding cosine 0.992 mean / 0.968 worst, where per-tensor
  (optimum's --arm64/--avx512 default) drops to 0.956 / 0.765.
- ``dynamic-per-tensor``: one scale per weight tensor (for comparison with peers).
- ``block-int4``: 4-bit weight-only blocks (``MatMulNBits`` for MatMul, ``GatherBlockQuantized`` for
  embedding tables), block size from ``block_size`` (default 32). ``accuracy_level`` 4 lets MatMulNBits
  quantize its activations to int8 and use integer dot products (the fast path on ARM64).
- ``dynamic-per-channel-int4-tables``: int8 per-channel MatMuls as ``dynamic-per-channel`` and 4-bit
  embedding tables as ``block-int4``. A Gather costs nothing to run, so the table takes the bytes off at
  no compute; the MatMuls keep int8's integer kernels, which on ARM64 need fewer instructions than
  MatMulNBits (Cortex-A76: 219.6 M vs 260.1 M per MiniLM inference).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import EdgecompError

SCHEMES = ("dynamic-per-channel", "dynamic-per-tensor", "block-int4", "dynamic-per-channel-int4-tables")


# Schemes whose activations ORT quantizes at run time with ONE range per tensor: a text's result then
# depends on the other texts (and padding) in its batch, so `edgecomp run` feeds such artifacts one text
# at a time. MatMulNBits (block-int4) quantizes activations per row; fp32 has no ranges.
PER_TENSOR_ACTIVATION_SCHEMES = ("dynamic-per-channel", "dynamic-per-tensor", "dynamic-per-channel-int4-tables")


INT4_GRIDS = ("ort", "litert")
# the options each scheme takes from a target's artifact (the others are the target's business)
SCHEME_OPTIONS = {"block-int4": ("block_size", "accuracy_level", "grid"),
                  "dynamic-per-channel-int4-tables": ("block_size",)}


def quantize_onnx(src: Path, dst: Path, scheme: str, block_size: int = 32, accuracy_level: int | None = None,
                  grid: str = "ort") -> dict:
    """Quantize ``src`` into ``dst`` (written atomically). For ``block-int4``, ``grid`` picks the 4-bit values:
    "ort" (ORT's quantizer: the block's extreme maps to -8) or "litert" (LiteRT's blockwise recipe: absmax/7,
    bfloat16-rounded scales), so a model trained for LiteRT's grid gets the same weights in both runtimes."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    if scheme in ("dynamic-per-channel", "dynamic-per-tensor", "dynamic-per-channel-int4-tables"):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        per_channel = scheme != "dynamic-per-tensor"
        int4_tables = scheme == "dynamic-per-channel-int4-tables"
        ops = ["MatMul"] if int4_tables else ["MatMul", "Gather"]
        quantize_dynamic(
            str(src), str(tmp), per_channel=per_channel, weight_type=QuantType.QInt8,
            op_types_to_quantize=ops,
            # Signed int8 weights with per-channel scales keep attention outputs close; reduce_range is for
            # pre-VNNI x86 only and costs accuracy on ARM.
            extra_options={"MatMulConstBOnly": True},
        )
        info = {"scheme": scheme, "weight_type": "int8", "per_channel": per_channel, "ops": ops}
        if int4_tables:
            q = weight_only_int4(tmp, block_size, ("Gather",))
            tables = pack_int4_gather_tables(q.model.model)
            q.model.save_model_to_file(str(tmp), use_external_data_format=False)
            info.update({"ops": ["MatMul", "GatherBlockQuantized"], "tables": {"weight_type": "int4", "block_size": block_size,
                                                                              "count": tables}})
    elif scheme == "block-int4":
        import onnx

        if grid not in INT4_GRIDS:
            raise EdgecompError(f"unknown int4 grid {grid!r}", f"use one of: {', '.join(INT4_GRIDS)}")
        q = weight_only_int4(src, block_size, ("MatMul", "Gather"), accuracy_level)
        if grid == "litert":  # the quantizer consumed its copy: the float weights come from a fresh load
            requantize_on_litert_grid(q.model.model, onnx.load(str(src)), block_size)
        pack_int4_gather_tables(q.model.model)
        q.model.save_model_to_file(str(tmp), use_external_data_format=False)
        info = {"scheme": scheme, "weight_type": "int4", "block_size": block_size, "symmetric": True,
                "ops": ["MatMulNBits", "GatherBlockQuantized"], "accuracy_level": accuracy_level or 0, "grid": grid}
    else:
        raise EdgecompError(f"unknown quantization scheme {scheme!r}", f"use one of: {', '.join(SCHEMES)}")
    os.replace(tmp, dst)
    return info


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
