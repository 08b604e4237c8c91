"""``export_early_exit``: exit heads -> τ calibration -> one graph per stage, per target artifact.

What a target's artifact list means here: every ``[[artifacts]]`` entry becomes a *stage set*
(``stages/<name>.stage<i>.<format>``, one file per transformer layer) that went through the same path
as any artifact (torch.onnx -> simplify -> quantize -> .ort; litert-torch for .tflite), plus the static
depth sub-model (``<name>.depth<k>.<format>``) when a shallower model meets the accuracy budget.
Every stage is verified against its PyTorch stage on real text. τ and the static depth are chosen on
held-aside sentences, by running the exported stages themselves (the precision that ships), not PyTorch.

Every stage file carries the export id (ONNX/ORT metadata) and its sha256 is recorded in
``early_exit.json``, so the runtime refuses a stage from another export.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EdgecompError
from ..manifest import sha256 as _sha256, write_json_atomic
from ..optimize.external_data import stored_bytes
from ..paths import cache_dir
from .calibrate import choose_depth, choose_tau, depth_table, evaluate_tau
from .data import Labelled, read_exclusions, read_labelled_tsv, resolve_data_path, split
from .names import SEQ_NAMES, carry
from .heads import HeadsConfig, extract_features, load_heads, model_fingerprint, save_heads, train_heads
from .stages import DepthModel, build_stages, check_supported, run_stages_torch

DESCRIPTOR = "early_exit.json"
EXPORT_ID_KEY = "edgecomp.early_exit.export_id"
STAGE_KEY = "edgecomp.early_exit.stage"


@dataclass(frozen=True)
class EarlyExitConfig:
    max_accuracy_drop: float = 1.0  # points of accuracy on held-aside sentences, vs never exiting
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    data: str | None = None  # labelled `text<TAB>label` file; None: the model's own, $EDGECOMP_CLASSIFIER_DATA, dev copy
    head_rows: int = 20000  # rows of the training pool the heads learn from
    max_length: int = 128
    decontaminate: tuple[str, ...] = ()  # labelled files whose pieces the heads must not train on
    verify_texts: int = 64
    static_depth: bool = True  # also ship the shallowest static sub-model within the budget
    seed: int = 0

    @classmethod
    def for_model(cls, spec, **overrides) -> "EarlyExitConfig":
        """Defaults < the model file's [early_exit] table < explicit overrides (CLI flags)."""
        raw = dict((spec.extra or {}).get("early_exit", {}))
        heads = HeadsConfig.from_dict({**raw.get("head", {}), **({"kind": raw["heads"]} if "heads" in raw else {})})
        if overrides.get("heads"):
            heads = HeadsConfig(**{**asdict(heads), "kind": overrides.pop("heads")})
        overrides.pop("heads", None)
        known = set(cls.__dataclass_fields__) - {"heads"}
        kw = {k: v for k, v in raw.items() if k in known}
        kw.update({k: v for k, v in overrides.items() if v is not None and k in known})
        if kw.get("data") is None:
            kw["data"] = spec.source.get("data")
        kw.setdefault("decontaminate", tuple(spec.source.get("decontaminate", ())))
        kw["decontaminate"] = tuple(kw["decontaminate"])
        return cls(heads=heads, **kw)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _texts_key(texts: list[str]) -> str:
    return hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]


def cached_features(loaded, data: Labelled, pooling: str, max_length: int):
    key = f"{model_fingerprint(loaded.model)}-{_texts_key(data.texts)}-{pooling}-{max_length}"
    return extract_features(loaded.model, loaded.tokenizer, data.texts, data.labels, pooling, max_length,
                            cache=cache_dir() / "exit-features" / f"{key}.npz")


