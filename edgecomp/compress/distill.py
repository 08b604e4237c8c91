"""Fidelity recovery without full fine-tuning: a short layer-wise distillation on calibration text.

The uncompressed model (the teacher, a frozen copy taken before the first step) is run once on the
calibration text; every block's inputs (hidden states + the exact mask arguments the model passes) and
outputs are captured. Then, block by block, the student's block is trained to reproduce the teacher's
block output (token-wise MSE over real tokens, scaled by the teacher's variance) from the *student's own*
input (so later blocks learn to undo earlier blocks' error). The token-embedding block is matched first.
Minutes on 2 CPU cores for MiniLM.

With ``quant_aware = true`` the step trains for the export's quantization scheme (edgecomp.quant: the
recipe's [quantization] over the target's, as the shipped formats store it; the export refuses formats that
disagree): the MatMul weights are seen through the quantizer the pipeline applies afterwards, straight
through, so training also recovers the quantization error. The quantizer follows the scheme's typed fields
(FAKE_QUANT): int8 per output channel (ORT's MatMulInteger and LiteRT's int8), 4-bit symmetric blocks on
ORT's grid (MatMulNBits) or on LiteRT's blockwise grid (which MatMulNBits can store exactly too). Dynamic
per-tensor activations add what ORT's dynamic int8 does to each Linear's input at run time (uint8, one
range per tensor), which is where int8's error comes from on MiniLM. 4-bit tables are fake-quantized too.
A format that folds each LayerNorm's scale into the following Linear before quantizing (LiteRT's converter)
has that product quantized (see layernorm_inputs).

A block with a mixture-of-experts FFN (compress/dsti.py) trains as it will run: its experts' threshold stays,
so the experts its gate skips contribute nothing and get no gradient, and the block learns to do without them.

Step keys: steps (per block), lr, batch_size, quant_aware, train_tables, sequential, final_steps, max_minutes.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn

from ..archs import layout_of, require_layout
from . import METHODS
from .base import Calibration, StepReport, check, require_calibration
from ..quant import TrainView, WeightQuant
from .layers import FactorizedEmbedding, FrequencySplitEmbedding, KroneckerEmbedding, SmoothedLinear
from .moe import MoEFeedForward


@dataclass
class DistillConfig:
    steps: int = 100
    lr: float = 1e-4  # measured: 5e-4 overfits the calibration text, 2e-5 recovers less
    batch_size: int = 16
    quant_aware: bool = False  # train against the export's quantization scheme (edgecomp.quant)
    train_tables: bool = False  # update Gather tables too (only rows seen in calibration would move)
    sequential: bool = True  # feed each block the student's own previous output
    final_steps: int = 0  # then end-to-end steps on the last hidden state (all blocks at once)
    # A wall-clock cap makes the result depend on how busy the machine is, so there is none unless asked for;
    # the step report says how many steps each part got.
    max_minutes: float | None = None

    def __post_init__(self):
        check(self.steps >= 1, f"steps = {self.steps} is not positive", "use e.g. steps = 150")
        check(self.final_steps >= 0, f"final_steps = {self.final_steps} is negative", "use e.g. final_steps = 100")
        check(self.lr > 0, f"lr = {self.lr} is not positive", "use e.g. lr = 0.0005")
        check(self.max_minutes is None or self.max_minutes > 0, "max_minutes must be positive", "use e.g. max_minutes = 5")


# --- the quantizers the pipeline applies, as straight-through fake quantization --------------------------
def fake_quant_int8(w_in_out: torch.Tensor) -> torch.Tensor:
    """Symmetric per output column, scale = absmax/127 (ORT quantize_dynamic per_channel QInt8 on MatMul B;
    grid checked against onnxruntime 1.31)."""
    scale = w_in_out.abs().amax(0, keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.clamp(torch.round(w_in_out / scale), -127, 127) * scale
    return w_in_out + (q - w_in_out).detach()


def fake_quant_int4(w_in_out: torch.Tensor, block: int) -> torch.Tensor:
    """MatMulNBits symmetric 4-bit: blocks of `block` rows along the input axis per column; the block's
    largest-magnitude value maps to -8 exactly (scale = -extreme/8), the rest rounds into [-8, 7]
    (grid checked against onnxruntime 1.31)."""
    k, n = w_in_out.shape
    pad = (-k) % block
    w = nn.functional.pad(w_in_out, (0, 0, 0, pad)).reshape(-1, block, n)
    idx = w.abs().argmax(1, keepdim=True)
    extreme = torch.gather(w, 1, idx)
    scale = torch.where(extreme.abs() < 1e-12, torch.full_like(extreme, -1e-12), extreme) / -8.0
    q = (torch.clamp(torch.round(w / scale), -8, 7) * scale).reshape(-1, n)[:k]
    return w_in_out + (q - w_in_out).detach()


def fake_quant_int4_litert(w_in_out: torch.Tensor, block: int) -> torch.Tensor:
    """ai-edge-quantizer's blockwise int4 (LiteRT): scale = absmax/7 per block along the input axis, rounded
    to a bfloat16 mantissa; values round half-to-even into [-8, 7]. MatMulNBits stores it as q + 8."""
    k, n = w_in_out.shape
    pad = (-k) % block
    w = nn.functional.pad(w_in_out, (0, 0, 0, pad)).reshape(-1, block, n)
    scale = (w.abs().amax(1, keepdim=True).clamp_min(1e-9) / 7.0).to(torch.bfloat16).to(torch.float16).to(torch.float32)
    # an all-zero block (a fresh model's padding row of the token table) underflows to scale 0 in float16,
    # and 0/0 would turn the whole distillation NaN; any scale stores zeros exactly
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = (torch.clamp(torch.round(w / scale), -8, 7) * scale).reshape(-1, n)[:k]
    return w_in_out + (q - w_in_out).detach()


def fake_quant_dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """ORT's DynamicQuantizeLinear on a Linear's input: uint8, asymmetric, one range per tensor (per sequence
    at batch 1, so per sample here), the range widened to include 0 (ONNX spec)."""
    dims = tuple(range(1, x.dim())) if x.dim() > 1 else (0,)
    lo = x.detach().amin(dims, keepdim=True).clamp(max=0)
    hi = x.detach().amax(dims, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255.0).clamp_min(1e-12)
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
    return x + (q - x).detach()


# (bits, grid) of a scheme's weights -> the straight-through quantizer of an [in, out] weight (blocks of w.block)
FAKE_QUANT = {(8, None): lambda w, block: fake_quant_int8(w), (4, "ort"): fake_quant_int4,
              (4, "litert"): fake_quant_int4_litert}
# activation quantization a runtime applies to each Linear's input (ORT dynamic int8: DynamicQuantizeLinear);
# LiteRT's and MatMulNBits' per-row int8 is not simulated
QUANTIZED_ACTIVATIONS = {"dynamic-per-tensor": fake_quant_dynamic_uint8}


def weight_quantizer(w: WeightQuant):
    """The fake quantizer of weights stored as ``w`` (a format-resolved scheme: the grid is set)."""
    fn = FAKE_QUANT.get((w.bits, w.grid)) if (w.blocked or w.block == "channel") and w.planes == 1 else None
    check(fn is not None, f"distillation has no fake quantizer for {w.name} weights",
          "drop quant_aware, or use int8 per-channel or 4-bit ort/litert blocks")
    return partial(fn, block=w.block if w.blocked else None)


def simulated_table(view: TrainView) -> WeightQuant | None:
    """The tables are fake-quantized when they ship in 4 bits (int8 tables' error is left to the blocks)."""
    return view.table if view.table is not None and view.table.bits == 4 else None


class _FakeQuant(nn.Module):
    """A parametrization: what the module computes with is the quantized weight; it trains the raw one."""

    def __init__(self, quantize, transposed: bool, fold: nn.LayerNorm | None = None):
        super().__init__()
        self.quantize, self.transposed = quantize, transposed
        self._fold = (fold,) if fold is not None else ()  # a tuple: not a submodule, its weight is not ours

    def forward(self, w):
        x = w.T if self.transposed else w  # the quantizer sees MatMul's [in, out]
        if self._fold:
            # LiteRT quantizes W·diag(gamma) of the LayerNorm feeding this Linear (its converter folds the
            # scale in first): quantize that product, then take gamma back out
            g = self._fold[0].weight[:, None]
            g = torch.where(g.abs() < 1e-6, torch.full_like(g, 1e-6), g)
            x = self.quantize(x * g) / g
        else:
            x = self.quantize(x)
        return x.T if self.transposed else x


MATMUL_WEIGHTS = ("weight", "lowrank_v", "lowrank_u", "kron_a", "kron_b", "ae_decoder_t", "ae_latent_t", "decoder")


GATHER_TABLES = {FactorizedEmbedding: "latent", KroneckerEmbedding: "kron_a", nn.Embedding: "weight"}


@torch.no_grad()
def layernorm_inputs(model: nn.Module, batch: dict) -> dict[nn.Module, nn.LayerNorm]:
    """Linear layers whose input is exactly a LayerNorm's output (BERT: query/key/value, intermediate),
    found by running one batch. LiteRT's converter folds such a LayerNorm's scale into the Linear's weight
    before quantizing (measured on MiniLM: the .tflite's block scales are those of W·diag(gamma), times
    d^-1/4 for query and key), so a view with fold_layernorm fake-quantizes that product."""
    outputs, found, hooks = {}, {}, []
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            # keep the output alive: an id() is only unique while its object lives
            hooks.append(mod.register_forward_hook(lambda m, a, o: outputs.__setitem__(id(o), (m, o))))
        elif isinstance(mod, nn.Linear):
            def pre(m, a):
                hit = outputs.get(id(a[0])) if a else None
                if hit is not None and hit[1] is a[0]:
                    found[m] = hit[0]
            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return found


_MOE_INT8 = object()  # add_fake_quant's record of a MoE layer switched to the kernel's int8 rounding


def add_fake_quant(block: nn.Module, view: TrainView, folds: dict | None = None) -> list:
    """Straight-through fake quantization of ``block``'s weights (and 4-bit tables, and the activations the
    runtime quantizes) as ``view`` says the artifact stores them; undo with remove_fake_quant."""
    from torch.nn.utils import parametrize

    done = []
    weights = weight_quantizer(view.weights)
    table_q = simulated_table(view)
    tables = weight_quantizer(table_q) if table_q is not None else None
    act = QUANTIZED_ACTIVATIONS.get(view.activations)
    for mod in block.modules():
        if isinstance(mod, MoEFeedForward):  # its experts always ship as int8 on edgecomp's kernel
            mod.fake_int8 = True
            done.append((mod, _MOE_INT8))
        table = GATHER_TABLES.get(type(mod))
        if tables is not None and table is not None:
            # 4-bit Gather tables (GatherBlockQuantized: blocks along each row) are quantized too, so the
            # blocks downstream train against the table error (the rows themselves stay frozen)
            parametrize.register_parametrization(mod, table, _FakeQuant(tables, transposed=True))
            done.append((mod, table))
        for pname in MATMUL_WEIGHTS:
            p = getattr(mod, pname, None) if pname in mod._parameters else None
            if p is None or p.dim() != 2 or isinstance(mod, (nn.Embedding, nn.LayerNorm)):
                continue
            fold = (folds or {}).get(mod) if pname == "weight" else None
            parametrize.register_parametrization(mod, pname, _FakeQuant(weights, isinstance(mod, nn.Linear), fold))
            done.append((mod, pname))
        if act is not None and isinstance(mod, nn.Linear):
            quant = act
            if isinstance(mod, SmoothedLinear):  # the runtime quantizes the smoothed input, after the Mul
                done.append((mod, mod.input_scale.register_forward_hook(lambda m, a, out: quant(out))))
            else:
                done.append((mod, mod.register_forward_pre_hook(lambda m, a: (quant(a[0]), *a[1:]))))
    return done


def remove_fake_quant(done: list) -> None:
    from torch.nn.utils import parametrize

    for mod, what in done:  # keep the raw weights: the real quantizer runs after export
        if what is _MOE_INT8:
            mod.fake_int8 = False
        elif isinstance(what, str):
            parametrize.remove_parametrizations(mod, what, leave_parametrized=False)
        else:
            what.remove()  # an activation quantizer's hook


# --- capture --------------------------------------------------------------------------------------------
def blocks_of(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of transformer blocks, where its family's adapter says (encoder.layer for BERT).
    Refused for a family without an adapter, one whose single block serves every depth (ALBERT), or GPT-2."""
    # GPT-2 (Conv1D blocks) is refused too: replaying its captured blocks doubled the sequence (a size
    # mismatch, 42 vs 21 tokens, on a tiny GPT-2), which the cache filter below does not catch
    layout = require_layout(model, "distill", per_block=True, needs_linear=True)
    return layout.blocks_path, layout.blocks


# A decoder passes its KV cache to every block; replaying a block with it would append to the cache and
# attend over the stale keys too, so the replayed calls run without one.
CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "use_cache")


@torch.no_grad()
def capture(model: nn.Module, calibration: Calibration, batch_size: int, blocks_name: str, keep_out: bool = True):
    """Per batch: embeddings-module output, and per block (args, kwargs, output); the model's output only
    if `keep_out` (a causal LM's is vocabulary-wide logits: hundreds of MB per batch)."""
    blocks = model.get_submodule(blocks_name)
    emb = embeddings_block(model, blocks_name)
    records = []
    for batch in calibration.batches(batch_size):
        rec = {"batch": batch, "blocks": []}
        hooks = []
        for blk in blocks:
            def pre(mod, args, kwargs, rec=rec):
                kwargs = {k: v for k, v in kwargs.items() if k not in CACHE_KWARGS}
                rec["blocks"].append([args, kwargs, None])
            def post(mod, args, kwargs, out, rec=rec):
                rec["blocks"][-1][2] = out[0] if isinstance(out, tuple) else out
            hooks += [blk.register_forward_pre_hook(pre, with_kwargs=True),
                      blk.register_forward_hook(post, with_kwargs=True)]
        if emb is not None:
            hooks.append(emb.register_forward_hook(lambda m, a, o, rec=rec: rec.__setitem__("emb", o)))
        try:
            out = model(**batch, **({"output_hidden_states": True} if keep_out else {}))
            if keep_out:
                rec["out"] = last_hidden(out)
        finally:
            for h in hooks:
                h.remove()
        records.append(rec)
    return records


def teacher_blocks_kept(model: nn.Module, n_teacher: int, n_student: int) -> list[int]:
    """The teacher's index of each student block: the same stack, or what drop-layers kept of it."""
    from .drop_layers import KEPT_ATTR

    kept = list(getattr(model, KEPT_ATTR, range(n_student)))
    check(n_teacher == n_student or len(kept) == n_student and max(kept) < n_teacher,
          f"the model has {n_student} blocks and its uncompressed copy {n_teacher}, with no record of which were kept",
          "remove blocks with the drop-layers step, which records them")
    return kept if n_teacher != n_student else list(range(n_student))


def last_hidden(out) -> torch.Tensor:
    """The last hidden state of a model run with output_hidden_states (a classifier's out[0] is logits)."""
    if getattr(out, "last_hidden_state", None) is not None:
        return out.last_hidden_state
    return out.hidden_states[-1] if getattr(out, "hidden_states", None) is not None else out[0]


def embeddings_block(model: nn.Module, blocks_name: str) -> nn.Module | None:
    """The module holding the token table (BERT: [bert.]embeddings), trained first when it was compressed.
    Where the table sits in the model body itself (Llama: model.embed_tokens next to model.layers), its
    parent is the whole body, so the table alone is the embeddings block."""
    layout = layout_of(model)
    name = layout.token_table_path if layout is not None else None
    if not name or "." not in name:
        return None
    parent = name.rpartition(".")[0]
    return model.get_submodule(name if blocks_name.startswith(parent + ".") else parent)


def run_embeddings(emb: nn.Module, batch: dict) -> torch.Tensor:
    if isinstance(emb, tuple(GATHER_TABLES)):  # a bare table: forward(input_ids) only
        return emb(batch["input_ids"])
    # BERT's embeddings take token types, DistilBERT's and ModernBERT's only ids
    takes = inspect.signature(emb.forward).parameters
    return emb(input_ids=batch["input_ids"],
               **({"token_type_ids": batch.get("token_type_ids")} if "token_type_ids" in takes else {}))


class _Reached(Exception):
    pass


@torch.no_grad()
def first_block_input(model: nn.Module, blocks: nn.ModuleList, batch: dict) -> torch.Tensor:
    """What the model feeds its first block (embeddings plus whatever the body adds, e.g. GPT-2's
    positions), running the model only that far."""
    got = {}

    def pre(mod, args, kwargs):
        got["hidden"] = args[0] if args else kwargs["hidden_states"]
        raise _Reached

    hook = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model(**batch)
    except _Reached:
        pass
    finally:
        hook.remove()
    return got["hidden"]


def gather_tables(module: nn.Module) -> set[int]:
    """ids of the row tables read by Gather: calibration text only reaches the rows it contains, so
    training them would move seen tokens away from unseen ones; they stay frozen unless train_tables."""
    ids = set()
    for m in module.modules():
        if isinstance(m, FactorizedEmbedding):
            ids.add(id(m.latent))
        elif isinstance(m, KroneckerEmbedding):
            ids.add(id(m.kron_a))
        elif isinstance(m, nn.Embedding):
            ids.add(id(m.weight))
    return ids


def call_block(blk: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict):
    """Re-run a block as the model called it, with `hidden` in place of its hidden-states input."""
    if args:
        return blk(hidden, *args[1:], **kwargs)
    return blk(**{**kwargs, "hidden_states": hidden})


def _hidden_in(record) -> torch.Tensor:
    args, kwargs, _ = record
    return args[0] if args else kwargs["hidden_states"]


def token_mse(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.bool()
    g, w = got[m], want[m]
    return ((g - w) ** 2).mean() / w.var().clamp_min(1e-12)


def _train(module: nn.Module, params: list, steps: int, lr: float, loss_fn, n_batches: int, deadline: float) -> tuple[float, float, int]:
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with torch.no_grad():
        first = sum(float(loss_fn(i)) for i in range(n_batches)) / n_batches
    done = 0
    for step in range(steps):
        if time.monotonic() > deadline:
            break
        loss = loss_fn(step % n_batches)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        done += 1
    with torch.no_grad():
        last = sum(float(loss_fn(i)) for i in range(n_batches)) / n_batches
    check(math.isfinite(last), f"the distillation diverged (loss {last} after {done} steps)",
          "use a smaller lr, or drop the distill step for this model")
    return first, last, done


def apply(model: nn.Module, cfg: DistillConfig, calibration: Calibration | None, reference: nn.Module | None,
          quant: TrainView | None = None, log=lambda s: None) -> StepReport:
    """``quant``: what the export's quantized artifacts store (the pipeline's train view); read when quant_aware.
    ``log``: one progress line per trained part (embeddings, each block, end to end) with its loss and time."""
    cal = require_calibration(calibration, "distill")
    check(reference is not None, "distill has no uncompressed reference model",
          "run it through compress_model, which keeps a frozen copy of the model before the first step")
    check(not cfg.quant_aware or quant is not None, "the distill step is quant_aware, and no quantization scheme reaches it",
          "export with a target that quantizes (or pass quant= to compress_model), or drop quant_aware")
    view = quant if cfg.quant_aware else None
    if view is not None:
        weight_quantizer(view.weights)  # refused before any training if the scheme has no fake quantizer
    rep = StepReport("distill", {**asdict(cfg), **({"quantization": _view_json(view)} if view else {})})
    deadline = math.inf if cfg.max_minutes is None else time.monotonic() + 60 * cfg.max_minutes
    blocks_name, _ = blocks_of(model)
    log(f"distill: teacher outputs on {len(cal.texts)} texts")
    teacher = capture(reference, cal, cfg.batch_size, blocks_name, keep_out=cfg.final_steps > 0)
    student_blocks = model.get_submodule(blocks_name)
    n_parts = len(student_blocks) + 1 + (1 if cfg.final_steps else 0)  # (embeddings,) blocks, (end to end)
    done_parts = [0]

    def trained(name: str, first: float, last: float, steps: int, t0: float) -> dict:
        done_parts[0] += 1
        log(f"distill: {name} ({done_parts[0]}/{n_parts}): loss {first:.4g} -> {last:.4g}, {steps} steps, "
            f"{time.perf_counter() - t0:.1f} s{' (quant-aware)' if view is not None else ''}")
        return {"before": float(f"{first:.4g}"), "after": float(f"{last:.4g}"), "steps": steps}
    folds = layernorm_inputs(model, teacher[0]["batch"]) if view is not None and view.fold_layernorm else {}

    def fake_quant_on(module: nn.Module | None) -> list:
        """What the pipeline's quantizer will do to `module`, straight-through (undo with remove_fake_quant)."""
        if view is None or module is None:
            return []
        return add_fake_quant(module, view, folds)

    losses = {}
    model.eval()  # train in eval mode: attention modules read self.training for their dropout
    with torch.enable_grad():
        # 1. the embeddings block (only if a table was replaced; otherwise its error is zero already)
        emb = embeddings_block(model, blocks_name)
        compressed_table = emb is not None and any(isinstance(m, (FactorizedEmbedding, FrequencySplitEmbedding, KroneckerEmbedding))
                                                   for m in emb.modules())
        quantized_tables = view is not None and simulated_table(view) is not None
        if emb is not None and (compressed_table or quantized_tables):
            params = [p for p in emb.parameters() if cfg.train_tables or id(p) not in gather_tables(emb)]
            fq = fake_quant_on(emb)

            def emb_loss(i):
                b = teacher[i]["batch"]
                got = run_embeddings(emb, b)
                return token_mse(got, teacher[i]["emb"], b["attention_mask"])
            t0 = time.perf_counter()
            first, last, n = _train(emb, params, cfg.steps, cfg.lr, emb_loss, len(teacher), deadline)
            remove_fake_quant(fq)
            losses["embeddings"] = trained("embeddings", first, last, n, t0)
        else:
            n_parts -= 1  # no table to train
        # 2. blocks, in order, each from the student's own input
        inputs = []
        fq = fake_quant_on(emb)
        with torch.no_grad():
            for rec in teacher:
                b = rec["batch"]
                inputs.append(first_block_input(model, student_blocks, b)
                              if cfg.sequential and emb is not None else _hidden_in(rec["blocks"][0]))
        remove_fake_quant(fq)
        # after drop-layers the student has fewer blocks: each kept block learns to produce the teacher's
        # input to the next kept block (absorbing the removed blocks after it); the masks come from its own
        kept = teacher_blocks_kept(model, len(teacher[0]["blocks"]), len(student_blocks))
        target = [kept[j + 1] - 1 if j + 1 < len(kept) else len(teacher[0]["blocks"]) - 1 for j in range(len(kept))]
        for j, blk in enumerate(student_blocks):
            fq = fake_quant_on(blk)

            def blk_loss(i, j=j, blk=blk):
                args, kwargs, _ = teacher[i]["blocks"][kept[j]]
                want = teacher[i]["blocks"][target[j]][2]
                out = call_block(blk, inputs[i], args, kwargs)
                out = out[0] if isinstance(out, tuple) else out
                return token_mse(out, want, teacher[i]["batch"]["attention_mask"])
            t0 = time.perf_counter()
            first, last, n = _train(blk, list(blk.parameters()), cfg.steps, cfg.lr, blk_loss, len(teacher), deadline)
            with torch.no_grad():
                nxt = []
                for i, rec in enumerate(teacher):
                    args, kwargs, _ = rec["blocks"][kept[j]]
                    out = call_block(blk, inputs[i], args, kwargs)
                    nxt.append(out[0] if isinstance(out, tuple) else out)
            remove_fake_quant(fq)
            inputs = nxt if cfg.sequential else [_hidden_in(rec["blocks"][kept[j + 1]]) if j + 1 < len(student_blocks) else None
                                                 for rec in teacher]  # noqa: E501
            losses[f"{blocks_name}.{j}"] = trained(f"{blocks_name}.{j}", first, last, n, t0)
        # 3. end to end: every block at once on the last hidden state (fixes what blocks pass on)
        if cfg.final_steps:
            params = [p for p in model.parameters() if cfg.train_tables or id(p) not in gather_tables(model)]
            fq = fake_quant_on(model)

            def final_loss(i):
                rec = teacher[i]
                got = last_hidden(model(**rec["batch"], output_hidden_states=True))
                return token_mse(got, rec["out"], rec["batch"]["attention_mask"])
            t0 = time.perf_counter()
            first, last, n = _train(model, params, cfg.final_steps, cfg.lr / 2, final_loss, len(teacher), deadline)
            remove_fake_quant(fq)
            losses["end_to_end"] = trained("end to end", first, last, n, t0)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    rep.fidelity["block_mse"] = losses
    rep.modules = list(losses)
    from .base import model_params

    rep.params_before = rep.params_after = model_params(model)
    return rep


def _view_json(view: TrainView) -> dict:
    return {"weights": view.weights.to_json(), "table": view.table.to_json() if view.table else None,
            "activations": view.activations, "fold_layernorm": view.fold_layernorm}


METHODS.register("distill")((DistillConfig, apply))
