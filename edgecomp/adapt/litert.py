"""LoRA-XS in a .tflite: the adapter tensors are inputs of every signature.

LiteRT has no overridable initializers, so the module litert-torch traces carries, per adapted Linear, the
frozen factors B^T [in, r] and A^T [r, out] as constants (the same svd_factors as the ONNX slots; the
quantizer stores them like every other weight) and R [r, r] as a signature input:
``y = W x + ((x @ B^T) @ R) @ A^T``, added after the Linear's bias. The task head ``adapter_logits =
mean_pool(last_hidden_state) @ H + h`` takes H [hidden, HEAD_LABELS] and h [HEAD_LABELS] as inputs too. With
every slot input zero the delta is exactly zero and the signature computes the base model.

Names: signature inputs must be identifiers, so each ONNX slot name maps to ``litert_name(name)`` (every
character outside [A-Za-z0-9_] becomes "_": ``encoder.layer.0.attention.self.query.lora_r`` ->
``encoder_layer_0_attention_self_query_lora_r``, ``adapter_head.weight`` -> ``adapter_head_weight``); the
export refuses a collision and records the mapping in the manifest (``adapters.slots.litert_inputs``).

Labels: a signature's shapes are fixed, so the head has HEAD_LABELS columns (more if a shipped adapter
needs them, recorded as ``adapters.slots.litert_head_labels``). The runner zero-pads an adapter's head to
that width and slices ``adapter_logits`` back to the adapter's own label count (its bias length; 1 with no
adapter active, as the ONNX zero default), so callers see the ONNX artifacts' shapes.

The same ``.onnx_adapter`` file serves both runtimes: the runner reads it with
``onnxruntime.AdapterFormat.read_adapter`` and feeds its tensors. This module imports no torch at the top
(the run-time half is on the device path).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from .onnx import HEAD_B, HEAD_W, LOGITS, SUFFIX, r_name

HEAD_LABELS = 16
LITERT_HEAD_W, LITERT_HEAD_B = "adapter_head_weight", "adapter_head_bias"


def litert_name(onnx_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", onnx_name)


def is_slot_input(name: str) -> bool:
    return name.endswith("_lora_r") or name in (LITERT_HEAD_W, LITERT_HEAD_B)


def input_mapping(modules: list[str]) -> dict[str, str]:
    """ONNX slot name -> signature input name, in the signature's order (R per module, then the head)."""
    onnx_names = [*(r_name(m) for m in modules), HEAD_W, HEAD_B]
    mapping = {n: litert_name(n) for n in onnx_names}
    seen: dict[str, str] = {}
    for onnx_name, name in mapping.items():
        if name in seen:
            raise EdgecompError(f"adapter slots {seen[name]} and {onnx_name} would both be the LiteRT input {name}",
                                "export this model's adapters for ONNX Runtime only (a target without .tflite)")
        seen[name] = onnx_name
    return mapping


def slot_module(inner, input_names: list[str], output_names: list[str], linears, factors: dict, hidden: int,
                labels: int):
    """``inner`` (a PositionalModel over ``input_names``) with its ``linears`` (path, nn.Linear) adapted:
    forward(*token inputs, *R per module, head W, head b) -> (*inner outputs, adapter_logits). The Linears are
    replaced inside ``inner`` (give it a copy of the model)."""
    import torch
    from torch import nn

    class SlotLinear(nn.Module):
        def __init__(self, base, a, b):  # A [out, r], B [r, in]
            super().__init__()
            self.base = base
            self.register_buffer("lora_b_t", torch.from_numpy(np.ascontiguousarray(b.T, np.float32)))
            self.register_buffer("lora_a_t", torch.from_numpy(np.ascontiguousarray(a.T, np.float32)))
            self.r = None  # the signature input, set by SlotModel for the length of one forward

        def forward(self, x):
            return self.base(x) + ((x @ self.lora_b_t) @ self.r) @ self.lora_a_t

    class SlotModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner
            self.slots = nn.ModuleList()
            for name, lin in linears:
                a, b = factors[name]
                slot = SlotLinear(lin, a, b)
                parent, _, child = name.rpartition(".")
                model = inner.model
                setattr(model.get_submodule(parent) if parent else model, child, slot)
                self.slots.append(slot)
            self.n_tokens = len(input_names)
            self.mask_at = input_names.index("attention_mask")
            self.hidden_at = output_names.index("last_hidden_state")

        def forward(self, *inputs):
            tokens, rs = inputs[: self.n_tokens], inputs[self.n_tokens: self.n_tokens + len(self.slots)]
            head_w, head_b = inputs[self.n_tokens + len(self.slots):]
            for slot, r in zip(self.slots, rs):
                slot.r = r
            try:
                outs = self.inner(*tokens)
            finally:
                for slot in self.slots:
                    slot.r = None
            outs = outs if isinstance(outs, tuple) else (outs,)
            hidden = outs[self.hidden_at]
            m = tokens[self.mask_at].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
            return (*outs, pooled @ head_w + head_b)

    module = SlotModel().eval()
    r = next(iter(factors.values()))[0].shape[1]
    extra = {**{litert_name(r_name(n)): torch.zeros(r, r) for n, _ in linears},
             LITERT_HEAD_W: torch.zeros(hidden, labels), LITERT_HEAD_B: torch.zeros(labels)}
    return module, [*input_names, *extra], [*output_names, LOGITS], extra