def head_training_data(cfg: EarlyExitConfig, spec) -> tuple[Labelled, Labelled, Path]:
    path = resolve_data_path(cfg.data)
    exclude = read_exclusions(cfg.decontaminate, path.parent)
    pool, calibration = split(read_labelled_tsv(path), exclude)
    rng = np.random.default_rng(cfg.seed + 1)
    rows = rng.permutation(len(pool))[: cfg.head_rows]
    if len(calibration) < 200:
        raise EdgecompError(f"{path} has only {len(calibration)} held-aside sentences (>= 10 words) to calibrate τ on",
                            "use a labelled file with at least a few thousand sentences")
    return pool.subset(sorted(rows.tolist())), calibration, path


def trained_heads(loaded, cfg: EarlyExitConfig, log=_log):
    """(heads, head-training rows, calibration sentences, data path); heads are cached per model
    fingerprint + data + settings, so the export, the benchmark and the tests share one training."""
    train_rows, calibration, data_path = head_training_data(cfg, loaded.spec)
    key = hashlib.sha1(json.dumps([asdict(cfg.heads), cfg.max_length, _texts_key(train_rows.texts)]).encode()).hexdigest()[:12]
    path = cache_dir() / "exit-heads" / f"{model_fingerprint(loaded.model)}-{key}.pt"
    if path.exists():
        return load_heads(path), train_rows, calibration, data_path
    log(f"early exit: training {cfg.heads.kind} exit heads on {len(train_rows)} rows of {data_path.name} "
        f"(backbone frozen); τ is calibrated on {len(calibration)} held-aside sentences")
    feats = cached_features(loaded, train_rows, cfg.heads.pooling, cfg.max_length)
    heads = train_heads(feats, cfg.heads)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_heads(heads, path)
    return heads, train_rows, calibration, data_path


# --- one stage through the artifact path -------------------------------------------------------------------
def _set_export_id(path: Path, export_id: str, stage: int) -> None:
    import onnx

    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    props.update({EXPORT_ID_KEY: export_id, STAGE_KEY: str(stage)})
    onnx.helper.set_model_props(m, props)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, path)


def _example_inputs(io, hidden_size: int, n_classes: int, length: int = 8, batch: int = 2):
    import torch

    ex = {
        "input_ids": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "prev_hidden_state": torch.zeros(batch, length, hidden_size),
        "prev_exit_state": torch.full((batch, io.index, n_classes), -0.69),
    }
    return tuple(ex[n] for n in io.inputs)


def _dynamic_axes(io) -> dict:
    axes = {}
    for n in (*io.inputs, *io.outputs):
        seq = n in SEQ_NAMES
        axes[n] = {0: "batch_size", 1: "sequence_length"} if seq else {0: "batch_size"}
    return axes


def export_onnx_chain(module, io, hidden_size, n_classes, work: Path, opset: int) -> Path:
    """torch.onnx -> onnxslim; returns the simplified fp32 graph."""
    from ..lower.onnx import export_module_onnx
    from ..optimize.simplify import simplify_onnx

    raw = work / f"{work.name}.raw.onnx"
    export_module_onnx(module, _example_inputs(io, hidden_size, n_classes), io.inputs, io.outputs,
                       _dynamic_axes(io), raw, opset=opset)
    slim = work / f"{work.name}.fp32.onnx"
    simplify_onnx(raw, slim)
    raw.unlink()
    return slim


def export_stage_tflite(module, io, out_path: Path, seq_buckets, quantization, hidden_size: int,
                        n_classes: int) -> dict:
    """litert-torch, one fixed-shape signature ``seq<N>`` per bucket (batch 1), through the shared TFLite
    lowering; the stage's example inputs include float hidden states, not only int64 ids."""
    from ..lower.tflite import export_tflite

    def example(n: int) -> dict:
        return dict(zip(io.inputs, _example_inputs(io, hidden_size, n_classes, length=n, batch=1)))

    info = export_tflite(module, list(io.inputs), list(io.outputs), out_path, sorted({int(b) for b in seq_buckets}) or [128],
                         quantization, example_inputs=example)
    return {"seq_buckets": info["seq_buckets"], "quantization": info["quantization"]}


