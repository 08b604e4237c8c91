"""`edgecomp export --adapters ROLES --adapter-rank R [--adapter DIR ...]`: the base artifacts carry LoRA-XS
slots (adapt/onnx.py) and each trained adapter ships next to them as OUT/adapters/NAME.onnx_adapter, listed
in the manifest's ``adapters`` block with its task, method, rank, bytes, quality and fidelity per artifact.

The pipeline calls three hooks: ``add_slots`` from BuildContext.finish_onnx (every ONNX artifact, after its
quantization), ``litert_module`` from BuildContext.lower_tflite (the module litert-torch converts, with R and
the head as signature inputs: adapt/litert.py) and ``export`` after the plan built the artifacts. Both
runtimes read the same .onnx_adapter files.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from .config import DEFAULT_ROLES, AdaptConfig
from .onnx import SUFFIX, adapter_tensors, linear_io, splice_slots, write_onnx_adapter
from .store import StoredAdapter, read_adapter

EXPORTABLE = ("lora-xs", "head-only")
ADAPTER_DIR = "adapters"
HOW_TO_RUN = {
    "onnxruntime": "a = onnxruntime.LoraAdapter(); a.Load(path); ro = onnxruntime.RunOptions(); "
                   "ro.add_active_adapter(a); session.run(None, feeds, ro)",
    "litert": "f = onnxruntime.AdapterFormat.read_adapter(path); copy each f.get_parameters() value (.numpy(), a view "
              "of f's memory) and feed it to the signature input slots.litert_inputs names (zeros for the base model), "
              "the head zero-padded to "
              "slots.litert_head_labels labels; keep adapter_logits[..., :labels] (edgecomp.runtime.litert does this)",
}


@dataclass
class AdapterSlots:
    roles: tuple[str, ...]
    rank: int
    stored: list[StoredAdapter] = field(default_factory=list)
    _factors: dict | None = None
    _io: dict | None = None
    _linears: list | None = None
    slots: dict = field(default_factory=dict)
    litert: dict = field(default_factory=dict)

    @classmethod
    def from_options(cls, roles: str | None, rank: int | None, adapters: list[Path] | None) -> "AdapterSlots | None":
        """None when no adapter option is given; refusals that need no model, before any work."""
        stored = [read_adapter(Path(p)) for p in adapters or []]
        if roles is None and rank is None and not stored:
            return None
        for s in stored:
            if s.method not in EXPORTABLE:
                raise EdgecompError(f"adapter {s.path} is a {s.method} adapter; the ONNX slots take {' or '.join(EXPORTABLE)}",
                                    "export LoRA-XS adapters (a full fine-tune is a model of its own: export it as one)")
            if s.task == "sts" and s.method == "head-only":
                raise EdgecompError(f"adapter {s.path} (head-only, sts) holds no tensors", "drop it: the base is that task")
        xs = [s for s in stored if s.method == "lora-xs"]
        if rank is None:
            rank = xs[0].rank if xs else 1
        if roles is None:
            role_list = tuple(xs[0].roles) if xs else DEFAULT_ROLES
        else:
            role_list = AdaptConfig(roles=roles, rank=rank).roles
        AdaptConfig(roles=role_list, rank=rank)  # unknown roles, bad rank: one line
        for s in xs:
            if s.rank != rank or tuple(s.roles) != tuple(role_list):
                raise EdgecompError(f"adapter {s.path} has rank {s.rank} on {','.join(s.roles)}, the slots rank {rank} on "
                                    f"{','.join(role_list)}", "give --adapter-rank and --adapters as the adapters were trained")
        names = [_name(s) for s in stored]
        if len(set(names)) != len(names):
            raise EdgecompError(f"two adapters are named {sorted(n for n in names if names.count(n) > 1)[0]!r}",
                                "give each adapter folder its own name")
        return cls(tuple(role_list), int(rank), stored)

    # --- hook 1: BuildContext.finish_onnx -----------------------------------------------------------------
    def add_slots(self, ctx, dst: Path) -> dict:
        if self._factors is None:
            self._prepare(ctx)
        self.slots = splice_slots(dst, self._io, self._factors, ctx.loaded.model.config.hidden_size)
        return {"adapter_slots": {**self.slots, "roles": list(self.roles)}}

    def _prepare(self, ctx) -> None:
        from .modules import check_rank, fingerprint, role_linears, svd_factors

        if ctx.task.name != "feature-extraction":
            raise EdgecompError(f"adapter slots are for feature-extraction encoders, and this is {ctx.task.name}",
                                "export the base encoder (its sentence embedding) with --adapters")
        model = ctx.loaded.model
        check_rank(model, AdaptConfig(roles=self.roles, rank=self.rank))
        self._linears = role_linears(model, self.roles)
        for s in self.stored:
            if s.record.get("base", {}).get("fingerprint") != fingerprint(model, s.roles):
                raise EdgecompError(f"adapter {s.path} was trained on another base (its weights differ from this export's)",
                                    "export the model it was trained on, without a recipe that changes weights")
        self._factors = {n: tuple(t.numpy() for t in svd_factors(lin.weight, self.rank)) for n, lin in self._linears}
        self._io = linear_io(ctx.fp32_onnx(), self._linears)

    # --- hook 2: BuildContext.lower_tflite ----------------------------------------------------------------
    def litert_module(self, ctx, names: list[str], outputs: list[str], head) -> tuple:
        """(module, input names, output names, slot example inputs, record info) for litert-torch: a copy of the
        model with the slots on the same Linears and frozen factors as the ONNX artifacts."""
        from ..lower.wrap import PositionalModel
        from .litert import HEAD_LABELS, input_mapping, slot_module
        from .modules import role_linears

        if self._factors is None:
            self._prepare(ctx)
        model = copy.deepcopy(ctx.loaded.model)
        linears = role_linears(model, self.roles)
        labels = max([HEAD_LABELS, *(len(s.record.get("labels") or ()) for s in self.stored)])
        mapping = input_mapping([n for n, _ in linears])
        inner = PositionalModel(model, names, outputs, head).eval()
        module, in_names, out_names, extra = slot_module(inner, names, outputs, linears, self._factors,
                                                         ctx.loaded.model.config.hidden_size, labels)
        self.litert = {"litert_inputs": mapping, "litert_head_labels": labels}
        return module, in_names, out_names, extra, {"adapter_slots": {
            "modules": len(linears), "rank": self.rank, "roles": list(self.roles), "litert_head_labels": labels,
            "inputs": "signature inputs named as adapters.slots.litert_inputs"}}

    # --- hook 3: after the plan built the artifacts -----------------------------------------------------------
    def export(self, job, records: list[dict]) -> dict:
        slotted = [r for r in records if r.get("runtime") in ("onnxruntime", "litert") and r.get("input") != "text"
                   and "stage" not in r]
        block = {"slots": {"modules": len(self._linears or ()), "rank": self.rank, **self.slots,
                           "roles": list(self.roles), "method": "lora-xs",
                           "artifacts": [r["path"] for r in slotted], **self.litert,
                           "frozen_factors": "shared in the base artifact (B^T, A^T per module, from the base's SVD)"},
                 "how_to_run": HOW_TO_RUN, "adapters": []}
        if not self.stored:
            return block
        folder = job.build / ADAPTER_DIR
        folder.mkdir(exist_ok=True)
        texts = job.texts[:32]
        for s in self.stored:
            name = _name(s)
            head = s.head()
            tensors = adapter_tensors(s.module_state(), *( (head.weight, head.bias) if head is not None else ()))
            path = folder / f"{name}{SUFFIX}"
            job.log(f"adapter: {s.path} -> {ADAPTER_DIR}/{path.name}")
            size = write_onnx_adapter(path, tensors)
            with_factors = {**tensors, **{f"{n}.{k}": v for n, (a, b) in self._factors.items()
                                          for k, v in (("lora_a_t", a.T.copy()), ("lora_b_t", b.T.copy()))}}
            fat = write_onnx_adapter(job.work / f"{name}-with-factors{SUFFIX}", with_factors) if s.method == "lora-xs" else size
            refs: dict[int, dict] = {}  # per truncation limit: a .tflite's largest bucket may be shorter
            fidelity = {}
            for r in slotted:
                limit = min(REFERENCE_MAX_LENGTH, r.get("max_length") or REFERENCE_MAX_LENGTH)
                if limit not in refs:
                    refs[limit] = self._torch_reference(job, s, texts, limit)
                fidelity[r["path"]] = _fidelity(job.build / r["path"], path, job, texts, refs[limit], limit)
            from ..manifest import sha256

            block["adapters"].append({
                "name": name, "path": f"{ADAPTER_DIR}/{path.name}", "task": s.task, "method": s.method,
                "rank": s.rank if s.method == "lora-xs" else None, "labels": s.record.get("labels"),
                "size_bytes": size, "sha256": sha256(path), "bytes_if_factors_per_adapter": fat,
                "trainable_params": s.record.get("train", {}).get("trainable_params"),
                "quality": s.record.get("quality"), "fidelity": fidelity, "source": str(s.path.resolve())})
        return block

    def _torch_reference(self, job, s: StoredAdapter, texts: list[str], max_length: int) -> dict:
        import torch

        from .modules import attach, load_module_state
        from .train import Encoder

        model = copy.deepcopy(job.loaded.model)
        if s.method == "lora-xs":
            attach(model, AdaptConfig(method="lora-xs", roles=self.roles, rank=self.rank))
            load_module_state(model, s.module_state())
        enc = Encoder(model, job.loaded.tokenizer, max_length)
        with torch.no_grad():
            pooled = enc.embed(texts)
            head = s.head()
            return {"pooled": pooled.numpy(), "logits": head(pooled).numpy() if head is not None else None}


def _name(s: StoredAdapter) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s.path.resolve().name).strip("-.") or "adapter"


REFERENCE_MAX_LENGTH = 128


def _fidelity(artifact: Path, adapter: Path, job, texts: list[str], ref: dict, max_length: int) -> dict:
    """The artifact (ONNX Runtime or LiteRT) with the adapter active vs the adapted PyTorch model: embedding
    cosine, logits."""
    from ..runtime import open_artifact
    from ..tasks.feature_extraction import cosine_rows
    from ..texts import tokenize

    runner = open_artifact(artifact, threads=1)
    runner.activate_adapter(adapter)
    feeds = tokenize(job.loaded.tokenizer, texts, max_length, runner.input_names)
    out = runner.run(feeds)
    m = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (out["last_hidden_state"] * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    cos = cosine_rows(pooled, ref["pooled"])
    rec = {"n_texts": len(texts), "cos_mean": round(float(cos.mean()), 6), "cos_min": round(float(cos.min()), 6)}
    if ref["logits"] is not None:
        rec["logits_max_abs_diff"] = round(float(np.abs(out["adapter_logits"] - ref["logits"]).max()), 6)
        rec["label_agreement"] = round(float((out["adapter_logits"].argmax(-1) == ref["logits"].argmax(-1)).mean()), 4)
    return rec
