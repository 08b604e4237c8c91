"""edgecomp's own ONNX Runtime custom operators: ``edgecomp.MoEFeedForward`` (moe_ffn.c), a mixture-of-experts
feed-forward layer that runs only the experts each token selects.

The contract (inputs, attributes, output) is in moe_ffn.c's header and in ``moe_function_proto``, the same
computation as an ONNX function of standard ops: the portable fallback an artifact carries for runtimes
without the library. ``build_custom_ops(machine)`` compiles the library (``libedgecomp_ops.so``) for this
host or for aarch64 (needs ARMv8.2 dotprod: Cortex-A55/A76 and later) into the cache; int8 weights run
on SDOT (aarch64) or AVX-512 VNNI (x86, when the CPU has it; else a portable loop). ONNX Runtime loads it
with ``SessionOptions.register_custom_ops_library``: a graph with the op gets ``custom_ops = "edgecomp"``
in its session options (runtime/options.py, ``uses_edgecomp_ops``), so edgecomp's ORT runner, the native
probe (``--option custom_ops=PATH``, host and qemu guest) and the arm64 Python guest register it.
``moe_node`` makes the node; ``moe_reference`` is the contract in numpy; ``quantize_experts`` the int8 weights.

Which form the kernel runs (measured on onnxruntime 1.31.1; tests/test_moe_kernel.py pins it through
ORT's profiler): ONNX Runtime PREFERS the registered kernel. A node ``edgecomp.MoEFeedForward`` whose model
also carries a local function of that name runs the kernel when the library is registered (tested at ORT_ENABLE_ALL
and ORT_DISABLE_ALL) and is inlined into the function's standard-op body only when no kernel claims it.
So one artifact serves both: ``kernel_variant(model)`` is the identity (a copy that makes sure the
``edgecomp`` opset is imported); ``strip_fallback(model)`` drops the function definitions for a model that
must run the kernel or fail to load (benchmarks, so a missing library cannot pass for the kernel).
ORT format: ``optimize.ort_format.to_ort_format(..., custom_op_library=build_custom_ops())`` keeps the node
as the custom op (the function is not stored in the .ort) and lists ``edgecomp;1;MoEFeedForward`` in the
required-operators config; the pip ORT runs that .ort with the library registered and refuses it without.
Converted without the library, the .ort holds the inlined standard-op body instead (portable, no kernel).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..cbuild import COMPILERS, compile_cached, host_machine
from ..errors import EdgecompError
from ..paths import cache_dir

SOURCE = Path(__file__).with_name("moe_ffn.c")
LIBRARY_NAME = "libedgecomp_ops.so"
DOMAIN = "edgecomp"
OP_TYPE = "MoEFeedForward"
OPSET = 1
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
# aarch64: SDOT (vdotq_s32) is ARMv8.2's optional dotprod extension; every core edgecomp targets has it
# (Cortex-A55/A76/A78/X1, Neoverse N1), older ones (A53, A72) would fault on the first int8 node.
FLAGS = {
    "x86_64": ["-O3"],
    "aarch64": ["-O3", "-march=armv8.2-a+dotprod"],
}
# no errno / trap semantics for float math: lets the activation loops vectorize (selects instead of branches);
# no reassociation (not -ffast-math), so the float path sums in its written order
COMMON_FLAGS = ["-std=gnu11", "-Wall", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math"]


def build_custom_ops(machine: str | None = None, force: bool = False) -> Path:
    """The custom-op library for ``machine`` (default: this host), compiled once per source and flags into
    ``cache_dir()/kernels``. A missing compiler is one line naming the package that provides it."""
    machine = machine or host_machine()
    if machine not in FLAGS:
        raise EdgecompError(f"no compiler known to build edgecomp's kernels for {machine!r}",
                            f"build for one of {sorted(FLAGS)}")
    return compile_cached(SOURCE, LIBRARY_NAME, machine, [*FLAGS[machine], *COMMON_FLAGS, "-lm"],
                          cache_dir() / "kernels", "edgecomp's custom-op library", force)


# --------------------------------------------------------------------------------------------------
# graphs


def uses_edgecomp_ops(path: Path) -> bool:
    """Whether a graph file (.onnx protobuf or .ort flatbuffer) has an ``edgecomp.MoEFeedForward`` node, which
    the custom-op library runs (with or without a local-function fallback beside it: ORT prefers the kernel).
    A byte scan first (both formats store op types as plain strings), so a graph without it is not parsed."""
    import mmap

    path = Path(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m.find(OP_TYPE.encode()) < 0 or m.find(DOMAIN.encode()) < 0:
                return False
    if path.suffix == ".ort":
        # a flatbuffer string is its u32 length, the bytes and a NUL: the node's op type exactly (inlined
        # fallback nodes are named "_inlfunc_MoEFeedForward_...", which this does not match)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(struct.pack("<I", len(OP_TYPE)) + OP_TYPE.encode() + b"\0") >= 0
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node)


def kernel_variant(model):
    """The form of ``model`` in which ONNX Runtime runs the registered kernel: the model itself (ORT prefers a
    registered kernel over a local function of the same name, see the module docstring), copied, with the
    ``edgecomp`` opset imported."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET))
    return out


