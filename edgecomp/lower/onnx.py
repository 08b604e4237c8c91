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
from .wrap import GraphHead, PositionalModel


def _optimum_knows(model, task: str) -> bool:
    try:
        from optimum.exporters.tasks import TasksManager

        TasksManager.get_exporter_config_constructor("onnx", model=model, task=task, library_name="transformers")
        return True
    except Exception:
        return False


def export_model_onnx(model, task, out_path: Path, opset: int, head: GraphHead | None = None) -> dict:
    """Export a (possibly compressed) HF model for `task`, with the task's post-processing ``head`` as graph
    ops; returns {"exporter", "inputs", "outputs"}."""
    out_path = Path(out_path)
    from .moe import has_moe_layers

    # optimum's exporter loads the raw graph in ONNX Runtime (its dynamic-axes fix, not optional through
    # onnx_export_from_model), which cannot load edgecomp's own op before its fallback function is attached
    # (lower/moe.finish_moe_export): a model with MoE layers goes through torch.onnx
    if _optimum_knows(model, task.optimum_task) and not has_moe_layers(model):
        from optimum.exporters.onnx import onnx_export_from_model

        with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
            logging.getLogger("optimum").setLevel(logging.ERROR)
            # Validation is ours (every artifact is compared with PyTorch on real text), not optimum's.
            onnx_export_from_model(model, tmp, task=task.optimum_task, opset=opset, do_validation=False)
            produced = Path(tmp) / "model.onnx"
            if not produced.exists():
                raise EdgecompError("optimum's exporter wrote no model.onnx", "report this model's architecture to edgecomp")
            _move_onnx(produced, out_path, head, opset)
        exporter = "optimum"
    else:
        _export_hf_with_torch(model, task, out_path, opset, head)
        exporter = "torch.onnx"
    import onnx

    m = onnx.load(str(out_path), load_external_data=False)
    return {
        "exporter": exporter,
        "inputs": [i.name for i in m.graph.input],
        "outputs": [o.name for o in m.graph.output],
    }


def _move_onnx(src: Path, dst: Path, head: GraphHead | None = None, opset: int = 18) -> None:
    """Move a model, folding external data (>2 GB models are out of scope here) into one file, with ``head``
    appended."""
    import onnx

    m = onnx.load(str(src))
    if head is not None:
        append_head(m, head, dst.parent, opset)
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, dst)


def append_head(model, head: GraphHead, work: Path, opset: int) -> None:
    """Splice the lowered ``head`` module into ``model`` (in place): its inputs are tensors the graph already
    has (an output such as last_hidden_state, an input such as attention_mask), its outputs become new graph
    outputs. The head's own tensors are prefixed so no name collides with the model's."""
    import onnx
    import torch
    from onnx.compose import add_prefix_graph

    values = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    missing = [n for n in head.inputs if n not in values]
    if missing:
        raise EdgecompError(f"the exported graph has no {', '.join(missing)} for the post-processing head",
                            "report this model's architecture to edgecomp")
    elem = {n: values[n].type.tensor_type.elem_type for n in head.inputs}
    dims = {n: [d.dim_value for d in values[n].type.tensor_type.shape.dim] for n in head.inputs}
    torch_dtype = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.INT64: torch.int64,
                   onnx.TensorProto.INT32: torch.int32}
    floats = {n for n in head.inputs if elem[n] == onnx.TensorProto.FLOAT}
    # [batch, sequence(, features)]: every axis dynamic but a float tensor's last one (hidden size, labels)
    example = tuple(torch.ones([*(2, 3)[: len(dims[n]) - (n in floats)], *([dims[n][-1] or 4] if n in floats else [])],
                               dtype=torch_dtype[elem[n]]) for n in head.inputs)
    axes = {n: dict(list({0: "batch_size", 1: "sequence_length"}.items())[: len(dims[n]) - (n in floats)])
            for n in head.inputs}
    axes.update({o: {0: "batch_size"} for o in head.outputs})
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        path = export_module_onnx(head.module.eval(), example, head.inputs, head.outputs, axes, Path(tmp) / "head.onnx", opset)
        graph = add_prefix_graph(onnx.load(str(path)).graph, "head/", rename_inputs=False, rename_outputs=False)
    model.graph.node.extend(graph.node)
    model.graph.initializer.extend(graph.initializer)
    model.graph.output.extend(graph.output)


def _export_hf_with_torch(model, task, out_path: Path, opset: int, head: GraphHead | None = None) -> None:
    import torch

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in model.forward.__code__.co_varnames]
    if getattr(model.config, "type_vocab_size", 0) in (0, None) and "token_type_ids" in names:
        names.remove("token_type_ids")
    outputs = [*task.output_names, *(head.outputs if head else ())]

    ex = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes.update({o: {0: "batch_size", 1: "sequence_length"} for o in outputs if o == "last_hidden_state"})
    axes.update({o: {0: "batch_size"} for o in outputs if o != "last_hidden_state"})
    export_module_onnx(PositionalModel(model, names, outputs, head).eval(), ex, names, outputs, axes, out_path, opset)


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
