"""LoRA-XS in ONNX Runtime's own multi-LoRA form.

The base graph carries, per adapted Linear, the frozen factors B^T [in, r] and A^T [r, out] as plain
initializers (shared by every task: they come from the base's SVD, modules.svd_factors) and R [r, r] as an
*overridable initializer* (a graph input with a zero default), spliced next to the Linear's MatMul:
``y = W x  +  ((x @ B^T) @ R) @ A^T``. The splice works on the finished artifact (after quantization), so
W may be int8/int4 while the adapter path stays float; it adds the delta after the Linear's bias Add, so
ORT still fuses the quantized MatMul with its bias. A task head, ``adapter_logits = mean_pool(
last_hidden_state) @ H + h``, is overridable the same way ([hidden, labels] with a zero default of one label).
With no adapter active every R is zero and the graph computes the base model exactly.

An adapter is an ``.onnx_adapter`` file (onnxruntime.AdapterFormat) holding only those overridable tensors;
at run time ``onnxruntime.LoraAdapter`` loads (memory-maps) it and ``RunOptions.add_active_adapter``
activates it for one run, so one session serves every task. The .tflite takes the same tensors as signature
inputs (adapt/litert.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import EdgecompError

HEAD_W, HEAD_B, LOGITS = "adapter_head.weight", "adapter_head.bias", "adapter_logits"
LABELS_DIM = "adapter_labels"
SUFFIX = ".onnx_adapter"


def r_name(module: str) -> str:
    return f"{module}.lora_r"


def linear_io(fp32_onnx: Path, linears: list[tuple[str, object]]) -> dict[str, tuple[str, str]]:
    """module path -> (input tensor, output tensor) of its MatMul in the fp32 graph, found by the module's
    path in the node names and checked against the Linear's weight (the initializer must be W^T)."""
    import onnx
    from onnx import numpy_helper

    from ..archs.base import _path_regex

    m = onnx.load(str(fp32_onnx))
    inits = {i.name: i for i in m.graph.initializer}
    io = {}
    for name, lin in linears:
        pat = re.compile(_path_regex(name))
        w = lin.weight.detach().float().numpy().T
        hits = [n for n in m.graph.node if n.op_type == "MatMul" and pat.search(n.name) and n.input[1] in inits]
        hits = [n for n in hits if tuple(inits[n.input[1]].dims) == w.shape
                and np.allclose(numpy_helper.to_array(inits[n.input[1]]), w, atol=1e-6)]
        if len(hits) != 1:
            raise EdgecompError(f"{name}'s MatMul is not found once in the exported graph ({len(hits)} matches)",
                                "export without --adapters for this model, and report its architecture to edgecomp")
        y = hits[0].output[0]
        # splice after the bias Add: ORT then still fuses MatMul(Integer) + bias into one kernel
        users = [n for n in m.graph.node if y in n.input]
        if (len(users) == 1 and users[0].op_type == "Add" and lin.bias is not None
                and any(i in inits and tuple(inits[i].dims) == (lin.out_features,) for i in users[0].input)):
            y = users[0].output[0]
        io[name] = (hits[0].input[0], y)
    return io


