"""`edgecomp eval`: task metrics (STS Spearman, accuracy, perplexity, retrieval) for every artifact of an
export and for the uncompressed PyTorch fp32 model, side by side, with the drop.

Each artifact runs through the shipped path (`edgecomp run`'s batching and tokenizer, edgecomp.runtime
runners; a causal LM through its KV-cache session); the reference is the export's task's PyTorch forward
(edgecomp.tasks). An evaluation task is registered in ``EVAL_TASKS``: what export tasks it fits, its
metric, its data reader and built-in set, and how it scores embeddings / logits / NLL. Results land in the
manifest::

    artifacts[i].metrics.task[<task>] = {"metric": "spearman", "value": 81.77, "drop": 0.26}
    task_eval[<task>] = {"metric", "data", "n", "higher_is_better", "reference": {"name": "pytorch-fp32", "value"}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..errors import EdgecompError
from ..registry import Registry
from . import data as evdata
from . import metrics

REFERENCE_NAME = "pytorch-fp32"


# --- embeddings / logits / NLL: one artifact (shipped runners) or the PyTorch reference ----------------
def _unique(texts: list[str]) -> tuple[list[str], list[int]]:
    """Each distinct text once (STS sets repeat sentences) and where every original text went."""
    index: dict[str, int] = {}
    where = [index.setdefault(t, len(index)) for t in texts]
    return list(index), where


def artifact_outputs(export_dir: Path, manifest: dict, record: dict, texts: list[str], threads: int = 1,
                     batch_size: int = 16, transform: Callable | None = None) -> np.ndarray:
    """One row per text of ``transform(outputs, feeds, spec)`` (default: the task's embeddings), computed
    the way `edgecomp run` feeds the artifact."""
    from ..infer import encoder_batches
    from ..tasks import TASKS

    task = TASKS.get(manifest["model"]["task"])
    spec = SimpleNamespace(**manifest["model"])
    transform = transform or task.embeddings
    uniq, where = _unique(texts)
    rows: list = [None] * len(uniq)
    for group, outputs, feeds, _ in encoder_batches(export_dir, record, uniq, threads, batch_size):
        for i, row in zip(group, transform(outputs, feeds, spec)):
            rows[i] = row
    return np.stack(rows)[where]


def reference_outputs(loaded, task, texts: list[str], max_length: int, batch_size: int = 32,
                      transform: Callable | None = None) -> np.ndarray:
    """The same rows from the uncompressed PyTorch model (the task's reference forward)."""
    from ..texts import batches, tokenize

    transform = transform or task.embeddings
    uniq, where = _unique(texts)
    order = sorted(range(len(uniq)), key=lambda i: len(uniq[i]))  # similar lengths batch together: less padding
    rows: list = [None] * len(uniq)
    for chunk in batches(order, batch_size):
        feeds = tokenize(loaded.tokenizer, [uniq[i] for i in chunk], max_length=max_length)
        for i, row in zip(chunk, transform(task.torch_forward(loaded.model, feeds), feeds, loaded.spec)):
            rows[i] = row
    return np.stack(rows)[where]


@dataclass
class Scorer:
    """What one evaluation needs besides the data: how to get rows for texts from the model under test."""

    rows: Callable[[list[str], Callable | None], np.ndarray]  # (texts, transform) -> [N, ...]
    nll: Callable[[list[str]], list[dict]] | None = None  # causal LMs: [{"nll", "tokens"}] per line


# --- evaluation tasks ----------------------------------------------------------------------------------
class EvalTask:
    name: str
    metric: str
    higher_is_better = True
    export_tasks: tuple[str, ...] = ()  # the export tasks (edgecomp.tasks) it fits
    default_for: tuple[str, ...] = ()  # export tasks whose default evaluation it is
    builtin: str = ""  # edgecomp.evaluate.data.BUILTIN name
    layout: str = ""
    data_is_folder = False  # --data names a folder of files (retrieval) rather than one file

    def load(self, path: Path):
        raise NotImplementedError

    def load_builtin(self):
        return self.load(evdata.builtin_path(self.builtin))

    def check(self, data, manifest: dict) -> None:
        """Refuse data that cannot be scored against this export before any model loads (one line)."""

    def score(self, scorer: Scorer, data, manifest: dict) -> dict:
        """{"value": ..., plus extras}"""
        raise NotImplementedError


EVAL_TASKS: Registry[EvalTask] = Registry("evaluation task")


class Sts(EvalTask):
    name, metric = "sts", "spearman"
    export_tasks = default_for = ("feature-extraction",)
    builtin = "sts-pairs"
    layout = evdata.STS_LAYOUT

    def load(self, path):
        return evdata.read_sts_pairs(path)

    def score(self, scorer, data, manifest):
        emb = scorer.rows(data.sentence1 + data.sentence2, None)
        n = len(data)
        return {"value": metrics.sts_spearman(emb[:n], emb[n:], data.scores)}


def _label_index(manifest: dict, labels: list[str], source: str) -> list[int]:
    """Gold labels (names as the model's id2label has them, any case, or class indices) -> class indices."""
    id2label = (manifest["model"].get("id2label") or {})
    lookup = {str(i): int(i) for i in id2label}
    lookup.update({str(name).lower(): int(i) for i, name in id2label.items()})
    unknown = sorted({lb for lb in labels if lb.lower() not in lookup})
    if unknown:
        known = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items(), key=lambda kv: int(kv[0]))) or "none recorded"
        raise EdgecompError(f"{source} has label {unknown[0]!r}, which the model does not predict (its labels: {known})",
                            "label each text with one of the model's label names or class indices")
    return [lookup[lb.lower()] for lb in labels]


