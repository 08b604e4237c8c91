"""Device checks a target asks for (``checks = [...]`` in edgecomp/data/targets/*.toml), run on each artifact.

- ``arm64``: the artifact on the aarch64 build of its runtime under qemu-aarch64 (parity with x86,
  guest instructions per inference, guest-only peak RSS); recorded as the record's ``arm64`` block.
  Without the emulation environment the block says how to set it up instead of failing the export.
- ``ort-mobile``: ONNX Runtime's mobile usability check (NNAPI / CoreML partitioning) on .onnx, and the
  reduced-build operator summary on .ort.
- ``xnnpack``: how much of a .tflite LiteRT's XNNPACK delegate takes, in how many partitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgecompError
from ..registry import Registry

# name -> fn(path, record, feeds, cpu, reference=None) -> None (updates record in place); reference() gives
# the PyTorch fp32 outputs on feeds
CHECKS: Registry[Callable[[Path, dict, dict, str], None]] = Registry("device check")

# Parity across ISAs: fp32 kernels agree to ~2e-6; int8 graphs do not agree element by element because a
# 2e-6 LayerNorm difference can move a dynamic quantization scale and flip one uint8 step, which the exact
# integer matmuls then carry through every layer (traced node by node). Both sides stay equally close to
# fp32, so quantized artifacts are held to the cosine of their outputs instead. And x86 is not always the
# better side: hosts without VNNI run ORT's u8 x s8 MatMul with VPMADDUBSW, whose pairwise int16 sums
# saturate on large activations, which ARM's kernels do not. So where the two disagree, each is compared
# with the fp32 reference, and aarch64 passes when it is no further from it than x86 is.
# An artifact with expert routing (edgecomp.MoEFeedForward) decides per token which experts run; a gate score
# at the threshold lands on either side under either ISA's int8 rounding, and that token then differs a lot
# on both sides of the fp32 reference. Which tokens flip is chance, so its worst token says nothing about
# the ISA: such an artifact is held to its mean cosine against the fp32 reference instead.
FP32_MAX_ABS_DIFF = 1e-4
QUANTIZED_COS_MIN = 0.98
REFERENCE_COS_SLACK = 0.005


def parity_ok(block: dict, precision: str, routed: bool = False) -> bool:
    if precision == "fp32":
        return block["max_abs_diff"] < FP32_MAX_ABS_DIFF
    if block["cos_min_vs_x86"] >= QUANTIZED_COS_MIN:
        return True
    ref = block.get("cos_mean_vs_reference" if routed else "cos_min_vs_reference")
    return bool(ref) and ref["arm64"] >= ref["x86"] - REFERENCE_COS_SLACK


@CHECKS.register("arm64")
def arm64_check(path: Path, record: dict, feeds: dict, cpu: str, reference: Callable[[], dict] | None = None) -> None:
    from ..kernels import uses_edgecomp_ops
    from ..runtime import open_artifact
    from . import arm64
    from .native import measure_arm64_native

    if not arm64.env_present():
        record["arm64"] = {"skipped": f"aarch64 emulation environment not set up: {arm64.SETUP_HINT}"}
        return
    feeds = {k: v for k, v in feeds.items() if k in record["inputs"]}
    x86 = open_artifact(path, threads=1).run(feeds)
    native = measure_arm64_native(path, record, feeds, x86, cpu)  # the same run without Python in the guest
    if path.suffix == ".tflite":  # the guest picks the bucket signature whose shapes equal the feeds
        from .native import tflite_feeds

        feeds = tflite_feeds(path, feeds)  # + zeros for adapter slot inputs (same shape in every signature)
    block = arm64.arm64_block(path, feeds, x86, cpu=cpu, reference_outputs=reference() if reference else None)
    routed = uses_edgecomp_ops(path)
    block["parity_ok"] = parity_ok(block, record["precision"], routed=routed)
    block["native"] = native
    record["arm64"] = block
    if not block["parity_ok"]:
        judged, what = ("cos_mean_vs_reference", "mean") if routed else ("cos_min_vs_reference", "worst")
        raise EdgecompError(
            f"{path.name} gives different outputs on aarch64 (max abs diff {block['max_abs_diff']:.2e}, "
            f"worst cosine {block['cos_min_vs_x86']:.4f} vs x86"
            + (f"; {what} cosine vs fp32: aarch64 {block[judged]['arm64']:.4f}, x86 {block[judged]['x86']:.4f}"
               if block.get(judged) else "") + ")",
            "report this artifact; export an fp32 variant for this target meanwhile",
        )


@CHECKS.register("ort-mobile")
def ort_mobile(path: Path, record: dict, feeds: dict, cpu: str, reference: Callable[[], dict] | None = None) -> None:
    from .mobile import ort_mobile_check, summarize_required_ops

    if path.suffix == ".onnx":
        record["mobile_check"] = ort_mobile_check(path)
    elif path.suffix == ".ort" and record.get("required_operators_config"):
        record["required_operators"] = summarize_required_ops(path.parent / record["required_operators_config"])


@CHECKS.register("xnnpack")
def xnnpack(path: Path, record: dict, feeds: dict, cpu: str, reference: Callable[[], dict] | None = None) -> None:
    from .mobile import tflite_xnnpack_partitioning

    if path.suffix == ".tflite":
        record["xnnpack"] = tflite_xnnpack_partitioning(path)


def run_checks(names, path: Path, record: dict, feeds: dict, cpu: str, log=lambda s: None,
               reference: Callable[[], dict] | None = None) -> None:
    """``reference()``: the PyTorch fp32 outputs on ``feeds``, computed only by a check that compares with them."""
    for name in names:
        log(f"check: {name} on {path.name}")
        CHECKS.get(name)(path, record, feeds, cpu, reference=reference)
