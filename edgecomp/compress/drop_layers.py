"""Depth reduction: remove whole transformer blocks, chosen by what their removal does to the output.

A block whose output is close to its input changes little (ShortGPT's "block influence", 1 - cos(h_in,
h_out) per token); removing it saves one block's bytes and multiply-adds on every runtime, since the graph
just has fewer blocks. Block influence is a one-pass estimate, blind to how later blocks react; the default
score measures that directly: each candidate block is removed in turn and the mean cosine of the model's
last hidden state (real tokens, calibration text) against the full model is computed, and the block that
costs least goes, then the next is chosen on the already-shortened model (greedy; L forward passes per
removed block).

The step leaves the stack's indices of the kept blocks on the model (KEPT_ATTR), so a later `distill` step
trains each kept block to produce what the teacher produces before the next kept block: a kept block absorbs
the work of the removed blocks that follow it.

The blocks come from the family's adapter (archs/); the config's layer count (and a per-layer list such as
`layer_types`) follows, and attention modules that index a KV cache by layer get consecutive indices again.
Step keys: count (blocks removed), layers (explicit indices instead, in the original numbering), score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..archs import require_layout
from . import METHODS
from .base import Calibration, StepReport, check, last_hidden_state, n_params, require_calibration

KEPT_ATTR = "edgecomp_kept_blocks"  # original stack indices of the blocks still in the model
# per-layer config lists that must shrink with the stack
PER_LAYER_CONFIG = ("layer_types",)


@dataclass
class DropLayersConfig:
    count: int | None = None  # blocks removed, chosen by score (1 when neither count nor layers is given)
    layers: list = field(default_factory=list)  # explicit original indices to remove (instead of count)
    score: str = "output"  # "output" (greedy, last hidden state cosine) | "influence" (1 - cos(in, out), one pass)

    def __post_init__(self):
        check(self.count is None or not self.layers, "give count (blocks removed, chosen by score) or layers (indices), not both",
              "e.g. count = 1, or layers = [4]")
        if self.count is None and not self.layers:
            self.count = 1
        check(self.layers or self.count >= 1, f"count = {self.count} removes no block", "use the number of blocks to remove, e.g. count = 1")
        check(all(isinstance(i, int) and i >= 0 for i in self.layers), f"layers = {self.layers} are not block indices",
              "use indices of the original stack, e.g. layers = [4]")
        check(self.score in ("output", "influence"), f"score = {self.score!r} is unknown", 'use score = "output" or "influence"')


def _set_stack(model: nn.Module, path: str, blocks: list[nn.Module]) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, nn.ModuleList(blocks))
    model.config.num_hidden_layers = len(blocks)


def _outputs(model: nn.Module, cal: Calibration) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for batch in cal.batches():
        out.append((last_hidden_state(model, batch), batch["attention_mask"].bool()))
    return out


def _cosine(ref, got) -> float:
    num, den = 0.0, 0
    for (a, mask), (b, _) in zip(ref, got):
        c = torch.nn.functional.cosine_similarity(a[mask], b[mask], dim=-1)
        num, den = num + float(c.sum()), den + int(c.numel())
    return num / max(den, 1)


def _influence(model: nn.Module, blocks: nn.ModuleList, cal: Calibration) -> list[float]:
    """1 - mean cosine between each block's input and output hidden states over real tokens."""
    sums = [0.0] * len(blocks)
    count = [0]
    mask_now = {}

    def hook(i):
        def fn(_mod, args, kwargs, out):
            h_in = args[0] if args else kwargs.get("hidden_states")
            h_out = out[0] if isinstance(out, tuple) else out
            m = mask_now["m"]
            c = torch.nn.functional.cosine_similarity(h_in[m], h_out[m], dim=-1)
            sums[i] += float((1 - c).sum())
        return fn

    hooks = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        for batch in cal.batches():
            mask_now["m"] = batch["attention_mask"].bool()
            count[0] += int(mask_now["m"].sum())
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    return [s / max(count[0], 1) for s in sums]


def _renumber(blocks: list[nn.Module]) -> None:
    """Attention modules that address a KV cache by `layer_idx` (decoders) get consecutive indices again."""
    for i, blk in enumerate(blocks):
        for m in blk.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i


@torch.no_grad()
def apply(model: nn.Module, cfg: DropLayersConfig, calibration: Calibration | None) -> StepReport:
    layout = require_layout(model, "drop-layers")
    path, blocks = layout.blocks_path, list(layout.blocks)
    n = len(blocks)
    kept = list(getattr(model, KEPT_ATTR, range(n)))  # a second drop-layers step keeps the original numbering
    check(len(kept) == n, f"the model records {len(kept)} kept blocks and has {n}", "run drop-layers on the model as loaded")
    removed = sorted(set(cfg.layers))
    check(all(i in kept for i in removed), f"layers = {cfg.layers}: not all are blocks of this model ({kept})",
          f"use indices of the original stack among {kept}")
    k = len(removed) or cfg.count
    check(k < n, f"removing {k} of {n} blocks leaves none", f"remove at most {n - 1}")
    rep = StepReport("drop-layers", asdict(cfg))
    before = sum(n_params(b) for b in blocks)
    scores: dict[int, float] = {}
    model.eval()
    if not removed:
        cal = require_calibration(calibration, "drop-layers")
        if cfg.score == "influence":
            infl = _influence(model, layout.blocks, cal)
            scores = {kept[i]: round(v, 6) for i, v in enumerate(infl)}
            removed = [kept[i] for i in sorted(range(n), key=lambda i: infl[i])[:k]]
        else:
            ref = _outputs(model, cal)
            for _ in range(k):
                costs = {}
                for orig in kept:
                    if orig in removed:
                        continue
                    trial = [b for o, b in zip(kept, blocks) if o not in removed and o != orig]
                    _set_stack(model, path, trial)
                    costs[orig] = 1 - _cosine(ref, _outputs(model, cal))
                _set_stack(model, path, blocks)
                best = min(costs, key=costs.get)
                scores[best] = round(costs[best], 6)
                removed.append(best)
    new_kept = [o for o in kept if o not in removed]
    new_blocks = [b for o, b in zip(kept, blocks) if o not in removed]
    _renumber(new_blocks)
    _set_stack(model, path, new_blocks)
    for name in PER_LAYER_CONFIG:
        seq = getattr(model.config, name, None)
        if isinstance(seq, list) and len(seq) == n:
            setattr(model.config, name, [seq[kept.index(o)] for o in new_kept])
    setattr(model, KEPT_ATTR, new_kept)
    rep.params_before, rep.params_after = before, sum(n_params(b) for b in new_blocks)
    rep.modules = [f"{path}.{kept.index(o)}" for o in sorted(removed)]
    rep.details = {"removed": sorted(removed), "kept": new_kept, "score": cfg.score if scores else "given",
                   **({"removal_cost": {str(o): v for o, v in scores.items()}} if scores else {})}
    return rep


METHODS.register("drop-layers")((DropLayersConfig, apply))