class Classification(EvalTask):
    name, metric = "classification", "accuracy"
    export_tasks = default_for = ("text-classification",)
    builtin = "sentiment"
    layout = evdata.LABELLED_LAYOUT

    def load(self, path):
        return evdata.read_labelled(path)

    def check(self, data, manifest):
        _label_index(manifest, data.labels, getattr(data, "source", "the labelled set"))

    def score(self, scorer, data, manifest):
        gold = _label_index(manifest, data.labels, getattr(data, "source", "the labelled set"))
        logits = scorer.rows(data.texts, lambda out, feeds, spec: out["logits"])
        return {"value": metrics.accuracy_x100(logits.argmax(-1).tolist(), gold)}


class Perplexity(EvalTask):
    name, metric = "perplexity", "perplexity"
    higher_is_better = False
    export_tasks = default_for = ("text-generation",)
    builtin = "text"
    layout = "one text per line"

    def load(self, path):
        return evdata.read_eval_text(path)

    def score(self, scorer, data, manifest):
        recs = scorer.nll(data)
        tokens = sum(r["tokens"] for r in recs)
        if not tokens:
            raise EdgecompError("no line of the text has two tokens, so nothing is scored", "give longer lines of text")
        return {"value": metrics.perplexity(sum(r["nll"] for r in recs), tokens), "tokens": tokens}


class Retrieval(EvalTask):
    name, metric = "retrieval", "recall@5"
    export_tasks = ("feature-extraction",)
    builtin = "retrieval"
    layout = evdata.RETRIEVAL_LAYOUT
    data_is_folder = True
    k = 5

    def load(self, path):
        return evdata.read_retrieval(path)

    def load_builtin(self):
        return evdata.read_builtin_retrieval()

    def score(self, scorer, data, manifest):
        qids = [q for q in data.queries if q in data.qrels]
        dids = list(data.corpus)
        emb = scorer.rows([data.queries[q] for q in qids] + [data.corpus[d] for d in dids], None)
        s = metrics.retrieval_scores(emb[:len(qids)], emb[len(qids):], qids, dids, data.qrels, self.k)
        return {"value": s[f"recall@{self.k}"], f"mrr@{self.k}": s[f"mrr@{self.k}"]}


for _task in (Sts(), Classification(), Perplexity(), Retrieval()):
    EVAL_TASKS.register(_task.name)(_task)


# --- choosing the task and the data ---------------------------------------------------------------------
def choose_task(export_task: str, name: str | None) -> EvalTask:
    if name is None:
        fits = [t for t in (EVAL_TASKS.get(n) for n in EVAL_TASKS.names()) if export_task in t.default_for]
        if not fits:
            raise EdgecompError(f"no evaluation task fits a {export_task} export",
                                f"pass --task, one of: {', '.join(EVAL_TASKS.names())}")
        return fits[0]
    task = EVAL_TASKS.get(name)
    if export_task not in task.export_tasks:
        fitting = [n for n in EVAL_TASKS.names() if export_task in EVAL_TASKS.get(n).export_tasks]
        raise EdgecompError(f"--task {name} does not fit a {export_task} export (it evaluates {', '.join(task.export_tasks)})",
                            f"use --task {' or '.join(fitting) or '?'}")
    return task


def load_data(task: EvalTask, path: str | Path | None):
    """(data, label for the manifest): the user's file/folder or the built-in set."""
    if path is None:
        return task.load_builtin(), f"builtin:{task.builtin}"
    p = Path(path)
    if not p.exists():
        raise EdgecompError(f"--data {p} does not exist", f"pass {task.layout}")
    if not task.data_is_folder and p.is_dir():
        raise EdgecompError(f"--data {p} is a folder", f"pass a file: {task.layout}")
    d = task.load(p)
    return d, str(p.resolve())


