"""Android checks that need no device: what a phone's accelerators could take, and what a reduced build needs.

- ``ort_mobile_check``: ONNX Runtime's own mobile usability analysis
  (``python -m onnxruntime.tools.check_onnx_model_mobile_usability``), called through its functions so the
  numbers land in the manifest instead of a log: per execution provider (NNAPI on Android, CoreML on iOS),
  how many nodes it could take, in how many partitions, which operators it lacks, and its verdict, both
  for the model as it is (dynamic shapes) and if its shapes were made fixed. ORT's tooling has no XNNPACK
  check (and the ORT wheels ship no XNNPACK EP); XNNPACK is measured on the .tflite instead:
- ``tflite_xnnpack_partitioning``: how many nodes LiteRT's default XNNPACK delegate actually took, in how
  many partitions (read from the interpreter after it applied the delegate).
- ``summarize_required_ops``: the ``*.required_operators.config`` that
  ``onnxruntime.tools.convert_onnx_models_to_ort`` writes next to a .ort, i.e. the operator kernels a
  reduced ORT build for this model must include.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..errors import EdgecompError

# (key in the result, name ORT's tool prints, how the tool checks it)
_EPS = (
    ("nnapi", "NNAPI", None),
    ("coreml_neuralnetwork", "CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
    ("coreml_mlprogram", "CoreML MLProgram", "coreml_supported_mlprogram_ops.md"),
)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _partitioning(info, ep_name: str) -> dict:
    """PartitioningInfo -> dict, plus the tool's own one-line verdict (the last line it logs)."""
    capture = _Capture()
    logger = logging.getLogger(f"edgecomp.ort_mobile_check.{ep_name}")
    logger.handlers = [capture]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    info.print_analysis(logger, ep_name)
    return {
        "nodes": info.num_nodes,
        "nodes_on_accelerator": info.num_supported_nodes,
        "partitions": info.num_partitions,
        "partition_sizes": [len(g) for g in info.supported_groups],
        "unsupported_ops": sorted(info.unsupported_ops),
        "nodes_unsupported_due_to_op": info.nodes_unsupported_due_to_op,
        "nodes_unsupported_due_to_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
        "suitability": info.suitability().name,  # YES / MAYBE / NO, ORT's thresholds
        "verdict": capture.lines[-1] if capture.lines else "",
    }


def ort_mobile_check(onnx_path: Path) -> dict:
    """ORT's mobile usability check of an .onnx, as a dict for the manifest and the android report."""
    import onnxruntime
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file() or onnx_path.suffix != ".onnx":
        raise EdgecompError(f"{onnx_path} is not an .onnx file", "pass the .onnx artifact (the .ort is converted from it)")
    with tempfile.TemporaryDirectory(prefix="edgecomp-mobile-") as tmp:
        # like the tool (and the .ort conversion): check the graph after ORT's basic optimizations
        optimized = Path(tmp) / onnx_path.name
        try:
            optimize_model(onnx_path, optimized, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise EdgecompError(f"ONNX Runtime cannot analyse {onnx_path.name} ({first})",
                                "the file is corrupt or truncated: re-run `edgecomp export` to rebuild it") from None
        dynamic_inputs, _ = uc.check_shapes(model.graph)
        eps = {}
        for key, name, md in _EPS:
            def check(fixed, md=md):
                if md is None:
                    return uc.check_nnapi_partitions(model, require_fixed_input_sizes=fixed)
                return uc.check_coreml_partitions(model, fixed, md)

            eps[key] = {"ep": name, "as_is": _partitioning(check(True), name)}
            if dynamic_inputs:  # what making the shapes fixed (make_dynamic_shape_fixed) would give
                eps[key]["fixed_shapes"] = _partitioning(check(False), name)

    # ORT's rule: an accelerator EP is worth trying on a device unless it says NO
    as_is = [v["ep"] for v in eps.values() if v["as_is"]["suitability"] != "NO"]
    if_fixed = [v["ep"] for v in eps.values()
                if v["as_is"]["suitability"] == "NO" and v.get("fixed_shapes", {}).get("suitability", "NO") != "NO"]
    if as_is:
        recommendation = f"{' and '.join(as_is)} may help: compare with the CPU EP on a device"
    elif if_fixed:
        recommendation = (f"use the CPU EP as exported; {' and '.join(if_fixed)} may help once the input shapes are "
                          "fixed (onnxruntime.tools.make_dynamic_shape_fixed)")
    else:
        recommendation = "use the CPU EP: no accelerator EP takes enough of this model in few enough partitions"
    return {
        "tool": "onnxruntime.tools.check_onnx_model_mobile_usability",
        "onnxruntime": onnxruntime.__version__,
        "dynamic_inputs": [i.name for i in dynamic_inputs],
        "eps": eps,
        "recommendation": recommendation,
    }


def tflite_xnnpack_partitioning(tflite_path: Path) -> dict:
    """Nodes of the .tflite that LiteRT's default XNNPACK delegate took over, and in how many partitions.

    Read from the interpreter after it applied the delegate: each partition becomes one DELEGATE node
    appended to the graph; the nodes it replaced are those its outputs depend on, back to its inputs.
    The Python API lists only subgraph 0 (the first signature); every seq bucket has the same graph.
    The delegate's operator support is the same code on x86 and aarch64.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path), num_threads=1)
    interpreter.allocate_tensors()  # applies the default delegate
    ops = interpreter._get_ops_details()  # no public API lists the nodes
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): op["index"] for op in original for t in op["outputs"]}
    by_index = {op["index"]: op for op in original}
    taken: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        while todo:
            node = producer.get(todo.pop())
            if node is None or node in taken:
                continue
            taken.add(node)
            todo += [int(t) for t in by_index[node]["inputs"] if int(t) not in boundary and t >= 0]
    on_cpu = sorted({by_index[i]["op_name"] for i in by_index if i not in taken})
    return {
        "delegate": "XNNPACK",
        "nodes": len(original),
        "nodes_on_xnnpack": len(taken),
        "partitions": len(delegates),
        "ops_left_on_cpu": on_cpu,
    }


def summarize_required_ops(config_path: Path) -> dict:
    """The operators a reduced ORT build needs for this model, from ``*.required_operators.config``.

    Parsed with ORT's own parser (``onnxruntime.tools.reduced_build_config_parser``); a config written
    with type reduction parses too.
    """
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    config_path = Path(config_path)
    if not config_path.is_file():
        raise EdgecompError(f"required-operators config {config_path} does not exist",
                            "convert the model with `python -m onnxruntime.tools.convert_onnx_models_to_ort`")
    text = config_path.read_text()
    type_reduction = "{" in text
    try:
        required, _ = parse_config(str(config_path), enable_type_reduction=type_reduction)
    except Exception as e:
        raise EdgecompError(f"{config_path.name} is not a valid ORT operator config ({e})",
                            "regenerate it with onnxruntime.tools.convert_onnx_models_to_ort") from None
    by_domain = {domain: {int(opset): sorted(ops) for opset, ops in sorted(opsets.items())}
                 for domain, opsets in sorted(required.items())}
    operators = sorted({f"{domain}:{op}" for domain, opsets in required.items() for ops in opsets.values() for op in ops})
    return {
        "config": config_path.name,
        "n_operators": len(operators),
        "operators": operators,
        "by_domain": by_domain,
        "type_reduction": type_reduction,
    }