def splice_slots(path: Path, io: dict[str, tuple[str, str]], factors: dict[str, tuple[np.ndarray, np.ndarray]],
                 hidden: int, dst: Path | None = None) -> dict:
    """Add the adapter slots to the ONNX graph at ``path`` (in place, or into ``dst``); the bytes they add."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    producers = {o: n for n in g.node for o in n.output}
    missing = [name for name, (x, y) in io.items() if y not in producers]
    if missing:
        raise EdgecompError(f"the artifact {Path(path).name} lost {missing[0]}'s output tensor while it was quantized",
                            "export the adapter slots on an fp32 or int8 artifact")
    added = 0
    new_nodes = []
    for name, (x, y) in io.items():
        a, b = factors[name]  # A [out, r], B [r, in]
        r = a.shape[1]
        bt, at = f"{name}.lora_b_t", f"{name}.lora_a_t"
        base_y = f"{y}/base"
        producers[y].output[list(producers[y].output).index(y)] = base_y
        g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(b.T, np.float32), bt),
                              numpy_helper.from_array(np.ascontiguousarray(a.T, np.float32), at),
                              numpy_helper.from_array(np.zeros((r, r), np.float32), r_name(name))])
        g.input.append(helper.make_tensor_value_info(r_name(name), TensorProto.FLOAT, [r, r]))
        added += 4 * (b.size + a.size + r * r)
        p = f"/adapter/{name}"
        new_nodes += [helper.make_node("MatMul", [x, bt], [f"{p}/xb"], name=f"{p}/MatMul_b"),
                      helper.make_node("MatMul", [f"{p}/xb", r_name(name)], [f"{p}/xr"], name=f"{p}/MatMul_r"),
                      helper.make_node("MatMul", [f"{p}/xr", at], [f"{p}/delta"], name=f"{p}/MatMul_a"),
                      helper.make_node("Add", [base_y, f"{p}/delta"], [y], name=f"{p}/Add")]
    # the task head over the mean-pooled last hidden state
    g.initializer.extend([numpy_helper.from_array(np.zeros((hidden, 1), np.float32), HEAD_W),
                          numpy_helper.from_array(np.zeros((1,), np.float32), HEAD_B),
                          numpy_helper.from_array(np.array([-1], np.int64), "/adapter/head/axis_last"),
                          numpy_helper.from_array(np.array([1], np.int64), "/adapter/head/axis_seq"),
                          numpy_helper.from_array(np.array(1e-9, np.float32), "/adapter/head/eps")])
    g.input.extend([helper.make_tensor_value_info(HEAD_W, TensorProto.FLOAT, [hidden, LABELS_DIM]),
                    helper.make_tensor_value_info(HEAD_B, TensorProto.FLOAT, [LABELS_DIM])])
    added += 4 * (hidden + 1)
    h = "/adapter/head"
    new_nodes += [
        helper.make_node("Cast", ["attention_mask"], [f"{h}/mask"], to=TensorProto.FLOAT, name=f"{h}/Cast"),
        helper.make_node("Unsqueeze", [f"{h}/mask", f"{h}/axis_last"], [f"{h}/mask3"], name=f"{h}/Unsqueeze"),
        helper.make_node("Mul", ["last_hidden_state", f"{h}/mask3"], [f"{h}/masked"], name=f"{h}/Mul"),
        helper.make_node("ReduceSum", [f"{h}/masked", f"{h}/axis_seq"], [f"{h}/sum"], keepdims=0, name=f"{h}/Sum"),
        helper.make_node("ReduceSum", [f"{h}/mask3", f"{h}/axis_seq"], [f"{h}/count"], keepdims=0, name=f"{h}/Count"),
        helper.make_node("Max", [f"{h}/count", f"{h}/eps"], [f"{h}/count_safe"], name=f"{h}/Max"),
        helper.make_node("Div", [f"{h}/sum", f"{h}/count_safe"], [f"{h}/pooled"], name=f"{h}/Div"),
        helper.make_node("MatMul", [f"{h}/pooled", HEAD_W], [f"{h}/xw"], name=f"{h}/MatMul"),
        helper.make_node("Add", [f"{h}/xw", HEAD_B], [LOGITS], name=f"{h}/Add")]
    g.output.append(helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch_size", LABELS_DIM]))
    g.node.extend(new_nodes)
    _toposort(g)
    out = Path(dst or path)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(m, str(tmp))
    tmp.replace(out)
    return {"modules": len(io), "rank": int(next(iter(factors.values()))[0].shape[1]) if factors else None,
            "slot_bytes": added}


def _toposort(g) -> None:
    """Nodes in an order where every input is produced first (the splice appended nodes that feed old ones)."""
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or an input from outside: keep the remaining order
            ordered += rest
            break
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def adapter_tensors(module_state: dict, head_weight=None, head_bias=None) -> dict[str, np.ndarray]:
    """What an .onnx_adapter holds: R per module (named as the base graph's overridable initializers) and the
    head in the graph's orientation ([hidden, labels])."""
    out = {}
    for key, value in module_state.items():
        module, tensor = key.rsplit(".", 1)
        if tensor != "lora_r":
            raise EdgecompError(f"the adapter holds {tensor} tensors, which the ONNX slots do not take",
                                "export LoRA-XS or head-only adapters (plain LoRA and full fine-tunes are PyTorch-only)")
        out[r_name(module)] = np.ascontiguousarray(value.detach().float().numpy())
    if head_weight is not None:
        out[HEAD_W] = np.ascontiguousarray(head_weight.detach().float().numpy().T)
        out[HEAD_B] = np.ascontiguousarray(head_bias.detach().float().numpy())
    return out


def write_onnx_adapter(path: Path, tensors: dict[str, np.ndarray], adapter_version: int = 1, model_version: int = 1) -> int:
    """An .onnx_adapter file (ONNX Runtime's flatbuffer adapter format); its size in bytes."""
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(adapter_version)
    fmt.set_model_version(model_version)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in tensors.items()})
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fmt.export_adapter(str(tmp))
    tmp.replace(path)
    return path.stat().st_size


def strip_slots(src: Path, dst: Path) -> None:
    """The base graph without its adapter slots (what an export without --adapters holds): the benchmark's
    plain one-model baseline."""
    import onnx

    m = onnx.load(str(src))
    g = m.graph
    slot_inits = {i.name for i in g.initializer if i.name.endswith((".lora_a_t", ".lora_b_t", ".lora_r"))
                  or i.name in (HEAD_W, HEAD_B) or i.name.startswith("/adapter/")}
    keep = [n for n in g.node if not n.name.startswith("/adapter/")]
    for n in keep:
        for i, o in enumerate(n.output):
            if o.endswith("/base"):
                n.output[i] = o[: -len("/base")]
    del g.node[:]
    g.node.extend(keep)
    for field, drop in ((g.initializer, slot_inits), (g.input, slot_inits), (g.output, {LOGITS})):
        kept = [x for x in field if x.name not in drop]
        del field[:]
        field.extend(kept)
    onnx.save(m, str(dst))