class LiteRtSlots:
    """A runner's slot feeds: zeros (the base model), or an adapter file's tensors under the LiteRT names."""

    def __init__(self, details: dict):
        self.shapes = {k: tuple(int(s) for s in d["shape"]) for k, d in details.items()}
        self.dtypes = {k: np.dtype(d["dtype"]) for k, d in details.items()}
        self.labels = 1
        self.feeds = self.zeros()

    def zeros(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(s, self.dtypes[k]) for k, s in self.shapes.items()}

    def activate(self, artifact: Path, adapter_path: Path) -> None:
        adapter_path = Path(adapter_path)
        if not self.shapes:
            raise EdgecompError(f"{adapter_path.name}: {Path(artifact).name} has no adapter slots",
                                "export the base with `edgecomp export --adapters ROLES --adapter-rank R`")
        try:
            import onnxruntime as ort

            # the values are views of the file's memory, which lives as long as the AdapterFormat: copy them
            # while it is alive (read through a temporary, they are freed memory)
            fmt = ort.AdapterFormat.read_adapter(str(adapter_path))
            params = {k: np.array(v.numpy(), copy=True) for k, v in fmt.get_parameters().items()}
            del fmt
        except Exception as e:
            raise EdgecompError(f"{adapter_path.name} is not an ONNX Runtime adapter file ({str(e).splitlines()[0][:120]})",
                                f"pass an {SUFFIX} file written by `edgecomp export --adapter`") from None
        feeds = self.zeros()
        labels = 1
        fix = "use an adapter exported with this base (same roles and rank)"
        for onnx_name, value in params.items():
            name = litert_name(onnx_name)
            if name not in self.shapes:
                raise EdgecompError(f"{adapter_path.name} holds {onnx_name}, which this artifact has no slot for", fix)
            want, got = self.shapes[name], tuple(value.shape)
            if name in (LITERT_HEAD_W, LITERT_HEAD_B):
                # the head's label axis is padded up to the signature's width
                if len(got) != len(want) or got[:-1] != want[:-1] or got[-1] > want[-1]:
                    raise EdgecompError(f"{adapter_path.name}: {onnx_name} is {list(got)}, the artifact's slot "
                                        f"{list(want[:-1])} + up to {want[-1]} labels",
                                        "re-export the base with this adapter (`--adapter DIR`): the .tflite's head "
                                        "is as wide as its widest adapter" if got[:-1] == want[:-1] else fix)
                if name == LITERT_HEAD_B:
                    labels = got[-1]
                feeds[name][..., : got[-1]] = value
            elif got != want:
                raise EdgecompError(f"{adapter_path.name}: {onnx_name} is {list(got)}, the artifact's slot {list(want)}", fix)
            else:
                feeds[name][...] = value
        heads = [n for n in (HEAD_W, HEAD_B) if n in params]
        if len(heads) == 1:
            raise EdgecompError(f"{adapter_path.name} holds {heads[0]} without its pair", fix)
        if heads and params[HEAD_W].shape[-1] != params[HEAD_B].shape[-1]:
            raise EdgecompError(f"{adapter_path.name}: its head weight and bias disagree on the label count", fix)
        self.feeds, self.labels = feeds, labels

    def crop(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if LOGITS in outputs:
            outputs[LOGITS] = outputs[LOGITS][..., : self.labels]
        return outputs


def zero_slot_feeds(path: Path, signature: str | None) -> dict[str, np.ndarray]:
    """Zeros for the adapter slot inputs of a .tflite's signature (none for an artifact without slots): what the
    native probe and the aarch64 guest feed next to the tokens, as the runner does with no adapter active."""
    path = Path(path)
    shapes = _slot_shapes(str(path.resolve()), path.stat().st_mtime_ns, signature)
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}


@functools.lru_cache(maxsize=32)
def _slot_shapes(path: str, mtime_ns: int, signature: str | None) -> dict[str, tuple]:
    # a bench measures one artifact several times (x86, guest, each option set): read its signature once
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    signatures = interpreter.get_signature_list()
    key = signature or next(iter(signatures), None)
    if key is None:
        return {}
    details = interpreter.get_signature_runner(key).get_input_details()
    return {k: (tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"])) for k, d in details.items() if is_slot_input(k)}