@dataclass
class StageBuild:
    """One stage (or static-depth model) as the build engine's format producers (pipeline.PRODUCERS) lower it:
    the same onnx / ort / tflite passes as a whole encoder, over this module's own graph and file names."""

    module: object
    io: object
    out: Path
    work: Path
    stem: str  # "stage0", "depth3": model.onnx -> model.stage0.onnx
    opset: int
    export_id: str
    stage_index: int
    hidden_size: int
    n_classes: int
    log: Callable[[str], None] = lambda s: None
    produced: dict = field(default_factory=dict)

    def fp32_onnx(self) -> Path:
        if ("onnx-work", "fp32") not in self.produced:
            self.work.mkdir(parents=True, exist_ok=True)
            self.produced[("onnx-work", "fp32")] = export_onnx_chain(self.module, self.io, self.hidden_size,
                                                                     self.n_classes, self.work, self.opset)
        return self.produced[("onnx-work", "fp32")]

    def filename(self, spec) -> str:
        return f"{spec.name}.{self.stem}.{spec.format}"

    def onnx_info(self) -> dict:
        return {}

    def quantize(self, src: Path, dst: Path, spec) -> dict:
        from ..optimize.quantize import quantize_onnx

        return quantize_onnx(src, dst, spec.scheme)

    def finish_onnx(self, dst: Path, spec, info: dict) -> None:
        _set_export_id(dst, self.export_id, self.stage_index)  # the runtime refuses stages of two exports

    def lower_tflite(self, spec, dst: Path) -> dict:
        return export_stage_tflite(self.module, self.io, dst, spec.seq_buckets or (16, 32, 64, 128), spec.scheme,
                                   self.hidden_size, self.n_classes)


def _ship_onnx_family(module, io, art_specs, out_dir: Path, stem: str, work: Path, opset: int, export_id: str,
                      stage_index: int, hidden_size: int, n_classes: int) -> dict[str, Path]:
    """All files of one module (a stage or a depth model) for the target's artifacts: {artifact key: path}."""
    from ..pipeline import PRODUCERS

    build = StageBuild(module, io, out_dir, work, stem, opset, export_id, stage_index, hidden_size, n_classes)
    produced: dict[str, Path] = {}
    for a in art_specs:
        path, _ = PRODUCERS.get(a.format)(build, a)
        build.produced[(a.format, a.precision)] = path
        produced[f"{a.name}.{a.format}"] = path
    return produced


# --- verification and calibration on the exported stages ----------------------------------------------------
def _stage_feeds_np(cur: dict, io) -> dict:
    return {k: cur[k] for k in io.inputs}


def verify_stages(runners: list, stages, loaded, texts: list[str], max_length: int) -> list[dict]:
    """Feed each exported stage the PyTorch stage inputs; compare its outputs with PyTorch's."""
    import torch

    from ..tasks.text_classification import softmax
    from ..texts import batches, tokenize

    per_stage = [{"agree": [], "cos": [], "max_abs_diff": [], "hidden_max_abs_diff": []} for _ in stages]
    for chunk in batches(texts, 16):
        feeds = tokenize(loaded.tokenizer, chunk, max_length=max_length)
        ref = run_stages_torch(stages, {k: torch.from_numpy(v) for k, v in feeds.items()})
        cur = dict(feeds)
        for i, (st, runner) in enumerate(zip(stages, runners)):
            got = runner.run(_stage_feeds_np(cur, st.io))
            r = {k: v.numpy() for k, v in ref[i].items()}
            pr, pg = softmax(r["logits"].astype(np.float64)), softmax(got["logits"].astype(np.float64))
            s = per_stage[i]
            s["agree"] += (pr.argmax(-1) == pg.argmax(-1)).tolist()
            s["cos"] += ((pr * pg).sum(-1) / np.linalg.norm(pr, axis=-1) / np.linalg.norm(pg, axis=-1)).tolist()
            s["max_abs_diff"] += np.abs(r["logits"] - got["logits"]).max(-1).tolist()
            if "hidden_state" in r:
                m = feeds["attention_mask"].astype(bool)[..., None]
                s["hidden_max_abs_diff"] += np.where(m, np.abs(r["hidden_state"] - got["hidden_state"]), 0).max((1, 2)).tolist()
            cur.update(carry(r))  # the next stage gets the PyTorch inputs: each stage is judged on its own
    out = []
    for s in per_stage:
        d = {"n_texts": len(texts), "agree": float(np.mean(s["agree"])), "cos_mean": float(np.mean(s["cos"])),
             "cos_min": float(np.min(s["cos"])), "max_abs_diff": float(np.max(s["max_abs_diff"]))}
        if s["hidden_max_abs_diff"]:
            d["hidden_max_abs_diff"] = float(np.max(s["hidden_max_abs_diff"]))
        out.append({k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()})
    return out