# --- one export ------------------------------------------------------------------------------------------
def artifact_scorer(export_dir: Path, manifest: dict, record: dict, threads: int) -> Scorer:
    def nll(lines):
        from ..llm.generate import open_causal_lm, perplexity
        from ..llm.run import JsonTokenizer

        return perplexity(open_causal_lm(export_dir / record["path"], threads), JsonTokenizer(export_dir), lines)

    return Scorer(rows=lambda texts, tf: artifact_outputs(export_dir, manifest, record, texts, threads, transform=tf),
                  nll=nll)


def reference_scorer(loaded, manifest: dict, export_dir: Path, max_length: int) -> Scorer:
    from ..tasks import TASKS

    task = TASKS.get(manifest["model"]["task"])

    def nll(lines):
        from ..llm.generate import torch_nll
        from ..llm.run import JsonTokenizer

        tok = JsonTokenizer(export_dir)  # the artifact's own tokenization, so both score the same tokens
        out = []
        for line in lines:
            ids = tok(line)["input_ids"]
            out.append({"nll": torch_nll(loaded.model, ids), "tokens": len(ids) - 1} if len(ids) >= 2
                       else {"nll": 0.0, "tokens": 0})
        return out

    return Scorer(rows=lambda texts, tf: reference_outputs(loaded, task, texts, max_length, transform=tf), nll=nll)


def evaluable(record: dict) -> bool:
    return record.get("role") != "early-exit-stage"  # stages take hidden states, not text


def evaluate_export(export_dir: Path, task_name: str | None = None, data_path: str | Path | None = None,
                    threads: int = 1, reference: dict | None = None, loaded=None,
                    log: Callable[[str], None] = lambda s: None, write: bool = True) -> dict:
    """Score the fp32 reference and every artifact; update OUT/manifest.json (and its report) in place.

    ``reference`` ({"value": ...}) reuses a reference score computed before on the same data (edgecomp fit
    scores many exports of one model); ``loaded`` reuses a loaded reference model. Returns the manifest."""
    from ..infer import artifact_max_length
    from ..manifest import MANIFEST, check_artifact_hash, read_manifest, write_json_atomic
    from ..models import load_model, resolve_model

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    task = choose_task(manifest["model"]["task"], task_name)
    data, data_label = load_data(task, data_path)
    task.check(data, manifest)
    records = [r for r in manifest["artifacts"] if evaluable(r)]
    if not records:
        raise EdgecompError(f"{export_dir} has no artifact that takes text", "evaluate an export of a whole model")
    for rec in records:
        check_artifact_hash(export_dir, rec)
    if reference is None:
        if loaded is None:
            spec = resolve_model(manifest["model"].get("location") or manifest["model"]["name"])
            log(f"load: {spec.name} (the uncompressed PyTorch reference)")
            loaded = load_model(spec)
        max_length = min(artifact_max_length(export_dir, r) for r in records)
        log(f"eval: {REFERENCE_NAME} on {data_label} ({len(data)} {task.name} items)")
        reference = task.score(reference_scorer(loaded, manifest, export_dir, max_length), data, manifest)
    ref_value = reference["value"]
    for rec in records:
        log(f"eval: {rec['path']} ({rec['precision']}) on {data_label}")
        got = task.score(artifact_scorer(export_dir, manifest, rec, threads), data, manifest)
        entry = {"metric": task.metric, "value": round(got["value"], 4),
                 "drop": round(metrics.drop(ref_value, got["value"], task.higher_is_better), 4)}
        entry.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in got.items() if k != "value"})
        rec.setdefault("metrics", {}).setdefault("task", {})[task.name] = entry
    manifest.setdefault("task_eval", {})[task.name] = {
        "metric": task.metric, "data": data_label, "n": len(data), "higher_is_better": task.higher_is_better,
        "reference": {"name": REFERENCE_NAME, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                 for k, v in reference.items()}},
    }
    if write:
        write_json_atomic(export_dir / MANIFEST, manifest)
        from ..report import write_report

        write_report(manifest, export_dir)
    return manifest


def reference_score(loaded, target, task_name: str | None, data_path) -> tuple[EvalTask, object, str, dict]:
    """(task, data, data label, reference score) for a model before any export exists (`edgecomp fit` scores
    many candidate exports against one reference): tokenized as the target's exports will be."""
    from ..pipeline import export_max_length
    from ..tasks import TASKS

    export_task = TASKS.get(loaded.spec.task)
    task = choose_task(loaded.spec.task, task_name)
    data, label = load_data(task, data_path)
    manifest = {"model": {"task": loaded.spec.task, **export_task.manifest_fields(loaded)}}
    task.check(data, manifest)
    scorer = reference_scorer(loaded, manifest, loaded.directory, export_max_length(target, loaded, None))
    return task, data, label, task.score(scorer, data, manifest)
