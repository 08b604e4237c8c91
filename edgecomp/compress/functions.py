"""`--custom-ops` lowering: wrap each compressed module's subgraph as an ONNX local function in the
`edgecomp` domain (edgecomp.LowRankLinear, edgecomp.KroneckerLinear, edgecomp.FactorizedEmbedding,
edgecomp.KroneckerEmbedding, edgecomp.SharedDecoderLinear). The function bodies are the same standard ops
the decomposed graph has, so a runtime that knows the op can fuse it and any other one (onnxruntime
included) inlines it.

Run it last (after simplification and quantization): the quantizers do not look inside functions, and
the weights stay graph initializers passed to the function as inputs, so int8/int4 weights remain
quantized where they were. Compressed modules are found by their parameter names (`<module>.lowrank_u`,
`<module>.kron_a`, ...; kept through quantization as name prefixes), their nodes by the exporter's
name scope (`/encoder/layer.0/intermediate/dense/...`).
"""

from __future__ import annotations

import re

import onnx
from onnx import helper

DOMAIN = "edgecomp"
# parameter-name suffix -> op name (an embedding's kron_a is told apart by its Gather consumer)
MARKERS = {"lowrank_v": "LowRankLinear", "kron_b": "KroneckerLinear", "latent": "FactorizedEmbedding",
           "ae_latent_t": "SharedDecoderLinear", "ae_latent": "SharedDecoderLinear", "kron_a": None}


def scope_of(module_path: str) -> str:
    """encoder.layer.0.intermediate.dense -> /encoder/layer.0/intermediate/dense/ (TorchScript name scopes)."""
    out = []
    for part in module_path.split("."):
        if part.isdigit() and out:
            out[-1] += "." + part
        else:
            out.append(part)
    return "/" + "/".join(out) + "/"


def compressed_modules(model: onnx.ModelProto) -> dict[str, str]:
    """module path -> op name, from initializer names (also after quantization renames them)."""
    found: dict[str, str] = {}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, n.op_type)
    pat = re.compile(r"^(?:[A-Za-z_]+\.)??((?:[\w]+\.)*?[\w]+)\.(" + "|".join(sorted(MARKERS, key=len, reverse=True)) + r")(?:_|$)")
    for init in model.graph.initializer:
        m = pat.match(init.name)
        if not m:
            continue
        path, marker = m.group(1), m.group(2)
        op = MARKERS[marker]
        if marker == "kron_a":
            op = "KroneckerEmbedding" if consumers.get(init.name) in ("Gather", "GatherBlockQuantized") else None
        if op:
            found[path] = op
    return found


def _group(model: onnx.ModelProto, prefixes: list[str]) -> list[int]:
    return [i for i, n in enumerate(model.graph.node) if any(n.name.startswith(p) for p in prefixes)]


def _canonical(nodes, inputs, outputs) -> tuple:
    """A body signature independent of value names: instances with equal signatures share a function."""
    names = {v: f"i{k}" for k, v in enumerate(inputs)}
    sig = []
    for n in nodes:
        for o in n.output:
            names.setdefault(o, f"t{len(names)}")
        sig.append((n.op_type, n.domain, tuple(names.get(i, i) for i in n.input), tuple(names[o] for o in n.output),
                    tuple(a.SerializeToString() for a in n.attribute)))
    return tuple(sig), tuple(names[o] for o in outputs)


def _topo_sort(nodes: list, graph_inputs: set) -> list:
    produced_by = {o: k for k, n in enumerate(nodes) for o in n.output}
    order, done, visiting = [], set(), set()

    def visit(k):
        if k in done:
            return
        visiting.add(k)
        for i in nodes[k].input:
            p = produced_by.get(i)
            if p is not None and p not in done and p not in visiting:
                visit(p)
        visiting.discard(k)
        done.add(k)
        order.append(nodes[k])

    for k in range(len(nodes)):
        visit(k)
    return order


def wrap_as_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of `model` whose compressed modules are single `edgecomp.*` function calls."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    modules = compressed_modules(model)
    opsets = list(model.opset_import)
    functions: dict[tuple, str] = {}  # canonical body -> function name
    counts: dict[str, int] = {}
    graph_outputs = {o.name for o in graph.output}
    for path, op in sorted(modules.items()):
        idx = _group(model, [scope_of(path)])
        if not idx:
            continue
        inside = [graph.node[i] for i in idx]
        produced = {o for n in inside for o in n.output}
        inputs = list(dict.fromkeys(i for n in inside for i in n.input if i and i not in produced))
        outside_uses = {i for k, n in enumerate(graph.node) if k not in set(idx) for i in n.input}
        outputs = [o for n in inside for o in n.output if o in outside_uses or o in graph_outputs]
        sig = (op, _canonical(inside, inputs, outputs))
        if sig not in functions:
            counts[op] = counts.get(op, 0) + 1
            fname = op if counts[op] == 1 else f"{op}_{counts[op]}"  # same op, different body (e.g. shapes)
            rename = {v: f"x{k}" for k, v in enumerate(inputs)}
            body = []
            for n in inside:
                c = onnx.NodeProto.FromString(n.SerializeToString())
                for o in c.output:
                    rename.setdefault(o, f"t{len(rename)}")
                c.input[:] = [rename.get(i, i) for i in c.input]
                c.output[:] = [rename[o] for o in c.output]
                body.append(c)
            model.functions.append(helper.make_function(
                DOMAIN, fname, [rename[i] for i in inputs], [rename[o] for o in outputs], body, opsets,
                doc_string=f"edgecomp {op}: standard-op body; fuse it or inline it"))
            functions[sig] = fname
        call = helper.make_node(functions[sig], inputs, outputs, name=scope_of(path) + functions[sig], domain=DOMAIN)
        keep = [n for k, n in enumerate(graph.node) if k not in set(idx)]
        keep.append(call)
        del graph.node[:]
        graph.node.extend(keep)
    sorted_nodes = _topo_sort(list(graph.node), {i.name for i in graph.input})
    del graph.node[:]
    graph.node.extend(sorted_nodes)
    if modules and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model
