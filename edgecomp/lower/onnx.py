"""PyTorch -> ONNX (fp32, standard ops, dynamic batch and sequence axes).

Architectures optimum knows go through optimum's exporter, so OUT also loads with
``optimum.onnxruntime.ORTModelFor*``; anything else goes through plain ``torch.onnx.export``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..errors import EdgecompError
from .wrap import PositionalModel


def _optimum_knows(model, task: str) -> bool:
    try:
        from optimum.exporters.tasks import TasksManager

        TasksManager.get_exporter_config_constructor("onnx", model=model, task=task, library_name="transformers")
        return True
    except Exception:
        return False


def export_model_onnx(model, task, out_path: Path, opset: int) -> dict:
    """Export a (possibly compressed) HF model for `task`; returns {"exporter", "inputs", "outputs"}."""
    out_path = Path(out_path)
    if _optimum_knows(model, task.optimum_task):
        from optimum.exporters.onnx import onnx_export_from_model

        with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
            logging.getLogger("optimum").setLevel(logging.ERROR)
            # Validation is ours (every artifact is compared with PyTorch on real text), not optimum's.
            onnx_export_from_model(model, tmp, task=task.optimum_task, opset=opset, do_validation=False)
            produced = Path(tmp) / "model.onnx"
            if not produced.exists():
                raise EdgecompError("optimum's exporter wrote no model.onnx", "report this model's architecture to edgecomp")
            _move_onnx(produced, out_path)
        exporter = "optimum"
    else:
        _export_hf_with_torch(model, task, out_path, opset)
        exporter = "torch.onnx"
    import onnx

    m = onnx.load(str(out_path), load_external_data=False)
    return {
        "exporter": exporter,
        "inputs": [i.name for i in m.graph.input],
        "outputs": [o.name for o in m.graph.output],
    }


def _move_onnx(src: Path, dst: Path) -> None:
    """Move a model, folding external data (>2 GB models are out of scope here) into one file."""
    import onnx

    m = onnx.load(str(src))
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, dst)


def _export_hf_with_torch(model, task, out_path: Path, opset: int) -> None:
    import torch

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in model.forward.__code__.co_varnames]
    if getattr(model.config, "type_vocab_size", 0) in (0, None) and "token_type_ids" in names:
        names.remove("token_type_ids")
    outputs = task.output_names

    ex = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes.update({o: {0: "batch_size", 1: "sequence_length"} for o in outputs if o == "last_hidden_state"})
    axes.update({o: {0: "batch_size"} for o in outputs if o != "last_hidden_state"})
    export_module_onnx(PositionalModel(model, names, outputs).eval(), ex, names, outputs, axes, out_path, opset)


def export_module_onnx(module, example_inputs: tuple, input_names, output_names, dynamic_axes: dict,
                       out_path: Path, opset: int = 18) -> Path:
    """Plain torch.onnx export of any module (stages, compressed blocks) to one self-contained file."""
    import torch

    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(
                module, example_inputs, str(tmp), input_names=list(input_names), output_names=list(output_names),
                dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
    except Exception as e:
        tmp.unlink(missing_ok=True)
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise EdgecompError(f"ONNX export failed: {first}",
                            "this layer type has no ONNX lowering yet; export without the recipe that introduced it") from None
    os.replace(tmp, out_path)
    return out_path