def all_exit_probabilities(runners: list, stage_ios, tokenizer, texts: list[str], max_length: int,
                           batch_size: int = 32) -> np.ndarray:
    """[N, L, C]: every exit's probabilities from the exported stages chained (no exits taken)."""
    from ..tasks.text_classification import softmax
    from ..texts import tokenize

    order = np.argsort([len(t) for t in texts])
    probs = None
    for b in range(0, len(texts), batch_size):
        idx = order[b : b + batch_size]
        cur = tokenize(tokenizer, [texts[i] for i in idx], max_length=max_length)
        per_exit = []
        for io, runner in zip(stage_ios, runners):
            out = runner.run(_stage_feeds_np(cur, io))
            per_exit.append(softmax(out["logits"].astype(np.float64)))
            cur.update(carry(out))
        p = np.stack(per_exit, 1)
        if probs is None:
            probs = np.zeros((len(texts), *p.shape[1:]))
        probs[idx] = p
    return probs


# --- the entry point ----------------------------------------------------------------------------------------
def export_early_exit(loaded, target, build_dir: Path, max_accuracy_drop: float | None = None,
                      data: str | os.PathLike | None = None, heads: str | None = None, threads: int = 2,
                      config: EarlyExitConfig | None = None, log=_log) -> dict:
    """Train exit heads for ``loaded`` (a sequence classifier), export its stages for every artifact of
    ``target`` into ``build_dir``, verify them, calibrate τ and write ``build_dir/early_exit.json``.

    Returns {"artifacts": [{path, format, runtime, precision, quantization, role, stage, size_bytes,
    sha256, inputs, outputs, metrics: {fidelity}}], "early_exit": <manifest block>}; paths are relative to
    ``build_dir``.
    """
    import torch

    from ..runtime import open_artifact
    from ..tasks.text_classification import label_names

    check_supported(loaded.model)
    cfg = config or EarlyExitConfig.for_model(loaded.spec, max_accuracy_drop=max_accuracy_drop,
                                              data=str(data) if data else None, heads=heads)
    torch.set_num_threads(max(1, threads))
    build_dir = Path(build_dir)
    t0 = time.perf_counter()
    model = loaded.model.eval()
    L, H, C = model.config.num_hidden_layers, model.config.hidden_size, model.config.num_labels

    # 1. exit heads on cached pooled states (backbone frozen)
    exit_heads, train_rows, calibration, data_path = trained_heads(loaded, cfg, log)
    stages = build_stages(model, exit_heads)

    # 2. every stage through the artifact path of every target artifact
    export_id = uuid.uuid4().hex
    stage_dir = build_dir / "stages"
    stage_dir.mkdir(parents=True, exist_ok=True)
    work = build_dir / ".work-early-exit"
    files: dict[str, list[Path]] = {}
    for st in stages:
        produced = _ship_onnx_family(st, st.io, target.artifacts, stage_dir, f"stage{st.index}", work / f"stage{st.index}",
                                     target.opset, export_id, st.index, H, C)
        for key, p in produced.items():
            files.setdefault(key, []).append(p)
        log(f"  stage {st.index + 1}/{L} exported ({', '.join(sorted(produced))})")

    # 3. verification of each stage file against its PyTorch stage
    verify_texts = _verification_texts(calibration, cfg.verify_texts)
    fidelity: dict[str, list[dict]] = {}
    for key, paths in files.items():
        runners = [_open_stage(p, threads, H) for p in paths]
        fidelity[key] = verify_stages(runners, stages, loaded, verify_texts, cfg.max_length)
        for i, f in enumerate(fidelity[key]):
            if f["cos_mean"] < target.tolerance.cos_mean or f["cos_min"] < target.tolerance.cos_min:
                raise EdgecompError(
                    f"early-exit stage {i} ({paths[i].name}) misses the target tolerance "
                    f"(probability cosine mean {f['cos_mean']:.4f}, worst {f['cos_min']:.4f})",
                    "export with an fp32 target or a milder quantization scheme",
                )

    # 4. τ and the static depth, from the exported stages of the shipped precision
    primary = _calibration_key(target, files)
    runners = [open_artifact(p, threads) for p in files[primary]]
    probs = all_exit_probabilities(runners, [s.io for s in stages], loaded.tokenizer, calibration.texts, cfg.max_length)
    labels = np.asarray(calibration.labels)
    tau, tau_rows = choose_tau(probs, labels, cfg.max_accuracy_drop)
    chosen = evaluate_tau(probs, labels, tau)
    depths = depth_table(probs, labels)
    stage_bytes = [stored_bytes(p) for p in files[primary]]
    for d in depths:
        d["stage_bytes"] = int(sum(stage_bytes[: d["depth"]]))  # the first k stage files (incl. their heads)
    k = choose_depth(depths, cfg.max_accuracy_drop)

    artifacts = []
    for key, paths in files.items():
        a = _artifact_spec(target, key)
        for i, p in enumerate(paths):
            artifacts.append(_artifact_entry(build_dir, p, a, stages[i].io.inputs, stages[i].io.outputs,
                                             role="early-exit-stage", stage=i, fidelity=fidelity[key][i]))
            # the stage set `edgecomp run OUT` uses comes first in the manifest, like any primary artifact
            artifacts[-1]["primary"] = key == _primary_key(target, files)

    # 5. the static sub-model (first k layers + head k), when shallower than the full model
    depth_files = {}
    if cfg.static_depth and k < L:
        dm = DepthModel(stages, k).eval()
        from .stages import StageIO

        dio = StageIO(0, stages[0].io.inputs, ("logits",))
        depth_files = _ship_onnx_family(dm, dio, target.artifacts, build_dir, f"depth{k}", work / f"depth{k}",
                                        target.opset, export_id, -1, H, C)
        for key, p in depth_files.items():
            artifacts.append(_artifact_entry(build_dir, p, _artifact_spec(target, key), dio.inputs, dio.outputs,
                                             role="static-depth", stage=None, fidelity=None, depth=k))
    shutil.rmtree(work, ignore_errors=True)

    block = {
        "export_id": export_id,
        "heads": {"kind": exit_heads.kind, "pooling": cfg.heads.pooling, "hidden": cfg.heads.hidden,
                  "distill": cfg.heads.distill, "train_rows": len(train_rows)},
        "n_layers": L,
        "tau": tau,
        "exit_rule": "first exit whose max softmax probability >= tau; tau >= 1 never exits early",
        "max_accuracy_drop_points": cfg.max_accuracy_drop,
        "label_names": label_names(model.config, C),
        "max_length": cfg.max_length,
        "calibration": {"data": str(data_path), "n_texts": len(calibration), "min_words": 10,
                        "stage_set": primary},
        "accuracy": {"full": round(depths[-1]["accuracy"], 6), "early_exit": round(chosen["accuracy"], 6),
                     "drop_points": round(100 * (depths[-1]["accuracy"] - chosen["accuracy"]), 3)},
        "mean_exit_layer": round(chosen["mean_exit_layer"], 4),
        "layer_speedup": round(chosen["layer_speedup"], 4),
        "exit_distribution": [round(x, 4) for x in chosen["exit_distribution"]],
        "tau_grid": [{k2: (round(v, 5) if isinstance(v, float) else v) for k2, v in r.items()} for r in tau_rows],
        "depths": [{**d, "accuracy": round(d["accuracy"], 6)} for d in depths],
        "static_depth": k,
        "static_depth_artifacts": {key: str(p.relative_to(build_dir)) for key, p in depth_files.items()},
        "stage_sets": {
            key: {"format": _artifact_spec(target, key).format, "precision": _artifact_spec(target, key).precision,
                  "runtime": _artifact_spec(target, key).runtime,
                  "stages": [{"index": i, "path": str(p.relative_to(build_dir)), "sha256": _sha256(p),
                              "size_bytes": stored_bytes(p), "inputs": list(stages[i].io.inputs),
                              "outputs": list(stages[i].io.outputs)} for i, p in enumerate(paths)]}
            for key, paths in files.items()
        },
        "primary_stage_set": _primary_key(target, files),
        "export_seconds": round(time.perf_counter() - t0, 1),
    }

    write_json_atomic(build_dir / DESCRIPTOR, block)
    log(f"early exit: τ = {tau} -> accuracy {100 * chosen['accuracy']:.2f}% (full {100 * depths[-1]['accuracy']:.2f}%), "
        f"mean exit layer {chosen['mean_exit_layer']:.2f}/{L}; static depth {k}")
    return {"artifacts": artifacts, "early_exit": block}


