"""Export plans: what one kind of export builds, over the shared passes and one engine (``pipeline.export``).

The engine does what every export does (resolve, refuse early, stage the output folder, load, compress,
decide the artifacts and their recorded skips, copy the tokenizer, hash, size breakdown, manifest, report,
swap in). A plan does what differs: the references it verifies against, taken before compression, and the
artifacts it builds. A task names its plan (``Task.plan``); ``--early-exit`` asks for the early-exit plan.
A new kind of export is a plan registered here, not a branch in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

from .registry import Registry


@dataclass
class Job:
    """One export while it is built: what the engine resolved, and what plans hand back to it."""

    loaded: object  # LoadedModel
    task: object
    target: object  # TargetSpec
    recipe: object  # Recipe
    options: object  # ExportOptions
    texts: list[str]
    build: Path  # the staging folder (becomes OUT)
    work: Path  # scratch inside it, removed before the swap
    log: Callable[[str], None]
    artifacts: list = field(default_factory=list)  # ArtifactSpec the recipe and target ask for
    skipped: list[dict] = field(default_factory=list)  # recorded in the manifest's skipped_artifacts
    blocks: dict = field(default_factory=dict)  # extra manifest blocks (early_exit, ...)
    state: dict = field(default_factory=dict)  # what a plan keeps between prepare() and build()

    def skip(self, entries: list[dict]) -> None:
        for e in entries:
            self.log(f"skip: {e['path']} ({e['reason']})")
        self.skipped.extend(entries)


class Plan(Protocol):
    name: str
    string_input: bool  # whether `export --with-tokenizer` applies (string-input twins of its artifacts)

    def prepare(self, job: Job) -> None:
        """Before compression: references of the original model, and refusals that cost nothing yet."""

    def build(self, job: Job) -> list[dict]:
        """Produce, verify and measure the artifacts; their manifest records."""


PLANS: Registry[type] = Registry("export plan")  # name -> Plan class


def plan_for(task, options) -> Plan:
    return PLANS.get("early-exit" if getattr(options, "early_exit", False) else task.plan)()


@PLANS.register("encoder")
class EncoderPlan:
    """Encoders and classifiers: one fp32 ONNX graph, then every format and precision the target lists."""

    name = "encoder"
    string_input = True  # `export --with-tokenizer` can put the tokenizer ahead of its graphs

    def prepare(self, job: Job) -> None:
        from .bench.fidelity import ReferenceSet
        from .pipeline import VERIFY_MAX_LENGTH, export_max_length, recipe_scheme

        job.artifacts = [recipe_scheme(a, job.recipe) for a in job.artifacts]  # every refusal before any work
        job.state["max_length"] = export_max_length(job.target, job.loaded, job.options.max_length)
        if job.options.with_tokenizer:  # refused before any work: no extensions, or a tokenizer it cannot build
            from .lower.tokenizer import check_tokenizer

            check_tokenizer(job.loaded.directory)
        job.log(f"reference: PyTorch fp32 outputs on {len(job.texts)} texts")
        job.state["reference"] = ReferenceSet(job.loaded, job.task, job.texts,
                                              max_length=min(job.state["max_length"], VERIFY_MAX_LENGTH))

    def build(self, job: Job) -> list[dict]:
        from .pipeline import BuildContext, produce_and_verify, produce_text_twin, tokenizer_block

        ctx = BuildContext(job.loaded, job.task, job.target, job.options, job.build, job.work, job.log,
                           max_length=job.state["max_length"],
                           keep_factorized=bool(job.recipe.options.get("keep_factorized", False)), texts=job.texts)
        ref, records = job.state["reference"], []
        for art in job.artifacts:
            records.append(produce_and_verify(ctx, art, ref, job.recipe))
            if job.options.with_tokenizer and art.runtime == "onnxruntime":
                records.append(produce_text_twin(ctx, art, records[-1], ref, job.recipe))
        if job.options.with_tokenizer:
            job.blocks["with_tokenizer"] = tokenizer_block(job, records)
        return records


@PLANS.register("causal-lm")
class CausalLMPlan:
    """Decoders: KV-cache graphs per format, verified by greedy decoding and NLL (edgecomp.llm)."""

    name = "causal-lm"
    string_input = False

    def prepare(self, job: Job) -> None:
        from .llm.export import causal_lm_artifacts, causal_lm_schemes
        from .llm.quantize import LLM_FORMAT_QUANT

        job.artifacts, cannot = causal_lm_artifacts(job.loaded, job.artifacts)  # from the config alone
        job.skip(cannot)
        job.artifacts = causal_lm_schemes(job.artifacts, job.recipe)  # every refusal before any work
        job.state["format_quant"] = LLM_FORMAT_QUANT

    def build(self, job: Job) -> list[dict]:
        from .llm.export import export_causal_lm
        from .pipeline import require_tolerance

        records = export_causal_lm(job.loaded, job.target, job.build, work_dir=job.work,
                                   recipe_options=job.recipe.options, texts=job.options.texts,
                                   bench=job.options.bench, artifacts=job.artifacts, log=job.log)
        for rec in records:
            require_tolerance(rec, job.target, job.recipe)
        return records


@PLANS.register("early-exit")
class EarlyExitPlan:
    """Classifiers split into layer stages with exit heads and a calibrated threshold (edgecomp.early_exit)."""

    name = "early-exit"
    string_input = False

    def prepare(self, job: Job) -> None:
        from .pipeline import recipe_scheme

        job.artifacts = [recipe_scheme(a, job.recipe) for a in job.artifacts]  # the stages quantize as the encoders

    def build(self, job: Job) -> list[dict]:
        from .early_exit import export_early_exit

        o = job.options
        target = replace(job.target, artifacts=tuple(job.artifacts))  # the formats the recipe kept
        result = export_early_exit(job.loaded, target, job.build, max_accuracy_drop=o.max_accuracy_drop,
                                   data=o.exit_data, heads=o.exit_heads, log=job.log)
        job.blocks["early_exit"] = result["early_exit"]
        return result["artifacts"]