def strip_fallback(model):
    """``model`` without its local ``edgecomp`` function definitions: it runs the kernel or does not load."""
    out = kernel_variant(model)
    keep = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(keep)
    return out


INPUTS = ("X", "scores", "W1", "S1", "B1", "W2", "S2", "B2")


def moe_node(inputs: list[str], output: str, threshold: float = 0.0, activation: str = "gelu", name: str | None = None):
    """An ``edgecomp.MoEFeedForward`` NodeProto over ``inputs`` (the 8 tensor names in INPUTS' order)."""
    from onnx import helper

    if len(inputs) != len(INPUTS):
        raise EdgecompError(f"MoEFeedForward takes {len(INPUTS)} inputs ({', '.join(INPUTS)}), got {len(inputs)}",
                            "pass X, scores, W1, S1, B1, W2, S2, B2")
    if activation not in ACTIVATIONS or not 0.0 <= threshold <= 1.0:
        raise EdgecompError(f"MoEFeedForward(threshold={threshold}, activation={activation!r}) is outside the contract",
                            f"use a threshold in [0, 1] and one of {', '.join(ACTIVATIONS)}")
    return helper.make_node(OP_TYPE, list(inputs), [output], name=name, domain=DOMAIN, threshold=float(threshold),
                            activation=activation)


def moe_function_proto(activation: str = "gelu", opset: int = 17):
    """``edgecomp.MoEFeedForward`` as an ONNX function of standard ops (the contract, computed densely:
    every expert's hidden units are computed and the unselected experts' are zeroed by the mask), the
    portable fallback of the kernel. The function has the attributes ``threshold`` (read by reference)
    and ``activation``; its body implements ``activation`` as given here (a function body cannot branch
    on a string attribute), so a model carries one function per activation it uses. ``opset``: the
    ai.onnx version of the body (must equal the model's); every op used is the same from opset 13 on.
    Cost, measured (scripts/bench_moe_kernel.py): ORT constant-folds the dequantized weights to fp32 and
    runs every expert, so the fallback costs what the dense fp32 layer costs (2.6x the int8 layer's ARM
    instructions, 4x its weight memory at run time); it is for portability, not speed."""
    import onnx
    from onnx import TensorProto, helper

    if activation not in ACTIVATIONS:
        raise EdgecompError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}",
                            "use gelu (exact erf), gelu_tanh or relu")
    nodes = []

    def node(op, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]

    def const(name, value, dtype=np.int64):
        return node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))

    tau = helper.make_node("Constant", [], ["tau"])
    tau.attribute.append(helper.make_attribute_ref("value_float", onnx.AttributeProto.FLOAT, ref_attr_name="threshold"))
    nodes.append(tau)
    one, minus1, zero1 = const("one", [1]), const("minus1", [-1]), const("zero1", [0])
    # selection: scores >= tau * max(scores) per token (TopK(k=1) is ReduceMax without the opset-18 split)
    node("TopK", ["scores", one], ["top", "top_idx"], axis=-1)
    cut = node("Mul", ["top", "tau"], ["cut"])
    mask = node("Cast", [node("GreaterOrEqual", ["scores", cut], ["sel"])], ["mask"], to=TensorProto.FLOAT)
    # shapes: [E, D, H] from W1; the leading dims of X
    w1_shape = node("Shape", ["W1"], ["w1_shape"])
    ed = node("Slice", [w1_shape, zero1, const("two", [2])], ["ED"])
    h = node("Slice", [w1_shape, const("two_", [2]), const("three", [3])], ["H"])
    e_times_d = node("ReduceProd", [ed], ["E_D"], keepdims=1)
    lead = node("Slice", [node("Shape", ["X"], ["x_shape"]), zero1, minus1], ["lead"])
    # dequantized weights as [H, E*D] and [E*D, H] (Cast is a no-op for float weights)
    w1 = node("Mul", [node("Cast", ["W1"], ["w1_f"], to=TensorProto.FLOAT),
                      node("Unsqueeze", ["S1", minus1], ["s1_u"])], ["w1_dq"])
    w1 = node("Transpose", [node("Reshape", [w1, node("Concat", [e_times_d, h], ["ed_h"], axis=0)], ["w1_2d"])],
              ["w1_t"], perm=[1, 0])
    w2 = node("Mul", [node("Cast", ["W2"], ["w2_f"], to=TensorProto.FLOAT),
                      node("Unsqueeze", ["S2", minus1], ["s2_u"])], ["w2_dq"])  # [E, H, D]
    w2 = node("Reshape", [node("Transpose", [w2], ["w2_t"], perm=[0, 2, 1]), "ed_h"], ["w2_2d"])
    b1 = node("Reshape", ["B1", e_times_d], ["b1_flat"])
    pre = node("Add", [node("MatMul", ["X", w1], ["xw1"]), b1], ["pre"])
    if activation == "relu":
        act = node("Relu", [pre], ["act"])
    elif activation == "gelu":
        half = const("half", 0.5, np.float32)
        erf = node("Erf", [node("Mul", [pre, const("rsqrt2", 0.70710678118654752, np.float32)], ["pre_s"])], ["erf"])
        act = node("Mul", [node("Mul", [pre, half], ["pre_h"]),
                           node("Add", [erf, const("one_f", 1.0, np.float32)], ["erf1"])], ["act"])
    else:
        cube = node("Mul", [node("Mul", [pre, pre], ["pre2"]), pre], ["pre3"])
        inner = node("Mul", [node("Add", [pre, node("Mul", [cube, const("c", 0.044715, np.float32)], ["pre3c"])], ["u0"]),
                             const("k", 0.7978845608028654, np.float32)], ["u"])
        act = node("Mul", [node("Mul", [pre, const("half", 0.5, np.float32)], ["pre_h"]),
                           node("Add", [node("Tanh", [inner], ["th"]), const("one_f", 1.0, np.float32)], ["th1"])], ["act"])
    # [..., E, D] * mask[..., E, 1] -> [..., E*D]
    act = node("Reshape", [act, node("Concat", [lead, ed], ["lead_ed"], axis=0)], ["act_e"])
    act = node("Mul", [act, node("Unsqueeze", [mask, minus1], ["mask_u"])], ["act_m"])
    act = node("Reshape", [act, node("Concat", [lead, e_times_d], ["lead_flat"], axis=0)], ["act_flat"])
    node("Add", [node("MatMul", [act, w2], ["y0"]), "B2"], ["Y"])
    return helper.make_function(
        DOMAIN, OP_TYPE, list(INPUTS), ["Y"], nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=["activation"],
        # a default, so a node without `threshold` is dense as in the kernel (FunctionProto.attribute_proto, IR 9)
        attribute_protos=[helper.make_attribute("threshold", 0.0)],
        doc_string=f"edgecomp.MoEFeedForward ({activation}): standard-op fallback of the custom kernel",
    )


