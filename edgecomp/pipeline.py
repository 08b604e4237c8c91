"""``edgecomp export``: load -> compress -> lower -> simplify -> quantize -> convert -> verify -> bench
-> manifest + report.

Each artifact format is a producer registered in ``PRODUCERS`` (a pass, in Olive's terms); a target
file lists the artifacts it wants and the pipeline runs the matching producers. Everything is built in
a temporary folder that is renamed to OUT only when every artifact was produced and verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib.util
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from . import __version__
from .bench.fidelity import ReferenceSet, check_tolerance, measure_fidelity
from .bench.checks import run_checks
from .bench.latency import benchmark_feeds, latency_block
from .bench.memory import peak_rss_mb
from .bench.native import default_options, measure_native
from .bench.size import artifact_size_breakdown, torch_size_breakdown
from .errors import EdgecompError
from .kernels import build_custom_ops, uses_edgecomp_ops
from .lower import moe as lower_moe
from .manifest import MANIFEST, sha256, write_json_atomic
from .outdir import check_output, staged_output_dir, written_files
from .quiet import native_stderr_silenced
from .optimize.external_data import external_files, stored_bytes
from .models import LoadedModel, load_model, model_dir, resolve_model, weights_bytes
from .registry import Registry
from .targets import ArtifactSpec, TargetSpec, load_target
from .tasks import TASKS, graph_head
from .texts import default_texts

# Python modules each runtime / converter needs, and how to get them.
RUNTIME_REQUIREMENTS = {
    "onnxruntime": (["onnxruntime"], 'pip install -e .'),
    "litert": (["ai_edge_litert", "litert_torch"], 'pip install -e ".[android]"'),
}
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model",
                   "generation_config.json")


def check_runtimes(target: TargetSpec, artifacts=None) -> None:
    """Every runtime the artifacts to build need is installed (default: all the target's)."""
    for rt in sorted({a.runtime for a in (target.artifacts if artifacts is None else artifacts)}):
        mods, fix = RUNTIME_REQUIREMENTS.get(rt, ([], ""))
        missing = [m for m in mods if importlib.util.find_spec(m) is None]
        if missing:
            raise EdgecompError(f"target {target.name!r} needs the {rt} runtime, but {', '.join(missing)} is not installed",
                                f"run `{fix}`")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` for the block (None: left as it is)."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ExportOptions:
    recipe: str = "none"
    texts: list[str] | None = None  # fidelity/calibration texts; None = built-in sentences
    bench: bool = True
    custom_ops: bool = False
    early_exit: bool = False
    max_accuracy_drop: float = 1.0
    exit_data: str | None = None  # labelled TSV for exit heads and τ calibration (default: the model file's)
    exit_heads: str | None = None  # plain | ztw (default: the model file's)
    max_length: int | None = None  # truncation limit of every artifact (default: export_max_length)
    # the target's CHECKS (arm64 under qemu, ...): all, none, or the named ones of the target's (`edgecomp fit`
    # measures candidates without, or with only arm64 under an instruction budget)
    checks: bool | tuple[str, ...] = True
    with_tokenizer: bool = False  # also string-input twins of the ONNX Runtime artifacts (edgecomp/lower/tokenizer.py)
    adapters: object | None = None  # edgecomp.adapt.export.AdapterSlots: LoRA-XS slots + trained adapters


@dataclass
class BuildContext:
    """What producers share while one export is built."""

    loaded: LoadedModel
    task: object
    target: TargetSpec
    options: ExportOptions
    out: Path  # the temporary build folder (renamed to OUT at the end)
    work: Path  # scratch inside it, removed before the rename
    log: Callable[[str], None]
    max_length: int = 512  # the export's truncation limit (export_max_length)
    keep_factorized: bool = False
    produced: dict = field(default_factory=dict)  # (format, precision) -> path
    tokenizer: dict | None = None  # the string-input twins' manifest block, once built
    onnx_io: dict = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)  # the export's calibration text (GPTQ's Hessians)

    def calibration_feeds(self) -> list[dict]:
        """The calibration text as feeds of the fp32 ONNX graph, 8 texts a batch."""
        from .texts import batches, tokenize

        names = self.onnx_io.get("inputs")
        return [tokenize(self.loaded.tokenizer, b, min(self.max_length, VERIFY_MAX_LENGTH), names)
                for b in batches(self.texts, 8)]

    def fp32_onnx(self) -> Path:
        """The simplified fp32 ONNX graph of the (compressed) model, exported once per build."""
        key = ("onnx-work", "fp32")
        if key not in self.produced:
            from .lower.onnx import export_model_onnx
            from .optimize.simplify import simplify_onnx

            raw = self.work / "raw.onnx"
            self.log("lower: PyTorch -> ONNX")
            self.onnx_io = export_model_onnx(self.loaded.model, self.task, raw, self.target.opset,
                                             head=graph_head(self.task, self.loaded.spec))
            moe = lower_moe.finish_moe_export(raw, self.loaded.model)  # MoE layers (compress/moe.py): + the op's fallback function
            self.log("simplify: onnxslim")
            simplified = self.work / "fp32.onnx"
            self.onnx_io["simplify"] = simplify_onnx(raw, simplified, keep_factorized=self.keep_factorized)
            if moe:  # the lowered graph computes what the PyTorch MoE model does (not the dense one)
                self.onnx_io["moe"] = lower_moe.verify_moe_graph(simplified, self.loaded.model, self.calibration_feeds()[:4],
                                                                 self.task.output_names[0])
            self.produced[key] = simplified
        return self.produced[key]

    # --- what the format producers (PRODUCERS) ask of the thing they lower; early-exit stages and causal
    # LMs answer the same questions (early_exit/export.py StageBuild, llm/export.py CausalLmBuild)
    def filename(self, spec: ArtifactSpec) -> str:
        return spec.filename

    def onnx_info(self) -> dict:
        return {"exporter": self.onnx_io.get("exporter"), "simplify": self.onnx_io.get("simplify"),
                **({"moe_verification": self.onnx_io["moe"]} if "moe" in self.onnx_io else {})}

    def quantize(self, src: Path, dst: Path, spec: ArtifactSpec) -> dict:
        from .optimize.quantize import quantize_onnx

        return quantize_onnx(src, dst, spec.scheme, calibration=self.calibration_feeds, model=self.loaded.model)

    def finish_onnx(self, dst: Path, spec: ArtifactSpec, info: dict) -> None:
        if spec.scheme is not None and "moe" in self.onnx_io:  # ORT's quantizer leaves the custom op's experts float
            info["moe"] = {**lower_moe.quantize_moe_experts(dst), "thresholds": lower_moe.moe_thresholds(dst)}
        if self.options.adapters is not None:  # after quantization: the adapter path stays float
            info.update(self.options.adapters.add_slots(self, dst))
        if self.options.custom_ops:
            # After quantization: the quantizers match standard ops only, so functions must wrap their output.
            import onnx

            from .compress.functions import wrap_as_functions

            onnx.save(wrap_as_functions(onnx.load(str(dst))), str(dst))
            info["custom_ops"] = "edgecomp.* ONNX functions (bodies are standard ops)"

    def lower_tflite(self, spec: ArtifactSpec, dst: Path) -> dict:
        from .lower.tflite import export_tflite
        from .lower.wrap import PositionalModel

        self.fp32_onnx()  # the input names come from the ONNX export, so both formats take the same inputs
        names = self.onnx_io["inputs"]
        head = graph_head(self.task, self.loaded.spec)
        outputs = [*self.task.output_names, *(head.outputs if head else ())]
        buckets = bucket_lengths(spec.seq_buckets or (self.target.bench.seq_len,), self.max_length)
        self.log(f"convert: litert-torch -> {dst.name} (buckets {list(buckets)}, {spec.quantization or 'fp32'})")
        if self.options.adapters is not None:  # R and the head as signature inputs (edgecomp.adapt.litert)
            module, names, outputs, extra, info = self.options.adapters.litert_module(self, names, outputs, head)
        else:
            module, extra, info = PositionalModel(self.loaded.model, names, outputs, head).eval(), None, {}
        with native_stderr_silenced():
            return {**export_tflite(module, names, outputs, dst, buckets, spec.scheme, extra_inputs=extra), **info}


# Verification compares texts up to this many tokens (or the export's limit, when shorter).
VERIFY_MAX_LENGTH = 128


def bucket_lengths(buckets, max_length: int) -> tuple[int, ...]:
    """A fixed-shape format's sequence buckets up to the export's max_length, which is always the last one."""
    return (*sorted({b for b in buckets if b < max_length}), max_length)


def export_max_length(target: TargetSpec, loaded: LoadedModel, wanted: int | None) -> int:
    """One truncation limit for every artifact of an export: ``--max-length``, else the model's own limit
    capped by the largest sequence bucket of the target's fixed-shape artifacts (so no format cuts
    earlier than another)."""
    limit = loaded.max_length
    if wanted is not None:
        if wanted < 2 or wanted > limit:
            raise EdgecompError(f"--max-length {wanted} is outside what {loaded.spec.name} takes (2..{limit} tokens)",
                                f"use --max-length {min(max(wanted, 2), limit)}")
        return wanted
    buckets = [max(a.seq_buckets) for a in target.artifacts if a.seq_buckets]
    return min([limit, *buckets])


class Lowering(Protocol):
    """What a format producer asks of the thing it lowers: an encoder build (BuildContext), an early-exit stage
    (early_exit/export.py StageBuild) or a causal LM (llm/export.py CausalLmBuild). ``produced`` maps
    (format, precision) to the files made so far, so an .ort is converted from the same build's .onnx."""

    out: Path
    work: Path
    produced: dict
    log: Callable[[str], None]

    def fp32_onnx(self) -> Path: ...
    def filename(self, spec: ArtifactSpec) -> str: ...
    def onnx_info(self) -> dict: ...
    def quantize(self, src: Path, dst: Path, spec: ArtifactSpec) -> dict: ...
    def finish_onnx(self, dst: Path, spec: ArtifactSpec, info: dict) -> None: ...
    def lower_tflite(self, spec: ArtifactSpec, dst: Path) -> dict: ...


PRODUCERS: Registry[Callable[[Lowering, ArtifactSpec], tuple[Path, dict]]] = Registry("artifact format")


@PRODUCERS.register("onnx")
def produce_onnx(ctx: Lowering, spec: ArtifactSpec) -> tuple[Path, dict]:
    """The fp32 graph of what ``ctx`` lowers, quantized to the artifact's scheme, finished by ``ctx``."""
    src = ctx.fp32_onnx()
    dst = ctx.out / ctx.filename(spec)
    info = ctx.onnx_info()
    if spec.scheme is None:
        shutil.copy(src, dst)
    else:
        ctx.log(f"quantize: {spec.quantization} -> {dst.name}")
        info["quantization"] = ctx.quantize(src, dst, spec)
    ctx.finish_onnx(dst, spec, info)
    if spec.options.get("external_data"):
        from .optimize.external_data import save_with_external_data

        info["external_data"] = save_with_external_data(dst).name
    return dst, info


@PRODUCERS.register("ort")
def produce_ort(ctx: Lowering, spec: ArtifactSpec) -> tuple[Path, dict]:
    """ORT format, converted from the same build's .onnx of the same precision (made in scratch if the target
    does not ship it)."""
    from .optimize.ort_format import to_ort_format

    stem = Path(ctx.filename(spec)).stem
    src = ctx.produced.get(("onnx", spec.precision))
    if src is None:
        src, _ = produce_onnx(ctx, ArtifactSpec(**{**vars(spec), "format": "onnx", "name": f"{spec.name}-ort-src"}))
        src = Path(shutil.move(src, ctx.work / src.name))
    ctx.log(f"convert: ORT format -> {stem}.ort")
    staged = ctx.work / f"{stem}.onnx"
    if staged != src:
        from .optimize.external_data import copy_self_contained

        copy_self_contained(src, staged)  # the converter writes one flatbuffer whatever the .onnx layout
    # a graph with edgecomp's op keeps the node (the kernel) only when converted with the library registered
    library = str(build_custom_ops()) if uses_edgecomp_ops(staged) else None
    ort_path, cfg = to_ort_format(staged, ctx.out, custom_op_library=library)
    return ort_path, {"derived_from": src.name, "required_operators_config": cfg.name}


@PRODUCERS.register("tflite")
def produce_tflite(ctx: Lowering, spec: ArtifactSpec) -> tuple[Path, dict]:
    dst = ctx.out / ctx.filename(spec)
    return dst, ctx.lower_tflite(spec, dst)


def _host() -> dict:
    import onnxruntime

    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__}
    try:
        from importlib.metadata import version

        info["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:
        pass
    return info


def measure_artifact(path: Path, record: dict, ref: ReferenceSet, loaded: LoadedModel, target: TargetSpec,
                     bench: bool, log: Callable[[str], None], checks: bool | tuple[str, ...] = True) -> dict:
    """Verify one artifact against PyTorch and (optionally) measure its latency and fresh-process RSS."""
    from .runtime import open_artifact

    runner = open_artifact(path, threads=2)
    record["inputs"], record["outputs"] = runner.input_names, runner.output_names
    log(f"verify: {path.name} vs PyTorch fp32 on {len(ref.texts)} texts")
    metrics = {"fidelity": measure_fidelity(runner, ref), "peak_rss_mb": None, "latency_ms": None}
    del runner
    b = target.bench
    # the benchmark shape, within the longest input the artifact takes (the latency block records the shape)
    seq_len = min(b.seq_len, record.get("max_length") or b.seq_len)
    feeds = benchmark_feeds(loaded.tokenizer, ref.texts, b.batch, seq_len, record["inputs"])
    if bench:
        log(f"bench: {path.name} latency (threads {list(b.threads)}) and peak RSS")
        metrics["latency_ms"] = latency_block(path, feeds, b.threads, b.warmup, b.runs)
        metrics["peak_rss_mb"] = peak_rss_mb(path, feeds, threads=1)
        log(f"bench: {path.name} native probe (peak RSS without Python)")
        metrics["native"] = measure_native(path, record, feeds, open_artifact(path, threads=1).run(feeds))
    run_checks([c for c in target.checks if checks is True or (checks and c in checks)], path, record, feeds, target.emulated_cpu or "cortex-a76", log,
               reference=lambda: ref.task.torch_forward(loaded.model, feeds))
    return metrics


def produce_and_verify(ctx: BuildContext, art: ArtifactSpec, ref: ReferenceSet, recipe) -> dict:
    """One artifact of the target: produce it, verify it against PyTorch, bench it; the manifest record."""
    path, info = PRODUCERS.get(art.format)(ctx, art)
    ctx.produced[(art.format, art.precision)] = path
    rec = {"path": path.name, "format": art.format, "runtime": art.runtime, "precision": art.precision,
           "quantization": art.quantization, "primary": art.primary}
    if art.seq_buckets:
        rec["seq_buckets"] = list(bucket_lengths(art.seq_buckets, ctx.max_length))
    rec["max_length"] = ctx.max_length
    rec["batch_invariant"] = art.scheme is None or art.scheme.batch_invariant
    rec["scheme"] = art.scheme.to_json() if art.scheme else None
    rec["session_options"] = default_options(path)  # what an app should load it with (bench/native.py)
    rec.update({k: v for k, v in info.items() if k not in rec})
    rec["metrics"] = measure_artifact(path, rec, ref, ctx.loaded, ctx.target, ctx.options.bench, ctx.log,
                                      checks=ctx.options.checks)
    require_tolerance(rec, ctx.target, recipe)
    return rec


TEXT_SUFFIX = "-text"  # model.onnx -> model-text.onnx: the string-input twin


def produce_text_twin(ctx: BuildContext, art: ArtifactSpec, token_rec: dict, ref: ReferenceSet, recipe) -> dict:
    """The string-input twin of an ONNX Runtime artifact: the model's tokenizer as onnxruntime-extensions ops
    ahead of the same graph (edgecomp.lower.tokenizer); the .ort twin is converted with the op library
    loaded, so its required-operators config lists the tokenizer op too. Verified on the reference texts:
    its token ids against the Hugging Face tokenizer's (``token_mismatches``), its outputs against PyTorch
    (fidelity) and against the token-input artifact's (``vs_token_input``)."""
    from .lower.tokenizer import library_path, prepend_tokenizer
    from .optimize.ort_format import to_ort_format

    name = f"{art.name}{TEXT_SUFFIX}"
    text_onnx = ctx.produced.get(("onnx-text", art.precision))
    info: dict = {}
    if art.format == "onnx" or text_onnx is None:
        token_onnx = ctx.produced.get(("onnx", art.precision))
        if token_onnx is None:  # an .ort-only target: the token-input .onnx in scratch
            token_onnx, _ = produce_onnx(ctx, ArtifactSpec(**{**vars(art), "format": "onnx", "name": "text-src"}))
            token_onnx = Path(shutil.move(token_onnx, ctx.work / token_onnx.name))
        dst = (ctx.out if art.format == "onnx" else ctx.work) / f"{name}.onnx"
        ctx.log(f"tokenizer: {ctx.loaded.spec.name}'s tokenizer ahead of {token_onnx.name} -> {dst.name}")
        ctx.tokenizer = prepend_tokenizer(token_onnx, dst, ctx.loaded.directory, ctx.max_length, ctx.target.opset)
        ctx.produced[("onnx-text", art.precision)] = text_onnx = dst
    info["tokenizer"] = ctx.tokenizer
    path = text_onnx
    if art.format == "ort":
        ctx.log(f"convert: ORT format (with the tokenizer op library) -> {name}.ort")
        staged = ctx.work / f"{name}.onnx"
        if staged != text_onnx:
            shutil.copy(text_onnx, staged)
        path, cfg = to_ort_format(staged, ctx.out, custom_op_library=library_path())
        info["required_operators_config"] = cfg.name
    rec = {"path": path.name, "format": art.format, "runtime": art.runtime, "precision": art.precision,
           "quantization": art.quantization, "primary": False, "input": "text", "token_input_twin": token_rec["path"],
           "max_length": ctx.max_length, "batch_invariant": token_rec["batch_invariant"], "scheme": token_rec["scheme"],
           "session_options": default_options(path), **info}
    rec["metrics"] = measure_text_artifact(path, rec, ref, ctx.out / token_rec["path"], ctx.log)
    require_tolerance(rec, ctx.target, recipe)
    return rec


def measure_text_artifact(path: Path, record: dict, ref: ReferenceSet, token_path: Path, log) -> dict:
    """Fidelity of a string-input artifact (with its token-id mismatch count) and its largest output difference
    from its token-input twin on the same texts. Latency and memory are not measured: the benchmarks and the
    native probe feed token ids (and the probe registers no custom-op library)."""
    from .bench.fidelity import align_to
    from .runtime import open_artifact

    runner = open_artifact(path, threads=2)
    record["inputs"], record["outputs"] = runner.input_names, runner.output_names
    log(f"verify: {path.name} (string input) vs PyTorch fp32 and the Hugging Face tokenizer on {len(ref.texts)} texts")
    fidelity = measure_fidelity(runner, ref)
    twin = open_artifact(token_path, threads=2)
    diff = 0.0
    for (feeds, _), texts in zip(ref.batches, ref.batch_texts):
        got = align_to(runner.run({"text": np.array(texts, dtype=object)}), feeds)
        want = twin.run({k: v for k, v in feeds.items() if k in twin.input_names})
        for k in want:
            diff = max(diff, float(np.abs(np.asarray(got[k], np.float64) - want[k]).max()))
    return {"fidelity": fidelity, "vs_token_input": {"max_abs_diff": diff}, "peak_rss_mb": None, "latency_ms": None,
            "not_measured": "latency and memory: the benchmarks feed token ids"}


def tokenizer_block(job, records: list[dict]) -> dict:
    """The manifest's ``with_tokenizer`` block: which artifacts take strings, how an app registers the op
    library they need, and the artifacts that still take token ids (LiteRT has no tokenizer among its builtin
    ops, nor SentencePiece among its select ops), with the tokenizer files the folder ships for them."""
    from .lower.tokenizer import extensions_version, register_instructions

    version = extensions_version()
    files = [n for n in TOKENIZER_FILES if (job.loaded.directory / n).exists() and n != "generation_config.json"]
    return {
        "string_input": [r["path"] for r in records if r.get("input") == "text"],
        "onnxruntime_extensions": version,
        "register_custom_ops": register_instructions(version),
        "token_input_only": [{"path": r["path"], "tokenizer_files": files,
                              "reason": "LiteRT's builtin ops have no tokenizer: the app tokenizes with these files"}
                             for r in records if r["runtime"] != "onnxruntime"],
    }


def recipe_scheme(art: ArtifactSpec, recipe) -> ArtifactSpec:
    """The artifact with the recipe's [quantization] applied to the target's scheme, checked against what its
    format can store (edgecomp.quant.FORMAT_QUANT): every refusal before any work."""
    from .quant import FORMAT_QUANT, resolve

    fq = FORMAT_QUANT[art.format]
    scheme = resolve(art.scheme, recipe.quantization, art.runtime, lambda w: fq.default_activations(w, art.options))
    if scheme is None:
        return art
    try:
        scheme = fq.check(scheme)
    except EdgecompError as e:
        raise EdgecompError(f"recipe {recipe.name!r}: {e.problem}", e.fix) from None
    return ArtifactSpec(**{**vars(art), "scheme": scheme})


def train_view(job):
    """What a quant-aware step trains against: the edgecomp.quant.TrainView every quantized artifact of the
    export agrees on (a plan may name its own format adapters in ``job.state["format_quant"]``); None when
    nothing is quantized. Artifacts that store different weights (ORT's grid vs LiteRT's folded one) cannot
    share one training: refused, the recipe names its formats."""
    from .quant import FORMAT_QUANT

    return artifacts_train_view(job.artifacts, job.recipe, job.state.get("format_quant", FORMAT_QUANT))


def artifacts_train_view(artifacts, recipe, adapters):
    views: dict = {}
    for a in artifacts:
        if a.scheme is not None:
            views.setdefault(adapters[a.format].train_view(a.scheme), []).append(a.filename)
    if len(views) > 1 and any(s.get("quant_aware") for s in recipe.steps):
        raise EdgecompError(f"recipe {recipe.name!r} trains for its quantization, and the artifacts store it differently ("
                            + "; ".join(", ".join(files) for files in views.values()) + ")",
                            'list the formats it ships, e.g. formats = ["onnx", "ort"] (with formats_reason)')
    return next(iter(views), None)


def target_train_view(target_name: str, recipe):
    """`edgecomp compress`: the TrainView of ``recipe`` on an (encoder) target's artifacts, for its quant-aware
    steps; None when no step is quant-aware."""
    from .quant import FORMAT_QUANT

    if not any(s.get("quant_aware") for s in recipe.steps):
        return None
    artifacts, _ = recipe_artifacts(load_target(target_name), recipe)
    return artifacts_train_view([recipe_scheme(a, recipe) for a in artifacts], recipe, FORMAT_QUANT)


def recipe_artifacts(target: TargetSpec, recipe) -> tuple[list[ArtifactSpec], list[dict]]:
    """The target's artifacts a recipe can ship. A recipe may list ``formats`` (with ``formats_reason``) when
    its compression only holds the quality floor in some runtimes; the others are skipped and recorded in
    the manifest, never silently. If the primary artifact is skipped, the first kept quantized one is primary."""
    wanted = recipe.options.get("formats")
    if not wanted:
        return list(target.artifacts), []
    kept = [a for a in target.artifacts if a.format in wanted]
    if not kept:
        raise EdgecompError(f"recipe {recipe.name!r} ships only {', '.join(wanted)}, and target {target.name!r} has none of them",
                            "pick a target with one of those formats, or another recipe")
    reason = recipe.options.get("formats_reason", f"recipe {recipe.name!r} ships only {', '.join(wanted)}")
    skipped = [{"path": a.filename, "format": a.format, "reason": reason} for a in target.artifacts if a not in kept]
    if not any(a.primary for a in kept):
        first = next((a for a in kept if a.precision != "fp32"), kept[0])
        kept = [ArtifactSpec(**{**vars(a), "primary": a is first}) for a in kept]
    return kept, skipped


def require_tolerance(rec: dict, target: TargetSpec, recipe) -> None:
    """An artifact below the target's tolerance (or its recipe's looser one, which says why: ``tolerance_reason``) fails the
    export (nothing is skipped silently); a recipe's own floor is recorded in the artifact's record."""
    tolerance, whose = target.tolerance, f"the {target.name} target's"
    own = recipe.options.get("tolerance") if recipe is not None else None
    if own and rec.get("precision") != "fp32":
        # a recipe only loosens the target's floor (a looser target stays looser)
        tolerance = dataclasses.replace(target.tolerance, **{k: (max if k == "nll_ratio_max" else min)(v, getattr(target.tolerance, k))
                                                              for k, v in own.items()})
        whose = f"recipe {recipe.name!r}'s"
        rec["tolerance"] = {**{k: getattr(tolerance, k) for k in own}, "reason": recipe.options["tolerance_reason"]}
    miss = check_tolerance(rec.get("metrics", {}).get("fidelity", {}), tolerance)
    if miss:
        raise EdgecompError(
            f"{rec['path']} ({rec['precision']}, recipe {recipe.name!r}) misses {whose} tolerance: {miss}",
            "use a milder recipe or precision, or relax [tolerance] in the target file",
        )


def export(model: str, target_name: str, out_dir: Path, options: ExportOptions | None = None, force: bool = False,
           log: Callable[[str], None] = lambda s: None) -> dict:
    """The build engine: what every export does, around the plan that builds its artifacts (edgecomp.plans)."""
    from .plans import Job, plan_for

    options = options or ExportOptions()
    t_start = time.time()
    spec = resolve_model(model)
    target = load_target(target_name)
    recipe = spec.recipe(options.recipe)
    task = TASKS.get(spec.task)
    plan = plan_for(task, options)
    if options.with_tokenizer and not plan.string_input:
        raise EdgecompError(f"--with-tokenizer builds string-input encoder artifacts, and this is a {plan.name} export",
                            "drop --with-tokenizer")
    artifacts, skipped = recipe_artifacts(target, recipe)
    check_runtimes(target, artifacts)  # after the recipe chose the formats: a skipped one needs no runtime
    texts = options.texts or default_texts()
    check_output(out_dir, force, spec.local_paths())  # before any work: a refusal costs nothing
    source = model_dir(spec)
    # the raw and simplified fp32 graphs in scratch plus every artifact: about four times the fp32 weights
    need = 4 * weights_bytes(source)

    with staged_output_dir(out_dir, force, protected=(source, *spec.local_paths()), need_bytes=need) as build:
        work = build / ".work"
        work.mkdir()
        log(f"load: {spec.name}")
        loaded = load_model(spec)
        n_params = loaded.n_params
        ref_breakdown = torch_size_breakdown(loaded.model)
        job = Job(loaded, task, target, recipe, options, texts, build, work, log, artifacts=artifacts)
        job.skip(skipped)
        plan.prepare(job)  # before compression: every artifact is compared with the original fp32 model
        compression = None
        if recipe.steps:
            from .compress import Calibration, compress_model

            log(f"compress: recipe {recipe.name!r} ({len(recipe.steps)} steps)")
            with torch_threads(recipe.options.get("compress_threads")):
                compression = compress_model(loaded.model, recipe.steps, Calibration(loaded.tokenizer, texts),
                                             quant=train_view(job), log=log)
        records = plan.build(job)
        if options.adapters is not None:  # trained adapters next to the base (edgecomp.adapt.export)
            job.blocks["adapters"] = options.adapters.export(job, records)

        shutil.rmtree(work, ignore_errors=True)
        for name in TOKENIZER_FILES:  # `edgecomp run` and optimum's ORTModel* load these from OUT
            if (loaded.directory / name).exists():
                shutil.copy(loaded.directory / name, build / name)
        package = getattr(task, "write_package_files", None)  # e.g. sentence-transformers' module configs
        loads_with = package(loaded, build, job.state.get("max_length", loaded.max_length), records) if package else {}
        for rec in records:  # hash last: the files are final now
            p = build / rec["path"]
            rec["sha256"] = sha256(p)
            data = external_files(p)  # the weights of an external-data .onnx: part of what a device stores
            rec["size_bytes"] = stored_bytes(p)
            if data:
                rec["external_data"] = [{"path": f.name, "size_bytes": f.stat().st_size, "sha256": sha256(f)} for f in data]
        breakdown = {"pytorch-fp32": ref_breakdown}
        for rec in records:  # every artifact (.onnx, .ort, .tflite) of the export, its primary included
            if "stage" not in rec and rec.get("input") != "text":
                split = artifact_size_breakdown(build / rec["path"], loaded.model)
                if split:
                    breakdown[rec["path"]] = split
        manifest = {
            "edgecomp_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {**spec.to_json(), "params": n_params, "pooling": spec.pooling, "normalize": spec.normalize,
                      **task.manifest_fields(loaded)},
            "target": target.to_json(),
            "recipe": recipe.to_json(),
            "plan": plan.name,
            "reference": {"format": "pytorch", "precision": "fp32", "size_bytes": ref_breakdown["total"]},
            "artifacts": _order_records(records),
            "size_breakdown": breakdown,
            "host": _host(),
            "build_seconds": round(time.time() - t_start, 1),
        }
        manifest.update(loads_with)
        if compression:
            manifest["compression"] = compression
        if job.skipped:
            manifest["skipped_artifacts"] = job.skipped
        manifest.update(job.blocks)
        from .report import write_report

        write_report(manifest, build)
        # what --force may later replace: exactly these files (and the manifest itself)
        manifest["files"] = [f for f in written_files(build) if f != MANIFEST]
        write_json_atomic(build / MANIFEST, manifest)
    return manifest


def _order_records(records: list[dict]) -> list[dict]:
    """Primary artifact first (what `edgecomp run OUT` uses); each record says whether it is primary."""
    return sorted(records, key=lambda r: not r.get("primary"))