def _verification_texts(calibration: Labelled, n: int) -> list[str]:
    """Half held-aside sentences, half the project's built-in sentences (other topics) when installed."""
    from ..texts import default_texts

    try:
        builtin = default_texts()[: n // 2]
    except EdgecompError:
        builtin = []
    return builtin + calibration.texts[: n - len(builtin)]


def _artifact_spec(target, key: str):
    name, fmt = key.rsplit(".", 1)
    for a in target.artifacts:
        if a.name == name and a.format == fmt:
            return a
    raise KeyError(key)


def _primary_key(target, files) -> str:
    p = target.primary
    key = f"{p.name}.{p.format}"
    return key if key in files else next(iter(files))


def _calibration_key(target, files) -> str:
    """τ is chosen on ONNX Runtime stages of the primary artifact's precision (fast to run everywhere)."""
    prec = target.primary.precision
    for key in files:
        a = _artifact_spec(target, key)
        if a.format in ("onnx", "ort") and a.precision == prec:
            return key
    return next(k for k in files if not k.endswith(".tflite"))


def _open_stage(path: Path, threads: int, hidden_size: int):
    from ..runtime import open_artifact

    if path.suffix == ".tflite":
        from .runtime import TFLiteStageRunner

        return TFLiteStageRunner(path, threads)
    return open_artifact(path, threads)


def _artifact_entry(build_dir, p: Path, a, inputs, outputs, role, stage, fidelity, depth=None) -> dict:
    e = {
        "path": str(p.relative_to(build_dir)), "format": a.format, "runtime": a.runtime, "precision": a.precision,
        "quantization": a.quantization if a.precision != "fp32" else None, "role": role, "stage_set": a.name,
        "size_bytes": stored_bytes(p), "sha256": _sha256(p), "inputs": list(inputs), "outputs": list(outputs),
        "metrics": {"fidelity": fidelity} if fidelity else {},
    }
    if stage is not None:
        e["stage"] = stage
    if depth is not None:
        e["depth"] = depth
    return e