def moe_reference(x, scores, w1, s1, b1, w2, s2, b2, threshold: float = 0.0, activation: str = "gelu",
                  quantize_activations: bool = False) -> np.ndarray:
    """The contract in numpy (float64 inside). ``quantize_activations``: also round X_t and each (token,
    expert) hidden vector to symmetric int8 per row as the kernel's int8 path does (for int8 weights)."""
    from scipy.special import erf

    x = np.asarray(x, np.float64)
    lead, hdim = x.shape[:-1], x.shape[-1]
    xt = x.reshape(-1, hdim)
    sc = np.asarray(scores, np.float64).reshape(xt.shape[0], -1)
    w1f = np.asarray(w1, np.float64) * np.asarray(s1, np.float64)[..., None]
    w2f = np.asarray(w2, np.float64) * np.asarray(s2, np.float64)[..., None]
    b1 = np.asarray(b1, np.float64)
    y = np.tile(np.asarray(b2, np.float64), (xt.shape[0], 1))
    sel = sc >= np.float32(threshold) * sc.max(axis=1, keepdims=True)

    def q(rows):
        amax = np.abs(rows).max(axis=-1, keepdims=True)
        scale = np.where(amax > 0, amax / 127.0, 0.0)
        return np.clip(np.rint(rows / np.where(scale > 0, scale, 1.0)), -127, 127) * scale

    if quantize_activations:
        xt = q(xt)
    for e in range(w1f.shape[0]):
        tok = np.nonzero(sel[:, e])[0]
        if not len(tok):
            continue
        hpre = xt[tok] @ w1f[e].T + b1[e]
        if activation == "relu":
            hid = np.maximum(hpre, 0)
        elif activation == "gelu":
            hid = 0.5 * hpre * (1 + erf(hpre / np.sqrt(2)))
        else:
            hid = 0.5 * hpre * (1 + np.tanh(np.sqrt(2 / np.pi) * (hpre + 0.044715 * hpre**3)))
        if quantize_activations:
            hid = q(hid)
        y[tok] += hid @ w2f[e].T
    return y.reshape(*lead, hdim).astype(np.float32)


def quantize_experts(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-row int8 of expert weights [E, rows, k]: (int8 weights, float scales [E, rows])."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=-1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[..., None]), -127, 127).astype(np.int8)
    return q, scale


def main() -> None:
    """``python -m edgecomp.kernels [--machine x86_64|aarch64|all] [--force]``: build the custom-op library
    and print its path(s)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgecomp.kernels", description=main.__doc__)
    ap.add_argument("--machine", default=None, help=f"{', '.join(sorted(COMPILERS))} or all (default: this host)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cached library is current")
    a = ap.parse_args()
    machines = sorted(COMPILERS) if a.machine == "all" else [a.machine]
    try:
        for m in machines:
            print(build_custom_ops(m, force=a.force))
    except EdgecompError as e:
        raise SystemExit(f"error: {e}")


def kernel_info(library: Path) -> str:
    """What the library at ``library`` compiled its int8 path to (its exported EdgecompKernelInfo)."""
    import ctypes

    fn = ctypes.CDLL(str(library)).EdgecompKernelInfo
    fn.restype = ctypes.c_char_p
    return fn().decode()
